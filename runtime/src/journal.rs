//! Log lines to journald with their fields as journal fields (issue 15 §4), so that
//! `journalctl -u kreach-agent NODE=emr-worker-1 GENERATION=7` finds one node's lines of one
//! generation, while `journalctl -u kreach-agent` still shows each line whole.
//!
//! Each event becomes one datagram of journald's native protocol on its socket: `MESSAGE` is the
//! line as the text log shows it (the message, then `key=value` for every field), every field is
//! also a journal field of its own (upper-cased, journald's name rules), plus `PRIORITY` from the
//! level, `SYSLOG_IDENTIFIER`, and fields given for every line (the agent's `NODE`). tracing-journald
//! sends only the message as `MESSAGE`, which would hide the fields from journalctl's usual output.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// journald's native socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";
/// A datagram larger than this is cut (a rendered plan can be long; the socket takes a few
/// hundred KiB, but nothing kreach logs needs more).
const MAX_MESSAGE: usize = 48 * 1024;

pub struct JournalLayer {
    socket: UnixDatagram,
    path: PathBuf,
    identifier: String,
    /// `NAME=value` lines sent with every event.
    fixed: Vec<u8>,
    /// Their names: an event field of the same name is not sent twice (the agent's `node`).
    fixed_names: Vec<String>,
}

impl JournalLayer {
    /// A layer sending to the journald socket at `path`, identified as `identifier`, adding
    /// `fields` to every line. Fails when the socket cannot be created.
    pub fn new(
        path: &Path,
        identifier: &str,
        fields: &[(&str, &str)],
    ) -> std::io::Result<JournalLayer> {
        let socket = UnixDatagram::unbound()?;
        let mut fixed = Vec::new();
        let mut fixed_names = Vec::new();
        for (name, value) in fields {
            let name = field_name(name);
            put_field(&mut fixed, &name, value);
            fixed_names.push(name);
        }
        Ok(JournalLayer {
            socket,
            path: path.to_path_buf(),
            identifier: identifier.to_string(),
            fixed,
            fixed_names,
        })
    }
}

/// journald's rule for field names: A–Z, 0–9 and `_`, not starting with `_` or a digit.
fn field_name(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    let trimmed = upper.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    if trimmed.is_empty() {
        "FIELD".to_string()
    } else {
        trimmed.to_string()
    }
}

/// One field in the native protocol: `NAME=value\n`, or for a value with a newline
/// `NAME\n<u64 LE length><value>\n`.
fn put_field(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// `value` cut to at most [`MAX_MESSAGE`] bytes, on a character boundary.
fn at_most(value: &str) -> &str {
    &value[..value.floor_char_boundary(MAX_MESSAGE)]
}

fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        Level::DEBUG | Level::TRACE => "7",
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    /// (field name as written, its value as the text log shows it)
    fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push((field.name(), format!("{value:?}")));
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = std::mem::take(&mut fields.message);
        for (name, value) in &fields.fields {
            let _ = write!(message, " {name}={value}");
        }
        if message.len() > MAX_MESSAGE {
            message.truncate(at_most(&message).len());
            message.push_str(" …(cut)");
        }
        let mut buf = Vec::with_capacity(message.len() + 256);
        put_field(&mut buf, "MESSAGE", &message);
        put_field(&mut buf, "PRIORITY", priority(event.metadata().level()));
        put_field(&mut buf, "SYSLOG_IDENTIFIER", &self.identifier);
        buf.extend_from_slice(&self.fixed);
        for (name, value) in &fields.fields {
            let name = field_name(name);
            if self.fixed_names.contains(&name) {
                continue;
            }
            put_field(&mut buf, &name, at_most(value));
        }
        // Nowhere to report a failed log line; the next may succeed.
        let _ = self.socket.send_to(&buf, &self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// The fields of one native-protocol datagram.
    fn parse(mut datagram: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while !datagram.is_empty() {
            let line_end = datagram.iter().position(|&b| b == b'\n').unwrap();
            let line = std::str::from_utf8(&datagram[..line_end]).unwrap();
            if let Some((name, value)) = line.split_once('=') {
                fields.push((name.to_string(), value.to_string()));
                datagram = &datagram[line_end + 1..];
            } else {
                let rest = &datagram[line_end + 1..];
                let length = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                let value = std::str::from_utf8(&rest[8..8 + length]).unwrap();
                fields.push((line.to_string(), value.to_string()));
                assert_eq!(rest[8 + length], b'\n');
                datagram = &rest[9 + length..];
            }
        }
        fields
    }

    #[test]
    fn a_line_reaches_the_journal_whole_and_with_each_field_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let journal = UnixDatagram::bind(&path).unwrap();
        let layer = JournalLayer::new(&path, "kreach-agent", &[("NODE", "emr-worker-1")]).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                node = "emr-worker-1",
                unit = "kafka.service",
                generation = 7u64,
                file = %"/etc/hosts",
                "restarting unit"
            );
            tracing::warn!("plan:\nline one\nline two");
        });
        let mut buf = vec![0; 65536];
        let size = journal.recv(&mut buf).unwrap();
        let fields = parse(&buf[..size]);
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("MESSAGE"),
            Some(
                "restarting unit node=emr-worker-1 unit=kafka.service generation=7 file=/etc/hosts"
            )
        );
        assert_eq!(
            fields.iter().filter(|(name, _)| name == "NODE").count(),
            1,
            "NODE sent twice: {fields:?}"
        );
        assert_eq!(get("PRIORITY"), Some("6"));
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("kreach-agent"));
        assert_eq!(get("NODE"), Some("emr-worker-1"));
        assert_eq!(get("UNIT"), Some("kafka.service"));
        assert_eq!(get("GENERATION"), Some("7"));
        assert_eq!(get("FILE"), Some("/etc/hosts"));

        let size = journal.recv(&mut buf).unwrap();
        let fields = parse(&buf[..size]);
        assert_eq!(
            fields[0],
            (
                "MESSAGE".to_string(),
                "plan:\nline one\nline two".to_string()
            )
        );
        assert_eq!(fields[1], ("PRIORITY".to_string(), "4".to_string()));
    }

    #[test]
    fn field_names_follow_journalds_rules() {
        assert_eq!(field_name("node"), "NODE");
        assert_eq!(field_name("old_hash"), "OLD_HASH");
        assert_eq!(field_name("_private.x"), "PRIVATE_X");
        assert_eq!(field_name("9lives"), "LIVES");
        assert_eq!(field_name("__"), "FIELD");
    }
}
