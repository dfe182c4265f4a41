//! `atomic_write` where root is needed: preserving another user's ownership, bind-mounted
//! targets (the container / `ip netns exec` case) and read-only mounts. Not root fails each test,
//! unless the root tier is opted out (`KREACH_SKIP=root`), which it says where it is seen.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kreach_agent::fsio::{atomic_write, read_file, FsError, WriteMethod};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Whether `test` runs: as root; not root fails it unless the root tier is opted out.
fn is_root(test: &str) -> bool {
    kreach_test_parts::require_root(kreach_test_parts::Tier::Root, test)
}

/// A mount that is always undone, also when an assertion fails half-way.
struct Mounted(PathBuf);

impl Mounted {
    fn bind(source: &Path, target: &Path) -> Mounted {
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("bind {} on {}: {e}", source.display(), target.display()));
        Mounted(target.to_path_buf())
    }

    fn tmpfs(target: &Path) -> Mounted {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap_or_else(|e| panic!("tmpfs on {}: {e}", target.display()));
        Mounted(target.to_path_buf())
    }

    fn remount_read_only(&self, bind: bool) {
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if bind {
            flags |= MsFlags::MS_BIND;
        }
        mount(None::<&str>, &self.0, None::<&str>, flags, None::<&str>)
            .unwrap_or_else(|e| panic!("remount {} read-only: {e}", self.0.display()));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // MNT_DETACH: a file still open somewhere must not leave the mount behind.
        if let Err(error) = umount2(&self.0, MntFlags::MNT_DETACH) {
            eprintln!("WARNING: cannot unmount {}: {error}", self.0.display());
        }
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn owner_and_special_mode_bits_of_another_user_are_preserved() {
    if !is_root("owner_and_special_mode_bits_of_another_user_are_preserved") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.properties");
    fs::write(&path, "old").unwrap();
    std::os::unix::fs::chown(&path, Some(1234), Some(1234)).unwrap();
    // After the chown: chown clears set-group-ID, so set it last, as a writer must.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o2640)).unwrap();

    assert_eq!(atomic_write(&path, b"new").unwrap(), WriteMethod::Renamed);

    let metadata = fs::metadata(&path).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert_eq!((metadata.uid(), metadata.gid()), (1234, 1234));
    assert_eq!(metadata.mode() & 0o7777, 0o2640);
    assert_eq!(names_in(dir.path()), ["server.properties"]);
}

#[test]
fn bind_mounted_target_is_rewritten_in_place() {
    if !is_root("bind_mounted_target_is_rewritten_in_place") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("hosts");
    let source = dir.path().join("netns-hosts");
    fs::write(&target, "underneath, hidden by the mount\n").unwrap();
    fs::write(
        &source,
        "127.0.0.1 localhost\n10.0.0.1 a-long-old-broker-name\n",
    )
    .unwrap();
    fs::set_permissions(&source, fs::Permissions::from_mode(0o640)).unwrap();
    let _mounted = Mounted::bind(&source, &target);

    // Shorter than before: the old tail must be cut off.
    let shorter = b"127.0.0.1 localhost\n";
    assert_eq!(
        atomic_write(&target, shorter).unwrap(),
        WriteMethod::InPlace
    );
    assert_eq!(read_file(&target).unwrap().unwrap(), shorter);
    assert_eq!(read_file(&source).unwrap().unwrap(), shorter);

    // Longer than before.
    let longer = b"127.0.0.1 localhost\n198.18.0.2 broker-1.kafka\n198.18.0.3 broker-2.kafka\n";
    assert_eq!(atomic_write(&target, longer).unwrap(), WriteMethod::InPlace);
    assert_eq!(read_file(&target).unwrap().unwrap(), longer);
    assert_eq!(read_file(&source).unwrap().unwrap(), longer);

    // Same inode, so its mode is kept; no temp file is left behind.
    assert_eq!(fs::metadata(&source).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(names_in(dir.path()), ["hosts", "netns-hosts"]);
}

#[test]
fn bind_mount_from_another_file_system_is_rewritten_in_place() {
    if !is_root("bind_mount_from_another_file_system_is_rewritten_in_place") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let other_fs = dir.path().join("other-fs");
    fs::create_dir(&other_fs).unwrap();
    let _tmpfs = Mounted::tmpfs(&other_fs);
    let source = other_fs.join("hosts");
    let target = dir.path().join("hosts");
    fs::write(&source, "old\n").unwrap();
    fs::write(&target, "").unwrap();
    let _bound = Mounted::bind(&source, &target);

    assert_eq!(
        atomic_write(&target, b"new\n").unwrap(),
        WriteMethod::InPlace
    );

    assert_eq!(fs::read(&source).unwrap(), b"new\n");
    assert_eq!(fs::read(&target).unwrap(), b"new\n");
    assert_eq!(names_in(dir.path()), ["hosts", "other-fs"]);
}

#[test]
fn read_only_directory_gives_a_clear_error_and_no_change() {
    if !is_root("read_only_directory_gives_a_clear_error_and_no_change") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    fs::create_dir(&etc).unwrap();
    let mounted = Mounted::tmpfs(&etc);
    let hosts = etc.join("hosts");
    fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    mounted.remount_read_only(false);

    let error = atomic_write(&hosts, b"changed\n").unwrap_err();

    let message = error.to_string();
    assert!(matches!(error, FsError::WriteTemp { .. }), "{error:?}");
    assert!(message.contains(&hosts.display().to_string()), "{message}");
    assert!(message.contains("read-only file system"), "{message}");
    assert_eq!(fs::read(&hosts).unwrap(), b"127.0.0.1 localhost\n");
    assert_eq!(names_in(&etc), ["hosts"]);
}

#[test]
fn read_only_bind_mounted_file_gives_a_clear_error_and_no_change() {
    if !is_root("read_only_bind_mounted_file_gives_a_clear_error_and_no_change") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("hosts");
    let source = dir.path().join("netns-hosts");
    fs::write(&target, "").unwrap();
    fs::write(&source, "127.0.0.1 localhost\n").unwrap();
    let mounted = Mounted::bind(&source, &target);
    mounted.remount_read_only(true);

    let error = atomic_write(&target, b"changed\n").unwrap_err();

    let message = error.to_string();
    assert!(matches!(error, FsError::InPlace { .. }), "{error:?}");
    assert!(message.contains(&target.display().to_string()), "{message}");
    assert!(message.contains("read-only file system"), "{message}");
    assert_eq!(fs::read(&source).unwrap(), b"127.0.0.1 localhost\n");
    assert_eq!(names_in(dir.path()), ["hosts", "netns-hosts"]);
}
