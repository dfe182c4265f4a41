//! Fuzzes the hosts-file editor (`kreach_domain::hosts`): whatever the file and the desired entries,
//! nothing panics; and whenever `apply_block` accepts the file,
//! - every byte outside the cluster's block survives (other clusters' blocks included):
//!   `strip_block(apply(x)) == strip_block(x)`, and for a file without its block
//!   `strip_block(apply(x)) == x`;
//! - the cluster's block reads back as exactly the desired entries (`read_block`);
//! - applying again changes nothing, and applying no entries removes the block.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::net::IpAddr;

use arbitrary::Arbitrary;
use kreach_domain::hosts::{apply_block, read_block, strip_block, HostsEntry, HostsError};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Cluster {
    Orders,
    Prod,
    Emr,
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum Ip {
    Private(u8, u8),
    Loopback,
    V4(u32),
    V6(u128),
    V6Short(u16),
    /// The address of the n-th token of the file that parses as one, so entries can agree or
    /// conflict with the operator's lines.
    FromFile(u8),
}

#[derive(Debug, Arbitrary)]
enum Name {
    Broker(u8),
    BrokerLong(u8),
    Upper(u8),
    Localhost,
    /// The n-th token of the file (often invalid, exercising validation; often a conflict).
    FromFile(u8),
    Any(String),
}

#[derive(Debug, Arbitrary)]
struct Entry {
    ip: Ip,
    names: Vec<Name>,
}

#[derive(Debug, Arbitrary)]
struct Desired {
    cluster: Cluster,
    entries: Vec<Entry>,
}

fn default_entries() -> (String, Vec<HostsEntry>) {
    let entry = |ip: &str, names: &[&str]| HostsEntry {
        ip: ip.parse().unwrap(),
        names: names.iter().map(|s| s.to_string()).collect(),
    };
    (
        "orders".into(),
        vec![
            entry("10.0.1.24", &["b-1.orders.kafka.internal", "b-1"]),
            entry("10.0.1.25", &["b-2.orders.kafka.internal", "b-2"]),
            entry("fd00::26", &["b-3.orders.kafka.internal", "b-3"]),
        ],
    )
}

fn build(desired: Desired, file: &str) -> (String, Vec<HostsEntry>) {
    let tokens = common::tokens(file);
    let file_ips: Vec<IpAddr> = tokens
        .iter()
        .filter_map(|t| t.split('%').next()?.parse().ok())
        .collect();
    let cluster = match desired.cluster {
        Cluster::Orders => "orders".to_string(),
        Cluster::Prod => "prod".to_string(),
        Cluster::Emr => "emr-48742".to_string(),
        Cluster::Any(s) => s,
    };
    let entries = desired
        .entries
        .into_iter()
        .take(16)
        .map(|entry| {
            let ip = match entry.ip {
                Ip::Private(a, b) => IpAddr::from([10, 0, a, b]),
                Ip::Loopback => IpAddr::from([127, 0, 0, 1]),
                Ip::V4(bits) => IpAddr::from(bits.to_be_bytes()),
                Ip::V6(bits) => IpAddr::from(bits.to_be_bytes()),
                Ip::V6Short(n) => format!("fd00::{n:x}").parse().unwrap(),
                Ip::FromFile(n) if !file_ips.is_empty() => file_ips[n as usize % file_ips.len()],
                Ip::FromFile(n) => IpAddr::from([192, 168, 0, n]),
            };
            let names = entry
                .names
                .into_iter()
                .take(8)
                .map(|name| match name {
                    Name::Broker(n) => format!("b-{n}"),
                    Name::BrokerLong(n) => format!("b-{n}.orders.kafka.internal"),
                    Name::Upper(n) => format!("B-{n}.Orders"),
                    Name::Localhost => "localhost".to_string(),
                    Name::FromFile(n) if !tokens.is_empty() => {
                        tokens[n as usize % tokens.len()].to_string()
                    }
                    Name::FromFile(n) => format!("host{n}"),
                    Name::Any(s) => s,
                })
                .collect();
            HostsEntry { ip, names }
        })
        .collect();
    (cluster, entries)
}

/// Conflicts without their line numbers, which move when the block changes size.
fn conflict_keys(edit: &kreach_domain::hosts::HostsEdit) -> Vec<(String, String, IpAddr, String)> {
    edit.conflicts
        .iter()
        .map(|c| (c.name.clone(), c.their_ip.clone(), c.our_ip, c.line.clone()))
        .collect()
}

fn is_layout_error(error: &HostsError) -> bool {
    matches!(
        error,
        HostsError::UnterminatedBlock { .. }
            | HostsError::NestedBlock { .. }
            | HostsError::DuplicateBlock { .. }
            | HostsError::EndWithoutBegin { .. }
            | HostsError::MismatchedEnd { .. }
    )
}

fuzz_target!(|data: &[u8]| {
    let input = common::split(data);
    let file = input.file.as_str();
    let (cluster, entries) = match input.desired {
        None => default_entries(),
        Some(mut u) => match Desired::arbitrary(&mut u) {
            Ok(desired) => build(desired, file),
            Err(_) => default_entries(),
        },
    };

    // Readers on their own: no panic, and they agree on whether the block layout is valid.
    let stripped = strip_block(file, &cluster);
    let read = read_block(file, &cluster);
    if let Err(error) = &stripped {
        let _ = error.to_string();
        assert!(is_layout_error(error), "strip_block: unexpected error {error:?}");
        assert!(read.is_err(), "strip_block refused the file but read_block accepted it: {error}");
    }
    if let Ok(Some(_)) | Ok(None) = &read {
        assert!(stripped.is_ok(), "read_block accepted the file but strip_block refused it");
    }
    if let Ok(stripped) = &stripped {
        // Stripping is final: no block is left to strip.
        assert_eq!(strip_block(stripped, &cluster).as_ref(), Ok(stripped));
        assert_eq!(read_block(stripped, &cluster), Ok(None));
    }

    let edit = match apply_block(file, &cluster, &entries) {
        Ok(edit) => edit,
        Err(error) => {
            let _ = error.to_string();
            if is_layout_error(&error) {
                assert!(stripped.is_err(), "apply_block refused a block layout strip_block accepts: {error}");
            }
            return;
        }
    };
    let stripped = stripped.expect("apply_block accepted the file, so strip_block must too");
    for conflict in &edit.conflicts {
        let _ = conflict.to_string();
    }

    // Every byte outside the managed region survives.
    let after = strip_block(&edit.content, &cluster).expect("the edited file must have a valid block layout");
    assert_eq!(after, stripped, "bytes outside the block changed\nbefore: {file:?}\nafter:  {:?}", edit.content);
    if let Ok(None) = read {
        assert_eq!(after, file, "a file without a block did not come back byte for byte");
    }

    // The block reads back as the desired entries (no block for no entries).
    let expected = if entries.is_empty() { None } else { Some(entries.clone()) };
    assert_eq!(read_block(&edit.content, &cluster), Ok(expected), "the block does not read back\nafter: {:?}", edit.content);

    // Idempotent.
    let again = apply_block(&edit.content, &cluster, &entries).expect("re-applying must succeed");
    assert_eq!(again.content, edit.content, "applying twice differs from applying once");
    assert_eq!(conflict_keys(&again), conflict_keys(&edit), "the conflicts changed on re-apply");

    // Applying no entries removes exactly the block.
    let removed = apply_block(&edit.content, &cluster, &[]).expect("removal must succeed");
    assert_eq!(removed.content, stripped, "removing the block did not restore the outside bytes");
});
