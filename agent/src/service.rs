//! TEMPORARY stub; replaced by branch wt-svc.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError { #[error("{0}")] Failed(String), #[error("{unit}: {message}")] Unavailable { unit: String, message: String } }
pub trait ServiceManager: Send + Sync {
    fn restart(&self, unit: &str, timeout: std::time::Duration) -> Result<(), ServiceError>;
    fn describe(&self) -> String;
}
pub struct SystemdManager;
impl SystemdManager { pub fn connect() -> Result<Self, ServiceError> { Ok(SystemdManager) } }
impl ServiceManager for SystemdManager { fn restart(&self, _u: &str, _t: std::time::Duration) -> Result<(), ServiceError> { Ok(()) } fn describe(&self) -> String { "systemd".into() } }
pub struct CommandManager { pub restart: Vec<String>, pub status: Option<Vec<String>> }
impl ServiceManager for CommandManager { fn restart(&self, _u: &str, _t: std::time::Duration) -> Result<(), ServiceError> { Ok(()) } fn describe(&self) -> String { "command".into() } }
pub struct FakeServiceManager;
