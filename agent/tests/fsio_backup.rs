//! Backups (`save_backup`, `latest_backup`) and removal of a crashed writer's temp files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kreach_agent::fsio::{
    atomic_write, clean_stale_temp_files, latest_backup, save_backup, WriteMethod,
};
use nix::fcntl::{Flock, FlockArg};

fn backups_in(state_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(state_dir.join("backups"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn latest_backup_is_the_one_saved_last() {
    let state = tempfile::tempdir().unwrap();
    let target = Path::new("/etc/kafka/server.properties");

    let first = save_backup(state.path(), target, b"v1", 10).unwrap();
    let second = save_backup(state.path(), target, b"v2", 10).unwrap();

    assert_ne!(first, second);
    assert!(first.starts_with(state.path().join("backups")));
    assert_eq!(
        latest_backup(state.path(), target).unwrap(),
        Some((second, b"v2".to_vec()))
    );
    assert_eq!(fs::read(&first).unwrap(), b"v1");
}

#[test]
fn no_backup_yet_is_none() {
    let state = tempfile::tempdir().unwrap();
    assert_eq!(
        latest_backup(&state.path().join("never-created"), Path::new("/etc/hosts")).unwrap(),
        None
    );
}

#[test]
fn pruning_keeps_the_newest_keep_backups() {
    let state = tempfile::tempdir().unwrap();
    let target = Path::new("/etc/hosts");
    let mut saved = Vec::new();
    for version in 0..6 {
        let content = format!("version {version}");
        saved.push(save_backup(state.path(), target, content.as_bytes(), 3).unwrap());
    }

    // Saves in the same millisecond still get distinct, ordered names.
    let remaining = backups_in(state.path());
    assert_eq!(remaining.len(), 3, "{remaining:?}");
    for (index, path) in saved.iter().enumerate() {
        assert_eq!(path.exists(), index >= 3, "{}", path.display());
    }
    assert_eq!(fs::read(&saved[3]).unwrap(), b"version 3");
    assert_eq!(
        latest_backup(state.path(), target).unwrap().unwrap().1,
        b"version 5"
    );
}

#[test]
fn keep_zero_still_keeps_the_backup_just_saved() {
    let state = tempfile::tempdir().unwrap();
    let target = Path::new("/etc/hosts");
    save_backup(state.path(), target, b"old", 0).unwrap();
    let kept = save_backup(state.path(), target, b"new", 0).unwrap();

    assert_eq!(backups_in(state.path()).len(), 1);
    assert!(kept.exists());
}

#[test]
fn backups_of_different_targets_do_not_mix_or_prune_each_other() {
    let state = tempfile::tempdir().unwrap();
    let targets = [
        Path::new("/etc/hosts"),
        Path::new("/etc/hosts.d/extra"),
        Path::new("/etc/hosts_d/extra"),
        Path::new("/opt/kafka/config/server.properties"),
    ];
    for target in targets {
        for version in 0..2 {
            let content = format!("{} v{version}", target.display());
            save_backup(state.path(), target, content.as_bytes(), 2).unwrap();
        }
    }

    assert_eq!(backups_in(state.path()).len(), 8);
    for target in targets {
        let (_, content) = latest_backup(state.path(), target).unwrap().unwrap();
        assert_eq!(content, format!("{} v1", target.display()).into_bytes());
    }
}

#[test]
fn backups_directory_is_private() {
    let state = tempfile::tempdir().unwrap();
    save_backup(
        state.path(),
        Path::new("/etc/kafka/server.properties"),
        b"secret",
        1,
    )
    .unwrap();

    let mode = fs::metadata(state.path().join("backups"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn stale_temp_files_are_removed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    // As a writer killed between creating and renaming its temp file leaves them.
    fs::write(dir.path().join(".hosts.kreach-tmp.4242.0"), "half").unwrap();
    fs::write(dir.path().join(".hosts.kreach-tmp.4242.1"), "").unwrap();
    // Not ours, or not for this target.
    let unrelated = [
        "hosts",
        ".hosts.swp",
        ".hosts.allow.kreach-tmp.1.0",
        "hosts.kreach-tmp.1.0",
    ];
    for name in &unrelated[1..] {
        fs::write(dir.path().join(name), "keep").unwrap();
    }

    assert_eq!(clean_stale_temp_files(&hosts).unwrap(), 2);

    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = unrelated.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(fs::read(&hosts).unwrap(), b"127.0.0.1 localhost\n");
    assert_eq!(clean_stale_temp_files(&hosts).unwrap(), 0);
}

#[test]
fn temp_file_of_a_live_writer_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let in_use = dir.path().join(".hosts.kreach-tmp.1.0");
    fs::write(&in_use, "being written").unwrap();
    // A live writer holds its temp file locked until it renames or removes it.
    let _writer = Flock::lock(fs::File::open(&in_use).unwrap(), FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .unwrap();

    assert_eq!(clean_stale_temp_files(&hosts).unwrap(), 0);
    assert!(in_use.exists());
}

#[test]
fn cleanup_in_a_missing_directory_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        clean_stale_temp_files(&dir.path().join("absent").join("hosts")).unwrap(),
        0
    );
}

#[test]
fn writing_after_a_crash_works_despite_leftover_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let pid = std::process::id();
    // A previous process with our PID crashed with these names taken.
    for counter in 0..3 {
        fs::write(
            dir.path()
                .join(format!(".hosts.kreach-tmp.{pid}.{counter}")),
            "",
        )
        .unwrap();
    }

    assert_eq!(
        atomic_write(&hosts, b"fresh").unwrap(),
        WriteMethod::Renamed
    );
    assert_eq!(fs::read(&hosts).unwrap(), b"fresh");
    assert_eq!(clean_stale_temp_files(&hosts).unwrap(), 3);
}
