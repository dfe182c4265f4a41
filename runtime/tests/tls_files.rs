//! `init_certs` / `issue_node_cert` / `load_tls_files` on a real filesystem: what an operator
//! running `kreachctl certs init` and then starting the coordinator and agents would see.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kreach_runtime::tls::{
    init_certs, issue_node_cert, load_tls_files, peer_identity, verify_signed_by, PeerIdentity,
    TlsError,
};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn init(dir: &Path, nodes: &[&str]) -> Vec<PathBuf> {
    init_certs(
        dir,
        &names(&["localhost", "127.0.0.1"]),
        &names(nodes),
        30,
        false,
    )
    .unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The DER of the (first) certificate in a PEM file.
fn cert_der(path: &Path) -> Vec<u8> {
    let pem = fs::read(path).unwrap();
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    assert_eq!(block.label, "CERTIFICATE", "{}", path.display());
    block.contents
}

#[test]
fn init_writes_every_file_with_safe_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let written = init(&dir, &["a", "b"]);

    let mut expected: Vec<PathBuf> = [
        "ca.pem",
        "ca.key",
        "coordinator.pem",
        "coordinator.key",
        "admin.pem",
        "admin.key",
        "nodes/a.pem",
        "nodes/a.key",
        "nodes/b.pem",
        "nodes/b.key",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();
    expected.sort();
    let mut got = written.clone();
    got.sort();
    assert_eq!(got, expected);

    for path in &written {
        let want = if path.extension().unwrap() == "key" {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode(path), want, "{}", path.display());
    }
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("nodes")), 0o700);
    // No temporary files are left behind.
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .chain(fs::read_dir(dir.join("nodes")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn every_certificate_verifies_against_the_ca_and_names_its_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir, &["a", "broker-2.example.com"]);
    let ca_pem = fs::read(dir.join("ca.pem")).unwrap();

    let expected = [
        ("coordinator.pem", PeerIdentity::Coordinator),
        ("admin.pem", PeerIdentity::Admin),
        ("nodes/a.pem", PeerIdentity::Node("a".to_string())),
        (
            "nodes/broker-2.example.com.pem",
            PeerIdentity::Node("broker-2.example.com".to_string()),
        ),
    ];
    for (file, identity) in expected {
        let der = cert_der(&dir.join(file));
        verify_signed_by(&der, &ca_pem).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(peer_identity(&der).unwrap(), identity, "{file}");
    }
    // The CA itself is nobody.
    let err = peer_identity(&cert_der(&dir.join("ca.pem"))).unwrap_err();
    assert!(matches!(err, TlsError::NoIdentity { .. }), "{err}");
}

#[test]
fn a_certificate_from_another_ca_is_not_signed_by_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    init(&ours, &["a"]);
    init(&theirs, &["a"]);
    let our_ca = fs::read(ours.join("ca.pem")).unwrap();

    // Same names, same identity, but another CA: only the signature tells them apart.
    let foreign = cert_der(&theirs.join("nodes/a.pem"));
    assert_eq!(
        peer_identity(&foreign).unwrap(),
        PeerIdentity::Node("a".to_string())
    );
    let err = verify_signed_by(&foreign, &our_ca).unwrap_err();
    assert!(matches!(err, TlsError::NotSignedBy { .. }), "{err}");
    assert!(err.to_string().contains("signature"), "{err}");

    // A leaf is not a CA.
    let leaf_pem = fs::read(ours.join("admin.pem")).unwrap();
    let err = verify_signed_by(&cert_der(&ours.join("nodes/a.pem")), &leaf_pem).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
}

#[test]
fn init_refuses_to_overwrite_and_force_replaces() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir, &["a"]);
    let ca_before = fs::read(dir.join("ca.pem")).unwrap();
    let key_before = fs::read(dir.join("nodes/a.key")).unwrap();

    let err = init_certs(dir, &names(&["localhost"]), &names(&["a"]), 30, false).unwrap_err();
    match &err {
        TlsError::AlreadyExists { paths } => {
            assert!(paths.contains(&dir.join("ca.key")), "{paths:?}");
            assert!(paths.contains(&dir.join("nodes/a.key")), "{paths:?}");
        }
        other => panic!("expected AlreadyExists, got {other}"),
    }
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), ca_before);

    init_certs(dir, &names(&["localhost"]), &names(&["a"]), 30, true).unwrap();
    assert_ne!(fs::read(dir.join("ca.pem")).unwrap(), ca_before);
    assert_ne!(fs::read(dir.join("nodes/a.key")).unwrap(), key_before);
    assert_eq!(mode(&dir.join("nodes/a.key")), 0o600);
}

#[test]
fn one_existing_file_stops_init_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::create_dir(dir.join("nodes")).unwrap();
    fs::write(dir.join("nodes/b.pem"), "precious").unwrap();
    fs::write(dir.join("README"), "unrelated files are fine").unwrap();

    let err = init_certs(dir, &names(&["localhost"]), &names(&["a", "b"]), 30, false).unwrap_err();
    assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("nodes/b.pem"), "{err}");
    assert!(!dir.join("ca.key").exists());
    assert!(!dir.join("nodes/a.key").exists());
    assert_eq!(
        fs::read_to_string(dir.join("nodes/b.pem")).unwrap(),
        "precious"
    );
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let localhost = names(&["localhost"]);

    let err = init_certs(&dir, &localhost, &names(&["a", "b/c"]), 30, false).unwrap_err();
    assert!(
        matches!(err, TlsError::InvalidNodeName { ref node } if node == "b/c"),
        "{err}"
    );
    let err = init_certs(&dir, &localhost, &names(&["a", "a"]), 30, false).unwrap_err();
    assert!(matches!(err, TlsError::DuplicateNode { .. }), "{err}");
    let err = init_certs(&dir, &[], &names(&["a"]), 30, false).unwrap_err();
    assert!(matches!(err, TlsError::NoCoordinatorNames), "{err}");
    let err = init_certs(&dir, &names(&["not a name"]), &[], 30, false).unwrap_err();
    assert!(
        matches!(err, TlsError::InvalidCoordinatorName { .. }),
        "{err}"
    );
    let err = init_certs(&dir, &localhost, &[], 0, false).unwrap_err();
    assert!(
        matches!(err, TlsError::InvalidValidity { days: 0 }),
        "{err}"
    );
    assert!(!dir.exists());
}

#[test]
fn a_node_added_later_gets_a_certificate_from_the_same_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir, &["a"]);
    let ca_pem = fs::read(dir.join("ca.pem")).unwrap();

    let written = issue_node_cert(dir, "late-node", Some(10), false).unwrap();
    assert_eq!(
        written,
        vec![
            dir.join("nodes/late-node.key"),
            dir.join("nodes/late-node.pem")
        ]
    );
    assert_eq!(mode(&written[0]), 0o600);
    assert_eq!(mode(&written[1]), 0o644);
    let der = cert_der(&written[1]);
    verify_signed_by(&der, &ca_pem).unwrap();
    assert_eq!(
        peer_identity(&der).unwrap(),
        PeerIdentity::Node("late-node".to_string())
    );
    load_tls_files(&dir.join("ca.pem"), &written[1], &written[0]).unwrap();

    let err = issue_node_cert(dir, "late-node", Some(10), false).unwrap_err();
    assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err}");
    issue_node_cert(dir, "late-node", Some(10), true).unwrap();

    let err = issue_node_cert(dir, "bad name", Some(10), false).unwrap_err();
    assert!(matches!(err, TlsError::InvalidNodeName { .. }), "{err}");
    // The CA was made for 30 days; a leaf must not outlive it.
    let err = issue_node_cert(dir, "c", Some(365), false).unwrap_err();
    assert!(matches!(err, TlsError::ValidityBeyondCa { .. }), "{err}");
    assert!(!dir.join("nodes/c.key").exists());

    // Without --days the leaf gets the default, cut to the CA's own end (a CA made with the same
    // default, seconds earlier, always ends first).
    let written = issue_node_cert(dir, "d", None, false).unwrap();
    let not_after = |path: &std::path::Path| {
        let der = cert_der(path);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.validity().not_after.timestamp()
    };
    assert!(not_after(&written[1]) <= not_after(&dir.join("ca.pem")));
    assert!(not_after(&written[1]) > not_after(&dir.join("ca.pem")) - 60);
}

#[test]
fn issuing_without_a_ca_names_the_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let err = issue_node_cert(tmp.path(), "a", Some(10), false).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
}

#[test]
fn issuing_with_the_wrong_ca_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    init(&ours, &[]);
    init(&theirs, &[]);
    fs::copy(theirs.join("ca.key"), ours.join("ca.key")).unwrap();
    let err = issue_node_cert(&ours, "a", Some(10), false).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
}

#[test]
fn load_tls_files_names_the_file_that_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ours");
    let other = tmp.path().join("other");
    init(&dir, &["a", "b"]);
    init(&other, &["a"]);
    let ca = dir.join("ca.pem");

    let files = load_tls_files(&ca, &dir.join("nodes/a.pem"), &dir.join("nodes/a.key")).unwrap();
    assert_eq!(files.ca_pem, fs::read(&ca).unwrap());
    assert_eq!(files.key_pem, fs::read(dir.join("nodes/a.key")).unwrap());
    load_tls_files(
        &ca,
        &dir.join("coordinator.pem"),
        &dir.join("coordinator.key"),
    )
    .unwrap();

    let missing = dir.join("nodes/zz.pem");
    let err = load_tls_files(&ca, &missing, &dir.join("nodes/a.key")).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nodes/zz.pem"), "{err}");

    let err = load_tls_files(&ca, &dir.join("nodes/a.pem"), &dir.join("nodes/b.key")).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("nodes/b.key"), "{err}");

    let err = load_tls_files(&ca, &dir.join("nodes/a.key"), &dir.join("nodes/a.key")).unwrap_err();
    assert!(matches!(err, TlsError::NoPem { .. }), "{err}");

    let err = load_tls_files(&ca, &dir.join("nodes/a.pem"), &dir.join("nodes/a.pem")).unwrap_err();
    assert!(matches!(err, TlsError::NoPem { .. }), "{err}");

    let err =
        load_tls_files(&ca, &other.join("nodes/a.pem"), &other.join("nodes/a.key")).unwrap_err();
    assert!(matches!(err, TlsError::NotSignedBy { .. }), "{err}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
}
