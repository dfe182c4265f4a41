//! The audit trail: one structured line per change the agent makes, kept in the state directory.
//!
//! Owns `STATE_DIR/audit.jsonl`: every write, rollback, undo and drift repair of a managed file
//! appends one JSON object (file, old and new hash, action, reason, generation, who released it),
//! so an operator can answer "what did kreach change on this host, and why" long after the
//! journal has rotated. Lines are appended with `O_APPEND` and synced; a line is never rewritten.
//! Each entry has a sequence number that only grows, so the coordinator can ask for "everything
//! after N". When the file passes [`ROTATE_BYTES`] it becomes `audit.jsonl.1` (one old file kept).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file is rotated once it is this large (about 20,000 entries).
pub const ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// Reasons longer than this (a service's whole error output) are cut, so that every entry stays
/// small and the last one is always found in the file's tail.
const MAX_REASON_BYTES: usize = 4096;

const FILE_NAME: &str = "audit.jsonl";
const ROTATED_NAME: &str = "audit.jsonl.1";

/// What the agent did to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Wrote the desired content of a release (or of `apply-local`).
    Apply,
    /// Put the agent's own block or settings back after someone changed them.
    Repair,
    /// Restored the previous bytes because a gate failed after the change.
    Rollback,
    /// Restored the previous bytes because a later write of the same apply failed.
    Undo,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Apply => "apply",
            AuditAction::Repair => "repair",
            AuditAction::Rollback => "rollback",
            AuditAction::Undo => "undo",
        }
    }
}

/// One change, as one line of `audit.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1, 2, 3, ... for the life of the state directory.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub node: String,
    /// What the file is to kreach: "hosts block", "listener settings", ...
    pub file: String,
    pub path: String,
    pub action: AuditAction,
    /// sha256 of the bytes before (None: the file did not exist).
    pub old_hash: Option<String>,
    /// sha256 of the bytes after (None: the file was removed).
    pub new_hash: Option<String>,
    /// Why: the keys that changed, the failed gate, the drift found.
    pub reason: String,
    pub generation: u64,
    /// Who released the change ("rollout gen 7 step 2: brokers [2]", "apply-local", "drift-repair").
    pub released_by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot write the audit trail {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the audit trail {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The audit trail of one state directory.
#[derive(Debug, Clone)]
pub struct AuditLog {
    dir: PathBuf,
    rotate_bytes: u64,
}

impl AuditLog {
    pub fn new(state_dir: &Path) -> AuditLog {
        AuditLog {
            dir: state_dir.to_path_buf(),
            rotate_bytes: ROTATE_BYTES,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Append `entry` (its `seq` and, when zero, `at_ms` are filled in) and sync it to disk.
    /// Callers hold the node lock, so appends never interleave.
    pub fn append(&self, mut entry: AuditEntry) -> Result<AuditEntry, AuditError> {
        let path = self.path();
        let write_error = |source| AuditError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(write_error)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        entry.seq = self.last_seq()? + 1;
        if entry.reason.len() > MAX_REASON_BYTES {
            let mut cut = MAX_REASON_BYTES;
            while !entry.reason.is_char_boundary(cut) {
                cut -= 1;
            }
            entry.reason.truncate(cut);
            entry.reason.push_str("… (cut)");
        }
        if entry.at_ms == 0 {
            entry.at_ms = now_ms();
        }
        if size >= self.rotate_bytes {
            std::fs::rename(&path, self.dir.join(ROTATED_NAME)).map_err(write_error)?;
        }
        let mut line = serde_json::to_string(&entry).expect("an audit entry serialises");
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(write_error)?;
        file.write_all(line.as_bytes()).map_err(write_error)?;
        file.sync_data().map_err(write_error)?;
        Ok(entry)
    }

    /// Every entry with `seq > after`, oldest first (from the rotated file too). A line that
    /// does not parse (a torn tail after a crash mid-append) is skipped.
    ///
    /// The entries a coordinator lacks are nearly always the last few: they are looked for in the
    /// current file's tail first, and the whole trail (up to two 8 MiB files) is parsed only when
    /// the tail does not reach back to `after`.
    pub fn read_since(&self, after: u64) -> Result<Vec<AuditEntry>, AuditError> {
        let path = self.path();
        if let Some((tail, whole)) = read_tail(&path)? {
            let text = String::from_utf8_lossy(&tail);
            // Unless the tail is the whole file, its first line may be cut: skip it.
            let lines = text.lines().skip(usize::from(!whole));
            let entries: Vec<AuditEntry> = lines
                .filter_map(|line| serde_json::from_str::<AuditEntry>(line).ok())
                .collect();
            if entries
                .first()
                .is_some_and(|first| first.seq <= after.saturating_add(1))
            {
                return Ok(entries
                    .into_iter()
                    .filter(|entry| entry.seq > after)
                    .collect());
            }
        }
        let mut entries = Vec::new();
        for name in [ROTATED_NAME, FILE_NAME] {
            let path = self.dir.join(name);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(AuditError::Read { path, source }),
            };
            for line in BufReader::new(file).lines() {
                let line = line.map_err(|source| AuditError::Read {
                    path: path.clone(),
                    source,
                })?;
                if let Ok(entry) = serde_json::from_str::<AuditEntry>(&line) {
                    if entry.seq > after {
                        entries.push(entry);
                    }
                }
            }
        }
        Ok(entries)
    }

    /// The highest sequence number written so far (0 when none): read from the last complete
    /// line of the current file, or of the rotated one.
    pub fn last_seq(&self) -> Result<u64, AuditError> {
        for name in [FILE_NAME, ROTATED_NAME] {
            if let Some(seq) = last_seq_in(&self.dir.join(name))? {
                return Ok(seq);
            }
        }
        Ok(0)
    }
}

/// The last [`TAIL_BYTES`] of `path` (None: no such file), and whether that is the whole file.
fn read_tail(path: &Path) -> Result<Option<(Vec<u8>, bool)>, AuditError> {
    let read_error = |source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_error(source)),
    };
    let size = file.metadata().map_err(read_error)?.len();
    let start = size.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).map_err(read_error)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(read_error)?;
    Ok(Some((tail, start == 0)))
}

/// An entry is well under 4 KiB; this much of a file's tail always holds the last complete ones.
const TAIL_BYTES: u64 = 64 * 1024;

/// The seq of the last parseable line of `path`, reading only its tail.
fn last_seq_in(path: &Path) -> Result<Option<u64>, AuditError> {
    let Some((tail, _)) = read_tail(path)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&tail);
    Ok(text
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<AuditEntry>(line).ok())
        .map(|entry| entry.seq))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-11-25T19:40:03Z`-style UTC time for people reading the trail.
pub fn format_time(at_ms: u64) -> String {
    let secs = (at_ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One line per entry, as `kreach-agent audit` prints it.
pub fn render(entry: &AuditEntry) -> String {
    let short = |hash: &Option<String>| match hash {
        Some(hash) => hash.chars().take(12).collect::<String>(),
        None => "(none)".to_string(),
    };
    format!(
        "#{} {} gen {} {} {} ({}) {} -> {}: {} [released by {}]",
        entry.seq,
        format_time(entry.at_ms),
        entry.generation,
        entry.action.as_str(),
        entry.path,
        entry.file,
        short(&entry.old_hash),
        short(&entry.new_hash),
        entry.reason,
        entry.released_by
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(reason: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at_ms: 0,
            node: "emr-worker-1".into(),
            file: "hosts block".into(),
            path: "/etc/hosts".into(),
            action: AuditAction::Apply,
            old_hash: Some("a".repeat(64)),
            new_hash: Some("b".repeat(64)),
            reason: reason.into(),
            generation: 3,
            released_by: "rollout gen 3 step 1".into(),
        }
    }

    #[test]
    fn entries_get_growing_sequence_numbers_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        assert_eq!(log.last_seq().unwrap(), 0);
        let first = log.append(entry("one")).unwrap();
        let second = log.append(entry("two")).unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        assert!(first.at_ms > 0);
        let all = log.read_since(0).unwrap();
        assert_eq!(all, vec![first, second.clone()]);
        assert_eq!(log.read_since(1).unwrap(), vec![second]);
        // A new handle (a restarted agent) continues the numbering.
        assert_eq!(
            AuditLog::new(dir.path())
                .append(entry("three"))
                .unwrap()
                .seq,
            3
        );
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.append(entry("one")).unwrap();
        let mut file = OpenOptions::new().append(true).open(log.path()).unwrap();
        file.write_all(b"{\"seq\":2,\"at_ms\":1,\"no").unwrap();
        drop(file);
        assert_eq!(log.read_since(0).unwrap().len(), 1);
        assert_eq!(log.last_seq().unwrap(), 1);
    }

    #[test]
    fn rotation_keeps_one_old_file_and_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog {
            dir: dir.path().to_path_buf(),
            rotate_bytes: 1024,
        };
        let long = "x".repeat(100_000);
        let first = log.append(entry(&long)).unwrap();
        assert!(first.reason.len() < 4200 && first.reason.ends_with("(cut)"));
        let after = log.append(entry("after rotation")).unwrap();
        assert_eq!(after.seq, 2);
        assert!(dir.path().join(ROTATED_NAME).exists());
        let all = log.read_since(0).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn entries_since_a_seq_are_the_same_from_the_tail_or_the_whole_trail() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog {
            dir: dir.path().to_path_buf(),
            rotate_bytes: 256 * 1024,
        };
        // About 400 KiB of entries: a rotated file and a current file larger than the tail read.
        for index in 0..1000 {
            log.append(entry(&format!("change {index}"))).unwrap();
        }
        assert!(dir.path().join(ROTATED_NAME).exists());
        let all = log.read_since(0).unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=1000).collect::<Vec<_>>()
        );
        for after in [0, 1, 500, 700, 990, 999, 1000, 5000] {
            let since = log.read_since(after).unwrap();
            let expected: Vec<AuditEntry> = all.iter().filter(|e| e.seq > after).cloned().collect();
            assert_eq!(since, expected, "after {after}");
        }
    }

    #[test]
    fn rendering_names_file_action_hashes_and_releaser() {
        let mut e = entry("listeners, advertised.listeners changed");
        e.seq = 7;
        e.at_ms = 1_795_203_603_000;
        let line = render(&e);
        assert_eq!(
            line,
            "#7 2026-11-20T19:40:03Z gen 3 apply /etc/hosts (hosts block) aaaaaaaaaaaa -> bbbbbbbbbbbb: \
             listeners, advertised.listeners changed [released by rollout gen 3 step 1]"
        );
    }
}
