//! `kreachctl` as a user runs it: completions from the binary itself, and the offline commands
//! refusing the coordinator's connection flags.

use std::process::{Command, Output};

fn kreachctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kreachctl"))
        .args(args)
        .env_remove("KREACH_COORDINATOR")
        .env_remove("KREACH_CERTS")
        .output()
        .unwrap()
}

#[test]
fn completions_for_bash_zsh_and_fish_go_to_stdout() {
    for (shell, marker) in [
        ("bash", "complete -F _kreachctl"),
        ("zsh", "#compdef kreachctl"),
        ("fish", "complete -c kreachctl"),
    ] {
        let run = kreachctl(&["completions", shell]);
        assert!(
            run.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let script = String::from_utf8(run.stdout).unwrap();
        assert!(
            script.contains(marker),
            "{shell}: no {marker:?} in\n{script}"
        );
        for word in ["apply", "rollout", "pause", "coordinator", "certs"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let run = kreachctl(&["completions", "tcsh"]);
    assert_eq!(run.status.code(), Some(2));
}

#[test]
fn offline_commands_refuse_the_connection_flags() {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.toml");
    let run = kreachctl(&["validate", spec, "--coordinator", "https://c:7443"]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("unexpected argument '--coordinator'"),
        "{stderr}"
    );
    let run = kreachctl(&["render", spec, "--node", "etl-1", "--insecure"]);
    assert_eq!(run.status.code(), Some(2));
    let help = String::from_utf8(kreachctl(&["validate", "--help"]).stdout).unwrap();
    assert!(
        help.contains("<SPEC>") && !help.contains("--coordinator"),
        "{help}"
    );
    // The same spec validates without them, and --output stays available everywhere.
    let run = kreachctl(&["validate", spec, "--output", "table"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
}
