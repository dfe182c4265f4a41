//! What both daemons need from their surroundings: logging set up the same way, and systemd's
//! service notifications for their `Type=notify` units.
//!
//! Owns no policy: when a daemon is ready or stopping is the daemon's decision.

/// Log to stderr (the journal, under systemd). `KREACH_LOG` filters (default `info`);
/// `KREACH_LOG_FORMAT=json` writes one JSON object per line with the event's fields (node,
/// generation, path, ...) at the top level, for a log shipper or `journalctl -o cat | jq`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KREACH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var("KREACH_LOG_FORMAT").as_deref() == Ok("json") {
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
