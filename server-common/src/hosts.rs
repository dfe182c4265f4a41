//! TEMPORARY interface copy; replaced by the real editor from branch wt-hosts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostsEntry {
    pub ip: std::net::IpAddr,
    pub names: Vec<String>,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsConflict {
    pub line_number: usize,
    pub name: String,
    pub their_ip: String,
    pub our_ip: std::net::IpAddr,
    pub line: String,
}
impl std::fmt::Display for HostsConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} maps {}", self.line_number, self.name)
    }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEdit {
    pub content: String,
    pub conflicts: Vec<HostsConflict>,
}
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostsError {
    #[error("x")]
    X,
}
pub fn apply_block(original: &str, _cluster: &str, _entries: &[HostsEntry]) -> Result<HostsEdit, HostsError> {
    Ok(HostsEdit { content: original.into(), conflicts: vec![] })
}
