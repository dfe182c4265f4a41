//! `fake_broker PROPERTIES_FILE`: a stand-in for a Kafka broker that opens exactly the TCP
//! listeners its `server.properties` names, so that the agent's restart and listener checks have
//! something real to act on.
//!
//! Reads the last `listeners` line (entries `NAME://host:port`, comma-separated; an empty host means
//! every address, as in Kafka), binds them all, then accepts and closes connections until killed.
//! Exits 1, naming the listener, when a bind fails (port taken, address not local) — the way Kafka
//! dies on a bad listener, which is what the e2e-systemd tier's rollback test needs. It speaks no
//! Kafka protocol.
//!
//! Deliberately a small subset of the Java properties format: no line continuations or escapes.

use std::net::TcpListener;
use std::process::ExitCode;
use std::thread;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: fake_broker PROPERTIES_FILE");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("fake_broker: cannot read {path}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Some(value) = last_value(&text, "listeners") else {
        eprintln!("fake_broker: {path} has no listeners line");
        return ExitCode::FAILURE;
    };
    let mut bound = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, address) = match parse_listener(entry) {
            Ok(parsed) => parsed,
            Err(reason) => {
                eprintln!("fake_broker: {path}: listener `{entry}` is malformed: {reason}");
                return ExitCode::FAILURE;
            }
        };
        match TcpListener::bind(&address) {
            Ok(listener) => {
                println!("fake_broker: listener {name} listening on {address}");
                bound.push(listener);
            }
            Err(error) => {
                eprintln!("fake_broker: cannot bind listener {name} on {address}: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    if bound.is_empty() {
        eprintln!("fake_broker: {path}: listeners is empty");
        return ExitCode::FAILURE;
    }
    let acceptors: Vec<_> = bound
        .into_iter()
        .map(|listener| {
            thread::spawn(move || {
                // Accept and drop: a connect that completes is all the agent's probe needs.
                for stream in listener.incoming() {
                    drop(stream);
                }
            })
        })
        .collect();
    for acceptor in acceptors {
        let _ = acceptor.join();
    }
    ExitCode::SUCCESS
}

/// The value of the last `key=value` (or `key: value`) line for `key`, comments skipped.
fn last_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .map(str::trim_start)
        .filter(|line| !line.starts_with('#') && !line.starts_with('!'))
        .filter_map(|line| {
            let split = line.find(['=', ':'])?;
            (line[..split].trim() == key).then(|| line[split + 1..].trim())
        })
        .next_back()
}

/// `NAME://host:port` → (NAME, "host:port"), with an empty host meaning 0.0.0.0.
fn parse_listener(entry: &str) -> Result<(&str, String), String> {
    let (name, rest) = entry.split_once("://").ok_or("expected NAME://host:port")?;
    let (host, port) = rest.rsplit_once(':').ok_or("no :port")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port `{port}`"))?;
    let address = match host {
        "" => format!("0.0.0.0:{port}"),
        host if host.contains(':') && !host.starts_with('[') => format!("[{host}]:{port}"),
        host => format!("{host}:{port}"),
    };
    Ok((name, address))
}
