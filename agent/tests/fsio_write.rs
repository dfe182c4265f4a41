//! `atomic_write` and `read_file` on an ordinary file system, as any user.
//! Root-only cases (owner, bind mounts, read-only mounts) are in `fsio_mounts.rs`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use kreach_agent::fsio::{atomic_write, read_file, FsError, WriteMethod, MAX_FILE_SIZE};
use proptest::prelude::*;

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Everything in `dir` except the names given: what a failed or finished write left behind.
fn leftovers(dir: &Path, expected: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !expected.contains(&name.as_str()))
        .collect()
}

#[test]
fn write_replaces_content_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    fs::write(&hosts, "127.0.0.1 localhost\n10.0.0.1 old-broker\n").unwrap();

    let method = atomic_write(&hosts, b"127.0.0.1 localhost\n").unwrap();

    assert_eq!(method, WriteMethod::Renamed);
    assert_eq!(fs::read(&hosts).unwrap(), b"127.0.0.1 localhost\n");
    assert_eq!(leftovers(dir.path(), &["hosts"]), Vec::<String>::new());
}

#[test]
fn new_file_gets_0644_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.properties");

    atomic_write(&path, b"broker.id=1\n").unwrap();

    assert_eq!(fs::read(&path).unwrap(), b"broker.id=1\n");
    assert_eq!(mode_of(&path), 0o644);
    assert_eq!(
        leftovers(dir.path(), &["server.properties"]),
        Vec::<String>::new()
    );
}

#[test]
fn existing_mode_is_preserved() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o600, 0o640, 0o444] {
        let path = dir.path().join(format!("file-{mode:o}"));
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();

        atomic_write(&path, b"new").unwrap();

        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode_of(&path), mode, "mode of {}", path.display());
    }
}

#[test]
fn empty_content_empties_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts");
    fs::write(&path, "something").unwrap();

    atomic_write(&path, b"").unwrap();

    assert_eq!(read_file(&path).unwrap(), Some(Vec::new()));
}

#[test]
fn missing_directory_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("hosts");

    let error = atomic_write(&path, b"x").unwrap_err();

    let message = error.to_string();
    assert!(matches!(error, FsError::WriteTemp { .. }), "{error:?}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("does the directory"), "{message}");
    assert!(!path.parent().unwrap().exists());
}

#[test]
fn symlink_target_is_followed_and_the_link_stays_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("real");
    let link_dir = dir.path().join("links");
    fs::create_dir_all(&real_dir).unwrap();
    fs::create_dir_all(&link_dir).unwrap();
    let real = real_dir.join("resolv.conf");
    let link = link_dir.join("resolv.conf");
    fs::write(&real, "nameserver 10.0.0.1\n").unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
    symlink(&real, &link).unwrap();

    assert_eq!(
        atomic_write(&link, b"nameserver 127.0.0.1\n").unwrap(),
        WriteMethod::Renamed
    );

    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), real);
    assert_eq!(fs::read(&real).unwrap(), b"nameserver 127.0.0.1\n");
    assert_eq!(mode_of(&real), 0o640);
    assert_eq!(leftovers(&real_dir, &["resolv.conf"]), Vec::<String>::new());
    assert_eq!(leftovers(&link_dir, &["resolv.conf"]), Vec::<String>::new());
}

#[test]
fn relative_symlink_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("real-hosts"), "old").unwrap();
    symlink("real-hosts", dir.path().join("hosts")).unwrap();

    atomic_write(&dir.path().join("hosts"), b"new").unwrap();

    assert_eq!(fs::read(dir.path().join("real-hosts")).unwrap(), b"new");
    assert!(fs::symlink_metadata(dir.path().join("hosts"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn dangling_symlink_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("hosts");
    let missing = dir.path().join("missing");
    symlink(&missing, &link).unwrap();

    let error = atomic_write(&link, b"x").unwrap_err();

    assert!(
        matches!(error, FsError::DanglingSymlink { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&link.display().to_string()));
    assert!(error.to_string().contains(&missing.display().to_string()));
    assert!(!missing.exists());
    assert_eq!(leftovers(dir.path(), &["hosts"]), Vec::<String>::new());
}

#[test]
fn directory_target_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("hosts");
    fs::create_dir(&target).unwrap();

    let error = atomic_write(&target, b"x").unwrap_err();

    assert!(matches!(error, FsError::InvalidTarget { .. }), "{error:?}");
    assert!(error.to_string().contains("a directory"), "{error}");
    assert!(target.is_dir());
    assert_eq!(leftovers(dir.path(), &["hosts"]), Vec::<String>::new());
}

#[test]
fn read_file_of_a_missing_file_is_none() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_file(&dir.path().join("absent")).unwrap(), None);
}

#[test]
fn read_file_refuses_a_huge_file_naming_path_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts");
    let size = MAX_FILE_SIZE + 1;
    // Sparse: costs no disk space.
    fs::File::create(&path).unwrap().set_len(size).unwrap();

    let error = read_file(&path).unwrap_err();

    assert!(
        matches!(error, FsError::TooLarge { size: s, .. } if s == size),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&size.to_string()), "{message}");
}

#[test]
fn read_file_accepts_exactly_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    fs::File::create(&path)
        .unwrap()
        .set_len(MAX_FILE_SIZE)
        .unwrap();

    assert_eq!(
        read_file(&path).unwrap().unwrap().len() as u64,
        MAX_FILE_SIZE
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn whatever_was_written_is_read_back(
        old in proptest::collection::vec(any::<u8>(), 0..2048),
        new in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        atomic_write(&path, &old).unwrap();
        atomic_write(&path, &new).unwrap();
        prop_assert_eq!(read_file(&path).unwrap(), Some(new));
        prop_assert_eq!(leftovers(dir.path(), &["hosts"]), Vec::<String>::new());
    }
}
