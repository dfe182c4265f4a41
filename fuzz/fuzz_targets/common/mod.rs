//! The input layout shared by the editor targets.
//!
//! `FILE [\0 DESIRED]`: everything before the last NUL byte is the file to edit (as UTF-8, lossily,
//! so every input exercises the editor), and the bytes after it drive `arbitrary` to build the
//! desired state. An input without a NUL is a plain file — the seed corpus holds real files — and is
//! edited with the target's default desired state, which the fuzzer then mutates from there.

use arbitrary::Unstructured;

pub struct Input<'a> {
    pub file: String,
    /// None: no NUL, use the default desired state.
    pub desired: Option<Unstructured<'a>>,
}

pub fn split(data: &[u8]) -> Input<'_> {
    match data.iter().rposition(|&b| b == 0) {
        Some(nul) => Input {
            file: String::from_utf8_lossy(&data[..nul]).into_owned(),
            desired: Some(Unstructured::new(&data[nul + 1..])),
        },
        None => Input {
            file: String::from_utf8_lossy(data).into_owned(),
            desired: None,
        },
    }
}

/// The whitespace-separated tokens of `file`, so desired names can collide with the file's own.
pub fn tokens(file: &str) -> Vec<&str> {
    file.split_whitespace().take(256).collect()
}
