//! Golden cases for the hosts editor: real-looking files in, hand-written files out.
//! See `golden/hosts/README.md` for the layout of a case.

use std::fs;
use std::path::{Path, PathBuf};

use kreach_domain::hosts::{apply_block, read_block, strip_block, HostsEntry};

#[derive(serde::Deserialize)]
struct Case {
    cluster: String,
    entries: Vec<HostsEntry>,
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/hosts")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn check_case(name: &str) {
    let dir = cases_dir().join(name);
    let case: Case = toml::from_str(&read(&dir.join("case.toml")))
        .unwrap_or_else(|error| panic!("{name}/case.toml: {error}"));
    let input = read(&dir.join("input"));
    let expected = read(&dir.join("expected"));
    let expected_conflicts: Vec<String> = match fs::read_to_string(dir.join("conflicts")) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    };

    let edit = apply_block(&input, &case.cluster, &case.entries)
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    assert_eq!(
        edit.content, expected,
        "{name}: content differs from `expected`"
    );
    let conflicts: Vec<String> = edit.conflicts.iter().map(ToString::to_string).collect();
    assert_eq!(conflicts, expected_conflicts, "{name}: conflicts");

    // A second apply is a no-op, and nothing outside the block moved.
    let again = apply_block(&expected, &case.cluster, &case.entries).unwrap();
    assert_eq!(
        again.content, expected,
        "{name}: applying twice changed the file"
    );
    assert_eq!(
        strip_block(&expected, &case.cluster).unwrap(),
        strip_block(&input, &case.cluster).unwrap(),
        "{name}: the outside region changed"
    );
    let read_back = read_block(&expected, &case.cluster).unwrap();
    if case.entries.is_empty() {
        assert_eq!(read_back, None, "{name}: a block is left behind");
    } else {
        assert_eq!(read_back, Some(case.entries), "{name}: read_block");
    }
}

#[test]
fn every_case_directory_is_listed_below() {
    let mut found: Vec<String> = fs::read_dir(cases_dir())
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_dir())
        .map(|entry| entry.file_name().into_string().unwrap())
        .collect();
    found.sort();
    let mut listed = CASES.to_vec();
    listed.sort_unstable();
    assert_eq!(found, listed, "add new golden directories to CASES");
}

const CASES: &[&str] = &[
    "conflict",
    "crlf",
    "debian-plain",
    "empty-file",
    "ipv6-aliases-tabs-comments",
    "no-final-newline",
    "remove-block",
    "remove-block-no-final-newline",
    "replace-block",
    "second-cluster",
];

#[test]
fn second_cluster() {
    check_case("second-cluster");
}

#[test]
fn conflict() {
    check_case("conflict");
}

#[test]
fn crlf() {
    check_case("crlf");
}

#[test]
fn debian_plain() {
    check_case("debian-plain");
}

#[test]
fn empty_file() {
    check_case("empty-file");
}

#[test]
fn ipv6_aliases_tabs_comments() {
    check_case("ipv6-aliases-tabs-comments");
}

#[test]
fn no_final_newline() {
    check_case("no-final-newline");
}

#[test]
fn remove_block() {
    check_case("remove-block");
}

#[test]
fn remove_block_no_final_newline() {
    check_case("remove-block-no-final-newline");
}

#[test]
fn replace_block() {
    check_case("replace-block");
}

#[test]
fn conflict_carries_the_line_as_written() {
    let dir = cases_dir().join("conflict");
    let case: Case = toml::from_str(&read(&dir.join("case.toml"))).unwrap();
    let edit = apply_block(&read(&dir.join("input")), &case.cluster, &case.entries).unwrap();
    let last = &edit.conflicts[1];
    assert_eq!(last.line_number, 10);
    assert_eq!(last.name, "emr-worker-2");
    assert_eq!(last.their_ip, "10.9.9.8");
    assert_eq!(last.our_ip.to_string(), "10.0.1.25");
    assert_eq!(last.line, "10.9.9.8\tEMR-Worker-2 emr-worker-2.old");
}
