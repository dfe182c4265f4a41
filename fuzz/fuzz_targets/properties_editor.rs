//! Fuzzes the `server.properties` editor (`kreach_domain::properties`): whatever the file and the
//! desired listener settings, nothing panics; and whenever `apply_listeners` accepts them,
//! - every byte outside the managed region survives, in order: the file is cut at the effective
//!   (last) definition of each managed key whose value changed, every piece in between must appear
//!   verbatim and in order in the result, and whatever the result adds between or after the pieces
//!   must be definitions of managed keys only (the idea of tests/properties_proptest.rs, stated for
//!   arbitrary text with an independent java.util.Properties line reader);
//! - no change means the very same bytes, and every non-managed key reads back unchanged;
//! - a changed result obeys Kafka's rules, and applying again changes nothing.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use arbitrary::Arbitrary;
use kreach_domain::properties::{
    apply_listeners, check_kafka_rules, get_property, ListenerSettings, ListenerSpec, ListenerTls,
    LISTENER_SCOPED_KEYS, MANAGED_KEYS,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Name {
    Internal,
    External,
    Plaintext,
    Controller,
    Replication,
    Lower(u8),
    FromFile(u8),
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum Host {
    Wildcard,
    Empty,
    Private(u8),
    Public(u8),
    V6Loopback,
    V6Bracketed,
    Hostname(u8),
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum Port {
    Usual(u8),
    Any(u16),
}

#[derive(Debug, Arbitrary)]
enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
    Lower,
    Any(String),
}

#[derive(Debug, Arbitrary)]
struct Listener {
    name: Name,
    bind: Host,
    advertised: Host,
    port: Port,
    protocol: Protocol,
}

#[derive(Debug, Arbitrary)]
struct Desired {
    owned: Vec<Name>,
    listeners: Vec<Listener>,
    inter_broker: Option<Name>,
}

/// What kreach adds for a protocol: the PEM files of a TLS listener, the mechanism of a SASL one
/// (so the listener-scoped keys are edited too).
fn security_for(protocol: &str) -> (Option<ListenerTls>, Option<String>) {
    let upper = protocol.to_uppercase();
    let tls = matches!(upper.as_str(), "SSL" | "SASL_SSL").then(|| ListenerTls {
        keystore: "/etc/kafka/kreach-tls/l.keystore.pem".into(),
        truststore: "/etc/kafka/kreach-tls/ca.pem".into(),
    });
    let sasl = upper.starts_with("SASL_").then(|| "SCRAM-SHA-512".to_string());
    (tls, sasl)
}

/// The settings of tests/properties_proptest.rs.
fn default_settings() -> ListenerSettings {
    let spec = |name: &str, port: u16, advertised: &str, protocol: &str| ListenerSpec {
        name: name.into(),
        bind_host: "0.0.0.0".into(),
        port,
        advertised_host: advertised.into(),
        security_protocol: protocol.into(),
        tls: security_for(protocol).0,
        sasl_mechanism: security_for(protocol).1,
    };
    ListenerSettings {
        owned_names: vec!["INTERNAL".into(), "EXTERNAL".into()],
        listeners: vec![
            spec("INTERNAL", 19092, "10.0.1.24", "PLAINTEXT"),
            spec("EXTERNAL", 19093, "47.96.1.24", "SASL_SSL"),
        ],
        inter_broker_listener: "INTERNAL".into(),
    }
}

fn build(desired: Desired, file: &str) -> ListenerSettings {
    let tokens = common::tokens(file);
    let name = |name: Name| match name {
        Name::Internal => "INTERNAL".to_string(),
        Name::External => "EXTERNAL".to_string(),
        Name::Plaintext => "PLAINTEXT".to_string(),
        Name::Controller => "CONTROLLER".to_string(),
        Name::Replication => "REPLICATION".to_string(),
        Name::Lower(n) => format!("internal{}", n % 4),
        Name::FromFile(n) if !tokens.is_empty() => {
            // The name part of a token such as `CONTROLLER://:9093` or `INTERNAL:SSL`.
            let token = tokens[n as usize % tokens.len()];
            let token = token.rsplit(['=', ',']).next().unwrap_or(token);
            token.split(':').next().unwrap_or(token).to_string()
        }
        Name::FromFile(_) => "EXTERNAL".to_string(),
        Name::Any(s) => s,
    };
    let host = |host: Host| match host {
        Host::Wildcard => "0.0.0.0".to_string(),
        Host::Empty => String::new(),
        Host::Private(n) => format!("10.0.1.{n}"),
        Host::Public(n) => format!("47.96.1.{n}"),
        Host::V6Loopback => "::1".to_string(),
        Host::V6Bracketed => "[fd00::1]".to_string(),
        Host::Hostname(n) => format!("b-{n}.orders.kafka.internal"),
        Host::Any(s) => s,
    };
    ListenerSettings {
        owned_names: desired.owned.into_iter().take(8).map(name).collect(),
        listeners: desired
            .listeners
            .into_iter()
            .take(8)
            .map(|l| {
                let protocol: String = match l.protocol {
                    Protocol::Plaintext => "PLAINTEXT".into(),
                    Protocol::Ssl => "SSL".into(),
                    Protocol::SaslPlaintext => "SASL_PLAINTEXT".into(),
                    Protocol::SaslSsl => "SASL_SSL".into(),
                    Protocol::Lower => "sasl_ssl".into(),
                    Protocol::Any(s) => s,
                };
                let (tls, sasl_mechanism) = security_for(&protocol);
                ListenerSpec {
                name: name(l.name),
                bind_host: host(l.bind),
                advertised_host: host(l.advertised),
                port: match l.port {
                    Port::Usual(n) => 19092 + u16::from(n % 8),
                    Port::Any(p) => p,
                },
                security_protocol: protocol,
                tls,
                sasl_mechanism,
            }})
            .collect(),
        inter_broker_listener: desired.inter_broker.map(name).unwrap_or_default(),
    }
}

/// One logical line of a properties file as `java.util.Properties.load` reads it: from the start of
/// its first natural line (indentation included) to the end of its last one, terminator excluded.
#[derive(Debug)]
struct Logical {
    start: usize,
    end: usize,
    key: String,
}

fn is_java_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\x0c')
}

/// The logical lines of `text` (comments and blank lines skipped), or None where the key cannot be
/// decided (a malformed `\u` escape, which Java refuses).
fn logical_lines(text: &str) -> Option<Vec<Logical>> {
    let b = text.as_bytes();
    // Natural lines: (start, end of text). Terminators: \n, \r, \r\n.
    let mut naturals = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
            i += 1;
        }
        naturals.push((start, i));
        if i < b.len() {
            i += if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
        }
    }
    let skip_ws = |mut at: usize, end: usize| {
        while at < end && is_java_ws(b[at]) {
            at += 1;
        }
        at
    };
    let mut lines = Vec::new();
    let mut k = 0;
    while k < naturals.len() {
        let (start, end) = naturals[k];
        let first = skip_ws(start, end);
        if first == end || b[first] == b'#' || b[first] == b'!' {
            k += 1;
            continue;
        }
        let mut joined = String::new();
        let mut from = first;
        let last_end;
        loop {
            let (_, end) = naturals[k];
            let content = &text[from..end];
            let backslashes = content.bytes().rev().take_while(|&c| c == b'\\').count();
            k += 1;
            if backslashes % 2 == 1 {
                joined.push_str(&content[..content.len() - 1]);
                if k == naturals.len() {
                    last_end = end;
                    break;
                }
                let (next_start, next_end) = naturals[k];
                from = skip_ws(next_start, next_end);
            } else {
                joined.push_str(content);
                last_end = end;
                break;
            }
        }
        lines.push(Logical {
            start,
            end: last_end,
            key: java_key(&joined)?,
        });
    }
    Some(lines)
}

/// The unescaped key of a joined logical line (`Properties.load0` + `loadConvert`).
fn java_key(line: &str) -> Option<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut len = 0;
    let mut escaped = false;
    while len < chars.len() {
        let c = chars[len];
        if !escaped && matches!(c, '=' | ':' | ' ' | '\t' | '\x0c') {
            break;
        }
        escaped = c == '\\' && !escaped;
        len += 1;
    }
    let mut key = String::new();
    let mut i = 0;
    while i < len {
        let c = chars[i];
        i += 1;
        if c != '\\' {
            key.push(c);
            continue;
        }
        let next = *chars.get(i)?;
        if i >= len {
            return None; // a lone trailing backslash: Java reads past the key; undecided.
        }
        i += 1;
        key.push(match next {
            't' => '\t',
            'r' => '\r',
            'n' => '\n',
            'f' => '\x0c',
            'u' => {
                let hex: String = chars.get(i..i + 4)?.iter().collect();
                if i + 4 > len || !hex.chars().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                i += 4;
                char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
            }
            other => other,
        });
    }
    Some(key)
}

/// A key the editor may change: one of the four listener keys, or a `listener.name.NAME.` key of
/// a TLS/SASL setting kreach owns.
fn is_managed(key: &str) -> bool {
    MANAGED_KEYS.contains(&key)
        || (key.starts_with("listener.name.")
            && LISTENER_SCOPED_KEYS
                .iter()
                .any(|scoped| key.ends_with(&format!(".{scoped}"))))
}

/// Whether `text` (a stretch the editor added) holds only line endings and managed-key definitions.
fn only_managed(text: &str) -> bool {
    match logical_lines(text) {
        Some(lines) => lines.iter().all(|l| is_managed(&l.key)),
        None => false,
    }
}

/// `end`, moved past the line terminator (`\r\n`, `\n` or `\r`) that follows it, if any.
fn with_terminator(text: &str, end: usize) -> usize {
    let b = text.as_bytes();
    match (b.get(end), b.get(end + 1)) {
        (Some(b'\r'), Some(b'\n')) => end + 2,
        (Some(b'\n' | b'\r'), _) => end + 1,
        _ => end,
    }
}

fn check_outside_survives(input: &str, output: &str, changed: &[String]) {
    let Some(lines) = logical_lines(input) else {
        return;
    };
    // The effective definitions of the changed keys, in file order; every definition of a key the
    // edit removed (an earlier one must not come back to life).
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for key in changed {
        if get_property(output, key).ok().flatten().is_none() {
            // A removed definition goes with its line terminator.
            spans.extend(
                lines
                    .iter()
                    .filter(|l| &l.key == key)
                    .map(|l| (l.start, with_terminator(input, l.end))),
            );
        } else if let Some(l) = lines.iter().rev().find(|l| &l.key == key) {
            spans.push((l.start, l.end));
        }
    }
    spans.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for (start, end) in &spans {
        pieces.push(&input[from..*start]);
        from = *end;
    }
    pieces.push(&input[from..]);

    let mut at = 0;
    for (index, piece) in pieces.iter().enumerate() {
        let found = if index == 0 {
            assert!(output.starts_with(piece), "the text before the first managed definition changed\ninput:  {input:?}\noutput: {output:?}");
            0
        } else {
            match output[at..].find(piece) {
                Some(offset) => at + offset,
                None => panic!("piece {index} {piece:?} of the input is missing or moved\ninput:  {input:?}\noutput: {output:?}"),
            }
        };
        let gap = &output[at..found];
        assert!(only_managed(gap), "the editor added {gap:?}, which is not only managed definitions\ninput:  {input:?}\noutput: {output:?}");
        at = found + piece.len();
    }
    let rest = &output[at..];
    assert!(only_managed(rest), "the editor appended {rest:?}, which is not only managed definitions\ninput:  {input:?}\noutput: {output:?}");
}

fuzz_target!(|data: &[u8]| {
    let input = common::split(data);
    let file = input.file.as_str();
    let settings = match input.desired {
        None => default_settings(),
        Some(mut u) => match Desired::arbitrary(&mut u) {
            Ok(desired) => build(desired, file),
            Err(_) => default_settings(),
        },
    };

    // The readers on their own.
    let oracle = logical_lines(file);
    let mut keys: Vec<String> = MANAGED_KEYS.iter().map(|k| k.to_string()).collect();
    if let Some(lines) = &oracle {
        for line in lines {
            if keys.len() >= 16 {
                break;
            }
            if !keys.contains(&line.key) {
                keys.push(line.key.clone());
            }
        }
    }
    let before: Vec<_> = keys.iter().map(|k| get_property(file, k)).collect();
    for value in &before {
        if let Err(error) = value {
            let _ = error.to_string();
        }
    }
    let _ = check_kafka_rules(file);

    let edit = match apply_listeners(file, &settings) {
        Ok(edit) => edit,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let output = edit.content.as_str();
    if edit.changed_keys.is_empty() {
        assert_eq!(output, file, "no key changed but the bytes did");
    }
    for key in &edit.changed_keys {
        assert!(is_managed(key), "changed an unmanaged key {key}");
    }

    // Every other key keeps its value; unchanged managed keys too.
    for (key, value) in keys.iter().zip(&before) {
        if edit.changed_keys.contains(key) {
            continue;
        }
        let value = value.as_ref().expect("apply_listeners accepted a file get_property refuses");
        assert_eq!(get_property(output, key).as_ref(), Ok(value), "key {key:?} changed its value\ninput:  {file:?}\noutput: {output:?}");
    }

    check_outside_survives(file, output, &edit.changed_keys);

    // An edit is validated against Kafka's rules; a file that needs no change is returned as it is
    // (nothing is written), even if it already broke them.
    let violations = if edit.changed_keys.is_empty() { Vec::new() } else { check_kafka_rules(output) };
    assert!(violations.is_empty(), "the accepted result breaks Kafka's rules: {violations:?}\noutput: {output:?}");

    let again = apply_listeners(output, &settings).expect("re-applying must succeed");
    assert_eq!(again.content, output, "applying twice differs from applying once");
    assert!(again.changed_keys.is_empty(), "re-applying changed {:?}", again.changed_keys);
});
