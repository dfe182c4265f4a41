//! TEMPORARY stub; replaced by branch wt-fsio.
use std::path::{Path, PathBuf};
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WriteMethod { Renamed, InPlace }
#[derive(Debug, thiserror::Error)]
pub enum FsError { #[error("io {path:?}: {source}")] Io { path: PathBuf, source: std::io::Error } }
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>, FsError> { match std::fs::read(path) { Ok(b) => Ok(Some(b)), Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None), Err(source) => Err(FsError::Io { path: path.into(), source }) } }
pub fn atomic_write(path: &Path, content: &[u8]) -> Result<WriteMethod, FsError> { std::fs::write(path, content).map_err(|source| FsError::Io { path: path.into(), source })?; Ok(WriteMethod::Renamed) }
pub fn save_backup(state_dir: &Path, _target: &Path, _content: &[u8], _keep: usize) -> Result<PathBuf, FsError> { Ok(state_dir.into()) }
pub fn latest_backup(_state_dir: &Path, _target: &Path) -> Result<Option<(PathBuf, Vec<u8>)>, FsError> { Ok(None) }
pub fn clean_stale_temp_files(_path: &Path) -> Result<usize, FsError> { Ok(0) }
