//! Building workspace binaries for tests that run them where cargo does not put them for us (inside
//! an e2e-systemd container): `CARGO_BIN_EXE_*` exists only for the test's own package, and
//! examples are not exposed at all.
//!
//! Owns: running `$CARGO build` into the target dir the running test binary lives in (same profile),
//! and finding the artifact. Does not own: copying it anywhere (see [`crate::nspawn::Host::copy_in`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Build with `cargo build CARGO_ARGS` (e.g. `["-p", "kreach-agent", "--bin", "kreach-agent"]`)
/// into the running test binary's target dir and profile, and return `<profile dir>/ARTIFACT`
/// (e.g. `kreach-agent` or `examples/fake_broker`).
///
/// Call it once per artifact and process (keep the result in a `OnceLock`): cargo is quick when
/// nothing changed, but not free.
pub fn build_artifact(cargo_args: &[&str], artifact: &str) -> Result<PathBuf> {
    // The test binary is .../<target dir>/<profile>/deps/<name>-HASH.
    let exe = std::env::current_exe().context("current_exe")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("no profile dir above {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .with_context(|| format!("no target dir above {}", profile_dir.display()))?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    build
        .arg("build")
        .args(cargo_args)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .with_context(|| format!("running {cargo} build {cargo_args:?}"))?;
    if !status.success() {
        bail!("cargo build {cargo_args:?} failed: {status}");
    }
    let binary = profile_dir.join(artifact);
    if !binary.is_file() {
        bail!(
            "{} missing after cargo build {cargo_args:?}",
            binary.display()
        );
    }
    Ok(binary)
}
