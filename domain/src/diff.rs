//! Plans as values: unified diffs of file content, for `--dry-run`, `render` and `plan`.
//!
//! Owns only formatting of differences; deciding what to change is the editors' job.

/// A unified diff of `old` → `new` labelled with `path`; empty when they are equal.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a{path}"), &format!("b{path}"))
        .to_string()
}

/// A short content fingerprint for logs and audit lines (sha256, hex).
pub fn content_hash(content: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(content);
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_content_has_no_diff() {
        assert_eq!(unified_diff("/etc/hosts", "a\n", "a\n"), "");
    }

    #[test]
    fn diff_names_the_file_and_the_changed_line() {
        let diff = unified_diff("/etc/hosts", "a\nb\n", "a\nc\n");
        assert!(
            diff.starts_with("--- a/etc/hosts\n+++ b/etc/hosts\n"),
            "{diff}"
        );
        assert!(diff.contains("-b\n+c\n"), "{diff}");
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(
            content_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
