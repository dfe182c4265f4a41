//! Properties of the hosts editor over generated files: whatever surrounds the block (comments,
//! blank lines, tabs, CRLF or LF, IPv6, non-ASCII, no final newline, stray `\r`) comes back byte for
//! byte, and applying is idempotent.

use std::net::IpAddr;

use kreach_domain::hosts::{apply_block, read_block, retain_blocks, strip_block, HostsEntry};
use proptest::prelude::*;

fn is_marker_like(text: &str) -> bool {
    let text = text.trim_start();
    text.starts_with("# BEGIN kreach") || text.starts_with("# END kreach")
}

fn hostname() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,4})?(\\.[a-z][a-z0-9-]{0,6}[a-z0-9]){0,3}"
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|bits| IpAddr::from(bits.to_be_bytes())),
        any::<u128>().prop_map(|bits| IpAddr::from(bits.to_be_bytes())),
    ]
}

fn hosts_line() -> impl Strategy<Value = String> {
    let separator = "[ \t]{1,3}";
    (
        ip(),
        separator,
        prop::collection::vec((hostname(), separator), 1..4),
        "[ \t]{0,2}",
        prop::option::of("# [a-zA-Z äé東京]{0,12}"),
    )
        .prop_map(|(ip, after_ip, names, trailing, comment)| {
            let mut line = format!("{ip}{after_ip}");
            for (index, (name, gap)) in names.iter().enumerate() {
                if index > 0 {
                    line.push_str(gap);
                }
                line.push_str(name);
            }
            line.push_str(&trailing);
            if let Some(comment) = comment {
                line.push_str(&comment);
            }
            line
        })
}

/// The text of one line, never containing `\n` and never one of our markers.
fn line_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "#[ \t]?[a-zA-Z0-9 .:_\t-]{0,30}",
        1 => "# [äöüßé日本語🦀 a-z]{0,20}",
        2 => Just(String::new()),
        1 => "[ \t]{1,4}",
        4 => hosts_line(),
        // Any text but NUL: a NUL byte makes the file binary, which the editor refuses (see
        // `a_nul_byte_anywhere_is_refused`).
        1 => "[^\n\x00]{0,30}",
        1 => Just("# BEGIN kreachy (another tool's block)".to_owned()),
        1 => Just("#END kreach".to_owned()),
    ]
    .prop_filter("our marker lines are not surrounding content", |text| {
        !is_marker_like(text)
    })
}

/// A whole hosts file without a kreach block.
fn surrounding() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((line_text(), prop::bool::weighted(0.2)), 0..12),
        prop::bool::ANY,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(lines, has_final_newline, bare_cr_at_end)| {
            let mut text = String::new();
            let count = lines.len();
            for (index, (line, crlf)) in lines.into_iter().enumerate() {
                text.push_str(&line);
                if index + 1 < count || has_final_newline {
                    text.push_str(if crlf { "\r\n" } else { "\n" });
                }
            }
            if bare_cr_at_end {
                text.push('\r');
            }
            text
        })
}

fn entries() -> impl Strategy<Value = Vec<HostsEntry>> {
    prop::collection::vec(
        (ip(), prop::collection::vec(hostname(), 1..4))
            .prop_map(|(ip, names)| HostsEntry { ip, names }),
        1..6,
    )
}

fn cluster() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,15}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A NUL byte anywhere makes the file binary: the editor refuses it, naming the line, instead
    /// of rewriting a corrupted /etc/hosts.
    #[test]
    fn a_nul_byte_anywhere_is_refused(
        original in surrounding(), cluster in cluster(), entries in entries(), at in any::<prop::sample::Index>()
    ) {
        let mut corrupted = original.clone();
        let mut offset = at.index(corrupted.len() + 1);
        while !corrupted.is_char_boundary(offset) {
            offset -= 1;
        }
        corrupted.insert(offset, '\0');
        let line = corrupted[..offset].matches('\n').count() + 1;
        let error = apply_block(&corrupted, &cluster, &entries).unwrap_err();
        prop_assert!(
            error.to_string().starts_with(&format!("line {line} contains a NUL byte")),
            "{}", error
        );
    }

    #[test]
    fn apply_strip_and_remove_give_back_the_original(
        original in surrounding(), cluster in cluster(), entries in entries()
    ) {
        prop_assert_eq!(read_block(&original, &cluster).unwrap(), None);
        prop_assert_eq!(strip_block(&original, &cluster).unwrap(), original.clone());
        prop_assert_eq!(apply_block(&original, &cluster, &[]).unwrap().content, original.clone());

        let applied = apply_block(&original, &cluster, &entries).unwrap().content;
        prop_assert_eq!(strip_block(&applied, &cluster).unwrap(), original.clone());
        prop_assert_eq!(read_block(&applied, &cluster).unwrap(), Some(entries.clone()));
        prop_assert_eq!(
            apply_block(&applied, &cluster, &entries).unwrap().content,
            applied.clone(),
            "applying twice changed the file"
        );
        prop_assert_eq!(apply_block(&applied, &cluster, &[]).unwrap().content, original);
    }

    #[test]
    fn replacing_the_block_keeps_everything_around_it(
        original in surrounding(),
        cluster in cluster(),
        first in entries(),
        second in entries(),
    ) {
        let applied = apply_block(&original, &cluster, &first).unwrap().content;
        let replaced = apply_block(&applied, &cluster, &second).unwrap().content;
        prop_assert_eq!(strip_block(&replaced, &cluster).unwrap(), original.clone());
        prop_assert_eq!(read_block(&replaced, &cluster).unwrap(), Some(second.clone()));
        // The block stays where it was: same prefix as the first apply.
        let block_start = applied.find("# BEGIN kreach").unwrap();
        prop_assert_eq!(&replaced[..block_start], &applied[..block_start]);
        // Going back gives the first result exactly.
        prop_assert_eq!(apply_block(&replaced, &cluster, &first).unwrap().content, applied);
        prop_assert_eq!(apply_block(&replaced, &cluster, &[]).unwrap().content, original);
    }

    /// A host that uses two clusters has a block for each: writing one never touches the other,
    /// and removing one gives back the file as it was before that one was added.
    #[test]
    fn a_second_clusters_block_leaves_the_first_and_everything_around_alone(
        original in surrounding(),
        first in (cluster(), entries()),
        second in (cluster(), entries()),
    ) {
        prop_assume!(first.0 != second.0);
        let one = apply_block(&original, &first.0, &first.1).unwrap().content;
        let both = apply_block(&one, &second.0, &second.1).unwrap().content;
        prop_assert_eq!(read_block(&both, &first.0).unwrap(), Some(first.1.clone()));
        prop_assert_eq!(read_block(&both, &second.0).unwrap(), Some(second.1.clone()));
        prop_assert_eq!(strip_block(&both, &second.0).unwrap(), one.clone());
        prop_assert_eq!(retain_blocks(&both, &[first.0.as_str()]).unwrap(), one.clone());
        prop_assert_eq!(
            apply_block(&both, &first.0, &first.1).unwrap().content,
            both.clone(),
            "writing the first cluster's block again changed the file"
        );
        prop_assert_eq!(retain_blocks(&both, &[]).unwrap(), original);
    }

    #[test]
    fn the_block_uses_the_files_line_ending(original in surrounding(), entries in entries()) {
        let applied = apply_block(&original, "c", &entries).unwrap().content;
        let block = &applied[applied.find("# BEGIN kreach").unwrap()..];
        let first_ending = original
            .find('\n')
            .map(|newline| if original[..newline].ends_with('\r') { "\r\n" } else { "\n" });
        match first_ending {
            Some("\r\n") => prop_assert!(!block.replace("\r\n", "").contains('\n'), "{:?}", block),
            Some(_) => prop_assert!(!block.contains('\r'), "{:?}", block),
            // No line ending in the file: LF, except that a trailing bare `\r` forces CRLF.
            None if original.ends_with('\r') => {
                prop_assert!(!block.replace("\r\n", "").contains('\n'), "{:?}", block)
            }
            None => prop_assert!(!block.contains('\r'), "{:?}", block),
        }
    }

    #[test]
    fn conflicts_are_exactly_the_lines_that_shadow_our_names(
        surrounding in surrounding(),
        entries in entries(),
        shadowed in prop::collection::vec((any::<prop::sample::Index>(), ip(), any::<bool>()), 0..4),
    ) {
        // Append lines that map some of our names elsewhere (in upper case half the time), so the
        // property is not vacuous; random surroundings rarely mention our names on their own.
        let mut original = surrounding;
        if !original.is_empty() && !original.ends_with('\n') {
            original.push('\n');
        }
        let mut expected_lines = Vec::new();
        for (pick, their_ip, upper) in &shadowed {
            let entry = pick.get(&entries);
            let name = &entry.names[0];
            if entries.iter().any(|e| e.ip == *their_ip && e.names.contains(name)) {
                continue;
            }
            let written = if *upper { name.to_ascii_uppercase() } else { name.clone() };
            original.push_str(&format!("{their_ip}\t{written} # stale\n"));
            expected_lines.push((original.matches('\n').count(), name.clone()));
        }

        let edit = apply_block(&original, "c", &entries).unwrap();
        for (line_number, name) in &expected_lines {
            prop_assert!(
                edit.conflicts.iter().any(|c| c.line_number == *line_number && c.name == *name),
                "no conflict for {} on line {}: {:?}", name, line_number, edit.conflicts
            );
        }
        let lines: Vec<&str> = original.split('\n').collect();
        for conflict in &edit.conflicts {
            let line = lines[conflict.line_number - 1];
            prop_assert_eq!(line.trim_end_matches('\r'), conflict.line.as_str());
            prop_assert!(
                line.to_ascii_lowercase().contains(&conflict.name.to_ascii_lowercase()),
                "{:?} does not mention {}", line, conflict.name
            );
            prop_assert!(entries
                .iter()
                .any(|e| e.ip == conflict.our_ip && e.names.contains(&conflict.name)));
            prop_assert!(!entries.iter().any(|e| e.names.contains(&conflict.name)
                && conflict.their_ip.parse::<IpAddr>() == Ok(e.ip)));
        }
    }
}
