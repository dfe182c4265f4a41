//! Crash-safe reading and writing of the few host files the agent manages (`/etc/hosts`,
//! Kafka's `server.properties`), plus their backups.
//!
//! Owns: reading a whole file with a size limit, replacing a file atomically (DESIGN.md rule 6),
//! the bind-mount fallback, keeping and pruning previous versions under the agent's state
//! directory, and removing temp files a crashed writer left behind.
//!
//! Does not own: deciding *what* to write (the pure editors in `kreach-domain`), comparing
//! hashes to decide whether a restart is needed, or restarting anything. Extended attributes,
//! ACLs and SELinux labels of a replaced file are not copied (only mode and owner are); hard
//! links to a replaced file keep pointing at the old content, as with any rename-based write.
//!
//! Symlinks: when the target path itself is a symlink (e.g. `/etc/resolv.conf` →
//! `/run/...`), the link is resolved and the *real* file is replaced; the link stays a link.
//! Renaming over the link instead would silently turn it into a regular file and detach it from
//! whatever maintains the real file. A dangling link is refused rather than guessed at.

use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// Files kreach manages are a few KiB; anything above this means something else is wrong
/// (wrong path, runaway writer), and we would rather stop than load it into memory.
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Mode given to a file that did not exist before (the usual mode of `/etc/hosts`).
pub const NEW_FILE_MODE: u32 = 0o644;

/// Marker in temp file names: `.<filename>.kreach-tmp.<pid>.<counter>`.
const TEMP_MARKER: &str = ".kreach-tmp.";

/// Backups are readable only by root: `server.properties` may hold credentials.
const BACKUP_DIR_MODE: u32 = 0o700;

/// Longest backup file stem we build from a target path; longer paths are shortened and
/// disambiguated by a hash, so the name stays below the usual 255-byte limit with room for
/// the timestamp and the temp-file decoration added by `atomic_write`.
const MAX_BACKUP_STEM: usize = 160;

/// How a file was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WriteMethod {
    /// Temp file renamed over the target: crash-atomic.
    Renamed,
    /// The target is a bind mount (container, `ip netns exec`), so rename() onto it fails;
    /// its bytes were rewritten in place under an exclusive flock. Not crash-atomic.
    InPlace,
}

/// Everything that can go wrong here. Each message says what failed, on which path, and
/// what an operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot read {}: {}", path.display(), explain(source, path))]
    Read { path: PathBuf, source: io::Error },

    #[error(
        "refusing to read {}: it is {size} bytes, over the {} MiB limit for files kreach manages \
         (hosts and server.properties files are small; check the path and what wrote this file)",
        path.display(), MAX_FILE_SIZE / (1024 * 1024)
    )]
    TooLarge { path: PathBuf, size: u64 },

    #[error("refusing to write {}: {reason}", path.display())]
    InvalidTarget { path: PathBuf, reason: String },

    #[error(
        "cannot write {}: it is a symlink to {}, which does not exist \
         (create the target file or point the link somewhere real)",
        path.display(), link_target.display()
    )]
    DanglingSymlink { path: PathBuf, link_target: PathBuf },

    #[error("cannot write {} (temporary file {}): {}", path.display(), temp.display(), explain(source, path))]
    WriteTemp {
        path: PathBuf,
        temp: PathBuf,
        source: io::Error,
    },

    #[error(
        "cannot write {}: cannot give the new file the old owner {uid}:{gid}: {} \
         (run kreach-agent as root, or make the agent's user own the file)",
        path.display(), describe(source)
    )]
    PreserveOwner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },

    #[error("cannot replace {} with {}: {}", path.display(), temp.display(), explain(source, path))]
    Replace {
        path: PathBuf,
        temp: PathBuf,
        source: io::Error,
    },

    #[error(
        "wrote {} but cannot fsync its directory: {} (the change may not survive a power loss; \
         check the file system and retry)",
        path.display(), describe(source)
    )]
    SyncDirectory { path: PathBuf, source: io::Error },

    #[error(
        "cannot rewrite {} in place (it is bind-mounted, so it cannot be renamed over): {} \
         (the file may be partly written; restore it from the newest backup if it looks wrong)",
        path.display(), explain(source, path)
    )]
    InPlace { path: PathBuf, source: io::Error },

    #[error("cannot create directory {}: {}", path.display(), explain(source, path))]
    CreateDirectory { path: PathBuf, source: io::Error },

    #[error("cannot list directory {}: {}", path.display(), explain(source, path))]
    ListDirectory { path: PathBuf, source: io::Error },

    #[error("cannot remove {}: {}", path.display(), explain(source, path))]
    Remove { path: PathBuf, source: io::Error },
}

impl FsError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FsError::Read { path, .. }
            | FsError::TooLarge { path, .. }
            | FsError::InvalidTarget { path, .. }
            | FsError::DanglingSymlink { path, .. }
            | FsError::WriteTemp { path, .. }
            | FsError::PreserveOwner { path, .. }
            | FsError::Replace { path, .. }
            | FsError::SyncDirectory { path, .. }
            | FsError::InPlace { path, .. }
            | FsError::CreateDirectory { path, .. }
            | FsError::ListDirectory { path, .. }
            | FsError::Remove { path, .. } => path,
        }
    }

    /// The OS error behind this one, if any (to match on an errno).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            FsError::Read { source, .. }
            | FsError::WriteTemp { source, .. }
            | FsError::PreserveOwner { source, .. }
            | FsError::Replace { source, .. }
            | FsError::SyncDirectory { source, .. }
            | FsError::InPlace { source, .. }
            | FsError::CreateDirectory { source, .. }
            | FsError::ListDirectory { source, .. }
            | FsError::Remove { source, .. } => Some(source),
            FsError::TooLarge { .. }
            | FsError::InvalidTarget { .. }
            | FsError::DanglingSymlink { .. } => None,
        }
    }
}

/// "read-only file system" rather than "Read-only file system (os error 30)": the message is
/// read inside a sentence.
fn describe(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => {
            let text = Errno::from_raw(code).desc();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => error.to_string(),
            }
        }
        None => error.to_string(),
    }
}

/// The description plus what to do about it, for the errors an operator can act on.
fn explain(error: &io::Error, path: &Path) -> String {
    let hint = match error.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EROFS) => "the file system is mounted read-only; remount it read-write, \
             or mount this file writable into the container"
            .to_string(),
        Some(Errno::EPERM) => {
            "is the file or directory immutable or append-only? check `lsattr`, then `chattr -i`"
                .to_string()
        }
        Some(Errno::EACCES) => "run kreach-agent as root, or give it write access".to_string(),
        Some(Errno::ENOENT) => format!("does the directory {} exist?", parent_dir(path).display()),
        Some(Errno::ENOSPC) | Some(Errno::EDQUOT) => {
            "free some space on that file system".to_string()
        }
        _ => return describe(error),
    };
    format!("{} ({hint})", describe(error))
}

fn is_errno(error: &io::Error, errno: Errno) -> bool {
    error.raw_os_error() == Some(errno as i32)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Read a whole file (Ok(None) when it does not exist).
///
/// Files over [`MAX_FILE_SIZE`] are refused with [`FsError::TooLarge`]. The limit is also
/// enforced while reading, for files that grow underneath us or report no size.
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    let read_error = |source| FsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(read_error(error)),
    };
    let size = file.metadata().map_err(read_error)?.len();
    if size > MAX_FILE_SIZE {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    // usize::try_from cannot fail: size <= MAX_FILE_SIZE.
    let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut content)
        .map_err(read_error)?;
    if content.len() as u64 > MAX_FILE_SIZE {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            size: content.len() as u64,
        });
    }
    Ok(Some(content))
}

/// How the engine reaches the files it manages: [`Disk`] in the agent; an in-memory fake in the
/// engine's unit tests, which can make a chosen write fail (the partial-write undo).
pub trait Files: Send + Sync {
    /// The file's bytes, None when it does not exist ([`read_file`]).
    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, FsError>;
    /// Replace the file's content atomically, after removing temp files an earlier crash left
    /// ([`clean_stale_temp_files`], then [`atomic_write`], or [`atomic_write_private`] with
    /// `private`).
    fn replace(
        &self,
        path: &Path,
        content: &[u8],
        private: Option<Private>,
    ) -> Result<WriteMethod, FsError>;
    /// Keep `old` as the newest backup of `path` under `state_dir` ([`save_backup`]).
    fn backup(&self, state_dir: &Path, path: &Path, old: &[u8], keep: usize)
        -> Result<(), FsError>;
    /// Remove the file (undoing the creation of one that did not exist before).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Make `dir` (and its parents) with `mode` and `owner` when it is not there yet.
    fn create_dir(&self, dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), String>;
}

/// The real files, through this module's functions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Files for Disk {
    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, FsError> {
        read_file(path)
    }
    fn replace(
        &self,
        path: &Path,
        content: &[u8],
        private: Option<Private>,
    ) -> Result<WriteMethod, FsError> {
        clean_stale_temp_files(path)?;
        write_replacing(path, content, private)
    }
    fn backup(
        &self,
        state_dir: &Path,
        path: &Path,
        old: &[u8],
        keep: usize,
    ) -> Result<(), FsError> {
        save_backup(state_dir, path, old, keep).map(|_| ())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn create_dir(&self, dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), String> {
        create_dir(dir, mode, owner)
            .map_err(|error| format!("cannot create {}: {error}", dir.display()))
    }
}

/// `dir` (and its parents), with `mode` and owned by `owner` when made here; nothing when it is
/// already a directory.
pub fn create_dir(dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(mode).create(dir)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Replace `path`'s content with `content` atomically.
///
/// A temp file `.<filename>.kreach-tmp.<pid>.<n>` is created in the same directory, written,
/// given the mode and owner (uid/gid) of the existing file (a new file gets mode 0644),
/// fsynced, renamed over the target, and the directory is fsynced.
///
/// If the rename fails with EBUSY or EXDEV, the target is a bind mount (containers,
/// `ip netns exec`), which can only be changed through its inode: the temp file is removed
/// and the bytes are rewritten in place under an exclusive flock on the target (write from
/// offset 0, truncate to the new length, fsync). Trade-off: that rewrite is *not*
/// crash-atomic, and a reader that does not take the flock can briefly see the new content
/// followed by the tail of the old one. We keep the window as small as we can by writing the
/// whole content with one positioned write before truncating, and callers keep a backup
/// ([`save_backup`]) to restore from.
///
/// If `path` is a symlink, the real file it points to is replaced (see the module docs).
/// Anything that is not a regular file (directory, device, FIFO) is refused.
///
/// On any error the temp file is removed and the target is untouched, except when the
/// in-place rewrite itself fails ([`FsError::InPlace`]) or the final directory fsync fails
/// ([`FsError::SyncDirectory`], the new content is in place but may not be durable).
pub fn atomic_write(path: &Path, content: &[u8]) -> Result<WriteMethod, FsError> {
    write_replacing(path, content, None)
}

/// Who may read a file with secrets in it: mode 0600, and the owner `(uid, gid)` when given (the
/// Kafka service user, which must read its key store), else the existing file's or ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Private {
    pub owner: Option<(u32, u32)>,
}

/// [`atomic_write`] for a file holding a private key: the same atomic replacement, but the new
/// file is always 0600 (whatever mode the old one had) and owned as `private` says. The temp
/// file is 0600 from its creation, so the key is never readable by others, not even briefly.
pub fn atomic_write_private(
    path: &Path,
    content: &[u8],
    private: Private,
) -> Result<WriteMethod, FsError> {
    write_replacing(path, content, Some(private))
}

fn write_replacing(
    path: &Path,
    content: &[u8],
    private: Option<Private>,
) -> Result<WriteMethod, FsError> {
    let target = resolve_target(path)?;
    let existing = match fs::metadata(&target) {
        Ok(metadata) if metadata.is_file() => Some(metadata),
        Ok(metadata) => {
            return Err(FsError::InvalidTarget {
                path: target,
                reason: format!(
                    "it is {}, not a regular file (point kreach at the file itself)",
                    file_kind(&metadata)
                ),
            })
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(FsError::Read {
                path: target,
                source,
            })
        }
    };

    let temp = TempFile::create(&target)?;
    let temp_error = |source| FsError::WriteTemp {
        path: target.clone(),
        temp: temp.path.clone(),
        source,
    };
    if private.is_some() {
        temp.file
            .set_permissions(Permissions::from_mode(0o600))
            .map_err(temp_error)?;
    }
    temp.file.write_all_at(content, 0).map_err(temp_error)?;
    let owner = private.and_then(|private| private.owner);
    let mode = match (&existing, private) {
        (_, Some(_)) => {
            if let Some((uid, gid)) = owner.or_else(|| {
                existing
                    .as_ref()
                    .map(|metadata| (metadata.uid(), metadata.gid()))
            }) {
                std::os::unix::fs::fchown(&*temp.file, Some(uid), Some(gid)).map_err(|source| {
                    FsError::PreserveOwner {
                        path: target.clone(),
                        uid,
                        gid,
                        source,
                    }
                })?;
            }
            0o600
        }
        (Some(metadata), None) => {
            // Owner before mode: chown clears set-user-ID/set-group-ID bits.
            let current = temp.file.metadata().map_err(temp_error)?;
            if (current.uid(), current.gid()) != (metadata.uid(), metadata.gid()) {
                std::os::unix::fs::fchown(&*temp.file, Some(metadata.uid()), Some(metadata.gid()))
                    .map_err(|source| FsError::PreserveOwner {
                        path: target.clone(),
                        uid: metadata.uid(),
                        gid: metadata.gid(),
                        source,
                    })?;
            }
            metadata.mode() & 0o7777
        }
        (None, None) => NEW_FILE_MODE,
    };
    // fchmod ignores the umask, so a new file really gets 0644.
    temp.file
        .set_permissions(Permissions::from_mode(mode))
        .map_err(temp_error)?;
    temp.file.sync_all().map_err(temp_error)?;

    match fs::rename(&temp.path, &target) {
        Ok(()) => {
            temp.disarm();
            sync_directory(&target)?;
            tracing::debug!(file = %target.display(), bytes = content.len(), "replaced file");
            Ok(WriteMethod::Renamed)
        }
        Err(error) if is_errno(&error, Errno::EBUSY) || is_errno(&error, Errno::EXDEV) => {
            drop(temp);
            tracing::info!(
                file = %target.display(),
                error = %describe(&error),
                "rewriting in place: the file is bind-mounted, so it cannot be renamed over"
            );
            rewrite_in_place(&target, content)?;
            Ok(WriteMethod::InPlace)
        }
        Err(source) => Err(FsError::Replace {
            path: target,
            temp: temp.path.clone(),
            source,
        }),
    }
}

/// Follows a symlink in the last component (documented in the module header); other paths are
/// returned as given.
fn resolve_target(path: &Path) -> Result<PathBuf, FsError> {
    if path.file_name().is_none() {
        return Err(FsError::InvalidTarget {
            path: path.to_path_buf(),
            reason: "the path does not name a file".to_string(),
        });
    }
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => match fs::canonicalize(path) {
            Ok(real) => {
                tracing::debug!(file = %path.display(), real = %real.display(), "following symlink");
                Ok(real)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(FsError::DanglingSymlink {
                    path: path.to_path_buf(),
                    link_target: fs::read_link(path).unwrap_or_default(),
                })
            }
            Err(source) => Err(FsError::Read {
                path: path.to_path_buf(),
                source,
            }),
        },
        Ok(_) => Ok(path.to_path_buf()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(source) => Err(FsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn file_kind(metadata: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let file_type = metadata.file_type();
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

fn temp_prefix(file_name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(file_name);
    prefix.push(TEMP_MARKER);
    prefix
}

/// A temp file next to the target, removed on drop unless it was renamed into place.
///
/// It is held under an exclusive flock for its whole life, so that
/// [`clean_stale_temp_files`] can tell a live writer's file (locked) from a crashed
/// writer's (unlocked), without trusting PIDs, which repeat across restarts and namespaces.
struct TempFile {
    path: PathBuf,
    file: Flock<File>,
    armed: bool,
}

impl TempFile {
    fn create(target: &Path) -> Result<TempFile, FsError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // resolve_target made sure there is a file name.
        let prefix = temp_prefix(target.file_name().unwrap_or_default());
        let directory = parent_dir(target);
        let mut contended = 0;
        loop {
            let mut name = prefix.clone();
            name.push(format!(
                "{}.{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let path = directory.join(name);
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                // Private until it has the final mode and owner.
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path);
            let file = match opened {
                Ok(file) => file,
                // A leftover from an earlier process with our PID: take the next name.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(FsError::WriteTemp {
                        path: target.to_path_buf(),
                        temp: path,
                        source,
                    })
                }
            };
            return match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                // Another writer's sweep may have locked, removed and closed it between our create
                // and our lock: we then hold the lock of a file no longer there. Take a new name.
                Ok(file)
                    if contended < 8 && file.metadata().is_ok_and(|meta| meta.nlink() == 0) =>
                {
                    contended += 1;
                    continue;
                }
                Ok(file) => Ok(TempFile {
                    path,
                    file,
                    armed: true,
                }),
                // Another writer's stale-file sweep (e.g. an agent in another network namespace
                // that shares this directory) took the lock between our create and our lock,
                // and will remove the file: take a new name.
                Err((_, Errno::EWOULDBLOCK)) if contended < 8 => {
                    contended += 1;
                    continue;
                }
                Err((_, errno)) => {
                    let _ = fs::remove_file(&path);
                    Err(FsError::WriteTemp {
                        path: target.to_path_buf(),
                        temp: path,
                        source: io::Error::from(errno),
                    })
                }
            };
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(error) = fs::remove_file(&self.path) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(
                        file = %self.path.display(),
                        error = %describe(&error),
                        "cannot remove temporary file; clean_stale_temp_files will retry"
                    );
                }
            }
        }
    }
}

fn sync_directory(target: &Path) -> Result<(), FsError> {
    let directory = parent_dir(target);
    match File::open(directory).and_then(|dir| dir.sync_all()) {
        Ok(()) => Ok(()),
        // Some file systems cannot fsync a directory at all; nothing more we can do there.
        Err(error) if is_errno(&error, Errno::EINVAL) => Ok(()),
        Err(source) => Err(FsError::SyncDirectory {
            path: target.to_path_buf(),
            source,
        }),
    }
}

fn rewrite_in_place(target: &Path, content: &[u8]) -> Result<(), FsError> {
    let in_place_error = |source| FsError::InPlace {
        path: target.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .map_err(in_place_error)?;
    // Serialises kreach writers (and anything else that flocks); blocks only while another
    // writer finishes its own short rewrite.
    let file = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| in_place_error(io::Error::from(errno)))?;
    // One positioned write of the whole content, then cut off the old tail: a reader sees
    // either old bytes or new bytes, never a zero-length file.
    file.write_all_at(content, 0).map_err(in_place_error)?;
    file.set_len(content.len() as u64).map_err(in_place_error)?;
    file.sync_all().map_err(in_place_error)?;
    Ok(())
}

/// Keep the previous version: copy `content` to `<state_dir>/backups/<sanitized path>.<unix-millis>`
/// atomically (via [`atomic_write`]) and prune so at most `keep` backups per target remain
/// (oldest removed). Returns the backup path.
///
/// `keep` is at least 1 (the backup just written always stays). The backups directory is
/// created with mode 0700, since `server.properties` may contain credentials. Timestamps
/// strictly increase per target even when two saves fall in the same millisecond or the
/// clock steps back, so the newest backup is always the one saved last. A failure to prune
/// is logged, not returned: the backup itself exists.
pub fn save_backup(
    state_dir: &Path,
    target: &Path,
    content: &[u8],
    keep: usize,
) -> Result<PathBuf, FsError> {
    let directory = backup_dir(state_dir);
    DirBuilder::new()
        .recursive(true)
        .mode(BACKUP_DIR_MODE)
        .create(&directory)
        .map_err(|source| FsError::CreateDirectory {
            path: directory.clone(),
            source,
        })?;
    let stem = backup_stem(target);
    let existing = list_backups(&directory, &stem)?;
    let now = unix_millis();
    let stamp = match existing.last() {
        Some((newest, _)) if *newest >= now => newest + 1,
        _ => now,
    };
    let backup = directory.join(format!("{stem}.{stamp}"));
    atomic_write(&backup, content)?;

    let all = list_backups(&directory, &stem)?;
    let excess = all.len().saturating_sub(keep.max(1));
    for (_, old) in all.into_iter().take(excess) {
        if let Err(error) = fs::remove_file(&old) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(
                    file = %old.display(),
                    error = %describe(&error),
                    "cannot prune old backup"
                );
            }
        }
    }
    tracing::debug!(file = %target.display(), backup = %backup.display(), "saved backup");
    Ok(backup)
}

/// The newest backup of `target`, if any (path and bytes).
pub fn latest_backup(
    state_dir: &Path,
    target: &Path,
) -> Result<Option<(PathBuf, Vec<u8>)>, FsError> {
    let directory = backup_dir(state_dir);
    let backups = list_backups(&directory, &backup_stem(target))?;
    // Newest first; skip one pruned between listing and reading.
    for (_, path) in backups.into_iter().rev() {
        if let Some(content) = read_file(&path)? {
            return Ok(Some((path, content)));
        }
    }
    Ok(None)
}

fn backup_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("backups")
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The target's absolute path as one file name: `/etc/kafka/server.properties` becomes
/// `etc%2Fkafka%2Fserver.properties`. Escaping (rather than replacing `/` by `_`) keeps
/// `/a/b_c` and `/a/b/c` apart; very long paths are shortened and made unique by a hash.
fn backup_stem(target: &Path) -> String {
    let absolute = std::path::absolute(target).unwrap_or_else(|_| target.to_path_buf());
    let bytes = absolute.as_os_str().as_bytes();
    let trimmed = bytes.strip_prefix(b"/").unwrap_or(bytes);
    let mut stem = String::with_capacity(trimmed.len());
    for (index, &byte) in trimmed.iter().enumerate() {
        let plain = byte.is_ascii_alphanumeric()
            || byte == b'_'
            || byte == b'-'
            // A leading dot would hide the backup and look like one of our temp files.
            || (byte == b'.' && index > 0);
        if plain {
            stem.push(char::from(byte));
        } else {
            stem.push_str(&format!("%{byte:02X}"));
        }
    }
    if stem.len() > MAX_BACKUP_STEM {
        let digest = Sha256::digest(bytes);
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        // All ASCII after escaping, so any byte index is a char boundary.
        stem.truncate(MAX_BACKUP_STEM - hash.len() - 1);
        stem.push('~');
        stem.push_str(&hash);
    }
    stem
}

/// Backups of one target, oldest first, as (timestamp, path).
fn list_backups(directory: &Path, stem: &str) -> Result<Vec<(u64, PathBuf)>, FsError> {
    let list_error = |source| FsError::ListDirectory {
        path: directory.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(list_error(error)),
    };
    let mut backups = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_error)?;
        let Some(stamp) = entry
            .file_name()
            .to_str()
            .and_then(|name| backup_stamp(name, stem))
        else {
            continue;
        };
        if entry.file_type().map_err(list_error)?.is_file() {
            backups.push((stamp, entry.path()));
        }
    }
    backups.sort();
    Ok(backups)
}

/// `Some(millis)` when `name` is `<stem>.<millis>`.
fn backup_stamp(name: &str, stem: &str) -> Option<u64> {
    let digits = name.strip_prefix(stem)?.strip_prefix('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Remove stale temp files `.<name>.kreach-tmp.*` left in `path`'s directory by a crashed
/// writer. Returns how many were removed.
///
/// A temp file still flocked by a live writer (in this process or another) is left alone.
/// Symlinks are resolved as in [`atomic_write`], so this looks where the temp files really
/// are. A missing directory has no temp files (Ok(0)).
pub fn clean_stale_temp_files(path: &Path) -> Result<usize, FsError> {
    let target = resolve_target(path)?;
    let prefix = temp_prefix(target.file_name().unwrap_or_default()).into_vec();
    let directory = parent_dir(&target);
    let list_error = |source| FsError::ListDirectory {
        path: directory.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(list_error(error)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(list_error)?;
        if !entry.file_name().as_bytes().starts_with(&prefix)
            || !entry.file_type().map_err(list_error)?.is_file()
        {
            continue;
        }
        let stale = entry.path();
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&stale)
        {
            Ok(file) => file,
            // Its writer finished (renamed or removed it) since we listed.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(FsError::Remove {
                    path: stale,
                    source,
                })
            }
        };
        let _lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                tracing::debug!(file = %stale.display(), "temp file in use by a live writer");
                continue;
            }
            Err((_, errno)) => {
                return Err(FsError::Remove {
                    path: stale,
                    source: io::Error::from(errno),
                })
            }
        };
        match fs::remove_file(&stale) {
            Ok(()) => {
                tracing::info!(file = %stale.display(), "removed stale temp file");
                removed += 1;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FsError::Remove {
                    path: stale,
                    source,
                })
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_stem_escapes_separators_and_keeps_paths_apart() {
        assert_eq!(
            backup_stem(Path::new("/etc/kafka/server.properties")),
            "etc%2Fkafka%2Fserver.properties"
        );
        assert_ne!(
            backup_stem(Path::new("/a/b_c")),
            backup_stem(Path::new("/a/b/c"))
        );
        assert_ne!(
            backup_stem(Path::new("/a/b%2Fc")),
            backup_stem(Path::new("/a/b/c"))
        );
        assert_eq!(backup_stem(Path::new("/.hidden")), "%2Ehidden");
    }

    #[test]
    fn backup_stem_of_a_long_path_is_bounded_and_unique() {
        let long_a = format!("/{}/a", "x".repeat(300));
        let long_b = format!("/{}/b", "x".repeat(300));
        let stem_a = backup_stem(Path::new(&long_a));
        assert!(stem_a.len() <= MAX_BACKUP_STEM, "{}", stem_a.len());
        assert_ne!(stem_a, backup_stem(Path::new(&long_b)));
    }

    #[test]
    fn backup_stamp_accepts_only_stem_dot_digits() {
        assert_eq!(backup_stamp("etc%2Fhosts.17", "etc%2Fhosts"), Some(17));
        assert_eq!(backup_stamp("etc%2Fhosts.d%2Fx.17", "etc%2Fhosts"), None);
        assert_eq!(backup_stamp("etc%2Fhosts.", "etc%2Fhosts"), None);
        assert_eq!(
            backup_stamp(".etc%2Fhosts.17.kreach-tmp.1.0", "etc%2Fhosts"),
            None
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let path = Path::new("/etc/hosts");
        let read_only = explain(&io::Error::from_raw_os_error(libc::EROFS), path);
        assert!(
            read_only.starts_with("read-only file system ("),
            "{read_only}"
        );
        let immutable = explain(&io::Error::from_raw_os_error(libc::EPERM), path);
        assert!(immutable.contains("chattr -i"), "{immutable}");
        let missing = explain(
            &io::Error::from_raw_os_error(libc::ENOENT),
            Path::new("/no/such/dir/hosts"),
        );
        assert!(missing.contains("/no/such/dir exist?"), "{missing}");
    }

    #[test]
    fn parent_of_a_bare_file_name_is_the_current_directory() {
        assert_eq!(parent_dir(Path::new("hosts")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/etc/hosts")), Path::new("/etc"));
    }
}
