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

fn json_of(run: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&run.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("not JSON ({error}):\n{stdout}"))
}

#[test]
fn offline_commands_print_json_with_output_json() {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.toml");
    let run = kreachctl(&["validate", spec, "--output", "json"]);
    assert!(run.status.success());
    assert_eq!(json_of(&run)["valid"], true);

    let run = kreachctl(&["render", spec, "--node", "etl-1", "--output", "json"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let rendered = json_of(&run);
    assert!(rendered.is_object() && !rendered.as_object().unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[cluster]\nname = \"x\"\nmetadata = kraft\n").unwrap();
    let run = kreachctl(&["validate", bad.to_str().unwrap(), "--output", "json"]);
    assert_eq!(run.status.code(), Some(2));
    let invalid = json_of(&run);
    assert_eq!(invalid["valid"], false);
    assert!(invalid["errors"][0]
        .as_str()
        .unwrap()
        .contains("metadata = kraft"));

    let certs = dir.path().join("certs");
    let run = kreachctl(&[
        "certs",
        "init",
        "--certs",
        certs.to_str().unwrap(),
        "--node",
        "etl-1",
        "--output",
        "json",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written = json_of(&run)["written"].as_array().unwrap().clone();
    assert!(written
        .iter()
        .any(|path| path.as_str().unwrap().ends_with("nodes/etl-1.pem")));
    for path in &written {
        assert!(
            std::path::Path::new(path.as_str().unwrap()).exists(),
            "{path}"
        );
    }
}

#[test]
fn a_toml_syntax_error_keeps_the_caret_under_the_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[cluster]\nname = \"x\"\nmetadata = kraft\n").unwrap();
    let run = kreachctl(&["validate", bad.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<&str> = output.lines().collect();
    let quoted = lines
        .iter()
        .position(|line| line.ends_with("metadata = kraft"))
        .unwrap_or_else(|| panic!("the bad line is not quoted on a line of its own:\n{output}"));
    assert_eq!(
        lines[quoted + 1].find('^'),
        lines[quoted].find("kraft"),
        "the caret is not under the value:\n{output}"
    );
}
