//! Limits on text kreach reads from outside and edits: one rule for the hosts file and
//! `server.properties`, so a corrupted or hostile file is refused with its line named, before
//! anything is rendered or written.
//!
//! Owns: what counts as "text we will edit". Not the file-size limit (the agent's `fsio` refuses
//! oversized files before reading them) nor the spec's (see [`crate::spec::MAX_SPEC_BYTES`]).

/// The longest line kreach accepts in a file it edits. Real hosts lines are well under 1 KiB and
/// real `server.properties` lines (inline PEM chains, JAAS configs) a few tens of KiB; a longer one
/// is a corrupted file, not configuration.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Why a file is not text kreach will edit. Lines are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error(
        "line {line} contains a NUL byte (byte {offset} of the file): this looks like a binary or \
         corrupted file, not text, so kreach will not edit it"
    )]
    NulByte { line: usize, offset: usize },
    #[error(
        "line {line} is {length} bytes long; kreach refuses lines over {max} bytes in files it edits \
         (a line this long is corruption, not configuration)",
        max = MAX_LINE_BYTES
    )]
    LineTooLong { line: usize, length: usize },
}

/// Ok when `content` has no NUL byte and no line over [`MAX_LINE_BYTES`]. `\n` ends a line (a
/// `\r` before it counts toward the line's length, which does not matter at this size).
pub fn check_text(content: &str) -> Result<(), TextError> {
    let mut start = 0;
    for (number, line) in content.split('\n').enumerate() {
        if let Some(at) = line.bytes().position(|b| b == 0) {
            return Err(TextError::NulByte {
                line: number + 1,
                offset: start + at,
            });
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(TextError::LineTooLong {
                line: number + 1,
                length: line.len(),
            });
        }
        start += line.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_passes() {
        assert_eq!(check_text(""), Ok(()));
        assert_eq!(
            check_text("127.0.0.1\tlocalhost\r\n::1 localhost\n"),
            Ok(())
        );
        let longest = "x".repeat(MAX_LINE_BYTES);
        assert_eq!(check_text(&format!("a\n{longest}\nb")), Ok(()));
    }

    #[test]
    fn a_nul_byte_names_its_line_and_offset() {
        let error = check_text("a\nbc\0d\n").unwrap_err();
        assert_eq!(error, TextError::NulByte { line: 2, offset: 4 });
        assert!(error.to_string().contains("line 2 contains a NUL byte"));
    }

    #[test]
    fn an_absurd_line_names_its_line_and_length() {
        let long = "k=".to_owned() + &"v".repeat(MAX_LINE_BYTES);
        let error = check_text(&format!("# ok\n{long}\n")).unwrap_err();
        assert_eq!(
            error,
            TextError::LineTooLong {
                line: 2,
                length: MAX_LINE_BYTES + 2
            }
        );
        assert!(error.to_string().contains("line 2 is 1048578 bytes long"));
    }
}
