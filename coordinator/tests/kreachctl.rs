//! `kreachctl validate` and `render` as an operator runs them.

use std::process::Command;

const KREACHCTL: &str = env!("CARGO_BIN_EXE_kreachctl");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.toml");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn kreachctl(args: &[&str]) -> Run {
    let output = Command::new(KREACHCTL).args(args).output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn the_example_spec_is_valid() {
    let run = kreachctl(&["validate", EXAMPLE]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("valid: cluster emr-48742, 3 broker(s), 2 client(s), public access enabled"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_invalid_spec_exits_2_with_every_error_on_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(
        &spec,
        r#"
[cluster]
name = "c"

[listeners.internal]
advertise = "hostname"

[listeners.external]
enabled = true
allow = ["198.19.0.0/33"]

[[broker]]
id = 1
node = "w1"
hostname = "w1.c"
private_ip = "198.18.0.1"
public_ip = "198.19.0.1"

[[broker]]
id = 1
node = "w1"
private_ip = "198.18.0.1"
public_ip = "not-an-ip"

[[client]]
node = "etl"
view = "public"
colour = "red"
"#,
    )
    .unwrap();
    let run = kreachctl(&["validate", spec.to_str().unwrap()]);
    assert_eq!(run.code, 2);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let expected = [
        "listeners.external.allow[0]: \"198.19.0.0/33\" is not a CIDR",
        "broker[1].public_ip: broker 1 (node \"w1\"): \"not-an-ip\" is not a valid IPv4 or IPv6 address",
        "broker[1].id: broker 1 (node \"w1\"): \"1\" is also broker[0]'s id",
        "broker[1].private_ip: broker 1 (node \"w1\"): \"198.18.0.1\" is also broker[0]'s private_ip",
        "client[0].colour: client \"etl\": unknown key",
        "broker[1].hostname: broker 1 (node \"w1\"): missing: listeners.internal.advertise = \"hostname\" needs a hostname on every broker",
        "broker[1].node: node \"w1\": also used by broker[0]",
    ];
    for needle in expected {
        let wanted = format!("{}: {needle}", spec.display());
        assert!(
            lines.iter().any(|line| line.starts_with(&wanted)),
            "no line starting with {wanted:?} in:\n{}",
            run.stdout
        );
    }
    assert!(lines.len() >= expected.len());
    assert!(
        run.stderr
            .contains(&format!("error(s) in {}", spec.display())),
        "{}",
        run.stderr
    );
}

#[test]
fn render_shows_the_split_horizon_and_the_listener_settings() {
    let public = kreachctl(&["render", EXAMPLE, "--node", "laptop-1"]);
    assert_eq!(public.code, 0, "{}", public.stderr);
    assert!(
        public
            .stdout
            .contains("198.19.0.12\temr-worker-2.cluster-48742 emr-worker-2\n"),
        "{}",
        public.stdout
    );
    let private = kreachctl(&["render", EXAMPLE, "--node", "etl-1"]);
    assert!(
        private
            .stdout
            .contains("198.18.0.12\temr-worker-2.cluster-48742 emr-worker-2\n"),
        "{}",
        private.stdout
    );
    assert!(
        !private.stdout.contains("listeners="),
        "clients have no listener settings"
    );
    let broker = kreachctl(&["render", EXAMPLE, "--node", "emr-worker-2"]);
    assert!(
        broker
            .stdout
            .contains("\nlisteners=INTERNAL://0.0.0.0:9092,EXTERNAL://0.0.0.0:9093\n"),
        "{}",
        broker.stdout
    );
    assert!(broker.stdout.contains("\nadvertised.listeners=INTERNAL://emr-worker-2.cluster-48742:9092,EXTERNAL://emr-worker-2.cluster-48742:9093\n"), "{}", broker.stdout);
    assert!(
        broker
            .stdout
            .contains("\ninter.broker.listener.name=INTERNAL\n"),
        "{}",
        broker.stdout
    );
}

#[test]
fn render_of_an_unknown_node_names_the_known_ones() {
    let run = kreachctl(&["render", EXAMPLE, "--node", "nope"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("node \"nope\" is not in the spec of cluster \"emr-48742\""),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("emr-worker-1, emr-worker-2, emr-worker-3, etl-1, laptop-1"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_missing_spec_file_is_a_clear_error() {
    let run = kreachctl(&["validate", "/nonexistent/spec.toml"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("reading /nonexistent/spec.toml"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_huge_or_binary_file_given_as_the_spec_gets_a_clear_error_not_a_hang() {
    // /dev/zero never ends: kreachctl must stop reading at the size limit.
    let run = kreachctl(&["validate", "/dev/zero"]);
    assert_eq!(run.code, 2, "an invalid spec: {}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("/dev/zero is over 4 MiB, the limit for a cluster spec"),
        "{}",
        run.stderr
    );

    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("spec.toml");
    std::fs::write(&binary, b"[cluster]\nname = \"\xff\xfe\"\n").unwrap();
    for args in [
        &["render", binary.to_str().unwrap(), "--node", "w1"][..],
        &["validate", binary.to_str().unwrap()][..],
    ] {
        let run = kreachctl(args);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr
                .contains("is not UTF-8 text (invalid byte at offset 18)"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn an_unknown_key_with_a_newline_in_it_is_named_escaped_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let text = example.replacen(
        "[cluster]\n",
        "[cluster]\n\"colour\\nred\\u001b[31m\" = 1\n",
        1,
    );
    assert_ne!(text, example);
    std::fs::write(&spec, text).unwrap();
    let run = kreachctl(&["validate", spec.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one error, one line: {:?}", run.stdout);
    assert_eq!(
        lines[0],
        format!(
            "{}: cluster.\"colour\\nred\\u001B[31m\": unknown key (known keys here: name, metadata)",
            spec.display()
        )
    );
    assert!(run.stderr.contains("1 error(s)"), "{}", run.stderr);
}
