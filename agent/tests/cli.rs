//! `kreach-agent` as a user runs it: completions need no config, and `apply-local` takes the spec
//! as kreachctl does (`apply-local SPEC`) as well as the older `--spec SPEC`.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kreach-agent"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn completions_need_no_config() {
    let run = agent(&["--config", "/nonexistent/agent.toml", "completions", "bash"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let script = String::from_utf8(run.stdout).unwrap();
    assert!(
        script.contains("apply-local") && script.contains("--dry-run"),
        "{script}"
    );
}

#[test]
fn apply_local_takes_the_spec_positionally_or_with_dash_dash_spec() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node = \"nobody\"\nstate_dir = {:?}\n[manage]\nhosts_file = {:?}\n",
            dir.path().join("state"),
            dir.path().join("hosts")
        ),
    )
    .unwrap();
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.toml");
    let config = config.to_str().unwrap();
    for args in [
        &["--config", config, "apply-local", spec, "--dry-run"][..],
        &[
            "--config",
            config,
            "apply-local",
            "--spec",
            spec,
            "--dry-run",
        ][..],
    ] {
        let run = agent(args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        // Parsed, read the spec, and refused the node this config names: exit 2, "nobody".
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("nobody"), "{args:?}: {stderr}");
    }
    let run = agent(&["--config", config, "apply-local"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("<SPEC>"));
}
