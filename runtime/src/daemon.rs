//! What both daemons need from their surroundings: logging set up the same way, and systemd's
//! service notifications for their `Type=notify` units.
//!
//! Owns no policy: when a daemon is ready or stopping is the daemon's decision.

/// Where log lines go: `KREACH_LOG_FORMAT` picks (`text`, `json`, `journald`); unset, a daemon
/// whose stderr is the journal (systemd says so in `JOURNAL_STREAM`) writes to journald directly,
/// anything else writes text to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    Journald,
}

impl LogFormat {
    /// The format for `KREACH_LOG_FORMAT`'s value (`requested`) and `JOURNAL_STREAM`'s
    /// (`journal_stream`, "DEVICE:INODE" of the journal's stream) given stderr's device and inode.
    pub fn choose(
        requested: Option<&str>,
        journal_stream: Option<&str>,
        stderr: Option<(u64, u64)>,
    ) -> LogFormat {
        match requested {
            Some("json") => return LogFormat::Json,
            Some("journald") => return LogFormat::Journald,
            Some("text") => return LogFormat::Text,
            _ => {}
        }
        let is_the_journal = journal_stream
            .and_then(|value| value.split_once(':'))
            .and_then(|(device, inode)| Some((device.parse().ok()?, inode.parse().ok()?)))
            .is_some_and(|stream: (u64, u64)| stderr == Some(stream));
        if is_the_journal {
            LogFormat::Journald
        } else {
            LogFormat::Text
        }
    }
}

/// Set up logging for a daemon or a command. `KREACH_LOG` filters (default `info`).
///
/// Under systemd (or with `KREACH_LOG_FORMAT=journald`) every line goes to journald with its
/// fields as journal fields, upper-cased and unprefixed (`node` → `NODE`, `generation` →
/// `GENERATION`, `file` → `FILE`, `cluster` → `CLUSTER`), plus `fields` on every line (the agent
/// gives `NODE`), so `journalctl -u kreach-agent GENERATION=7` finds one generation's lines.
/// `KREACH_LOG_FORMAT=json` writes one JSON object per line to stderr with the same fields at
/// the top level, for a log shipper; otherwise text on stderr.
pub fn init_logging(fields: &[(&str, &str)]) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("KREACH_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let stderr = std::fs::metadata("/proc/self/fd/2").ok().map(|meta| {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    });
    let format = LogFormat::choose(
        std::env::var("KREACH_LOG_FORMAT").ok().as_deref(),
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stderr,
    );
    if format == LogFormat::Journald {
        let identifier = std::env::args_os()
            .next()
            .map(std::path::PathBuf::from)
            .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "kreach".to_string());
        let path = std::path::Path::new(crate::journal::SOCKET);
        match crate::journal::JournalLayer::new(path, &identifier, fields) {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(error) => eprintln!("cannot log to journald ({error}); logging to stderr"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_target(false);
    if format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// systemd's service notifications. Every call is a no-op without `NOTIFY_SOCKET`, so a daemon
/// behaves the same under a shell or a test harness.
pub mod systemd_notify {
    use sd_notify::NotifyState;
    use std::time::Duration;

    pub fn ready(status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn stopping() {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    pub fn watchdog() {
        send(&[NotifyState::Watchdog]);
    }

    /// Half of the unit's `WatchdogSec=`, as systemd recommends; `None` without a watchdog.
    pub fn watchdog_interval() -> Option<Duration> {
        let mut usec = 0;
        (sd_notify::watchdog_enabled(false, &mut usec) && usec > 1)
            .then(|| Duration::from_micros(usec / 2))
    }

    fn send(states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(false, states) {
            tracing::warn!("cannot notify systemd: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    #[test]
    fn the_journal_is_used_when_stderr_is_its_stream_or_when_asked() {
        let stream = Some("64769:123456");
        assert_eq!(
            LogFormat::choose(None, stream, Some((64769, 123456))),
            LogFormat::Journald
        );
        // stderr redirected elsewhere by the service (a file, a pipe): text there, as asked.
        assert_eq!(
            LogFormat::choose(None, stream, Some((64769, 99))),
            LogFormat::Text
        );
        assert_eq!(LogFormat::choose(None, None, Some((1, 2))), LogFormat::Text);
        assert_eq!(LogFormat::choose(None, Some("junk"), None), LogFormat::Text);
        assert_eq!(
            LogFormat::choose(Some("json"), stream, Some((64769, 123456))),
            LogFormat::Json
        );
        assert_eq!(
            LogFormat::choose(Some("journald"), None, None),
            LogFormat::Journald
        );
        assert_eq!(
            LogFormat::choose(Some("text"), stream, Some((64769, 123456))),
            LogFormat::Text
        );
    }
}
