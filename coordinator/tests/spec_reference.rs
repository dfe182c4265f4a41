//! docs/spec.md against the spec parser (domain/src/spec.rs) and the real kreachctl: every
//! key the parser knows has a row and every row is a key the parser knows; each documented
//! default is the parser's default and each documented value is accepted; every worked example
//! validates and renders exactly as shown.

mod reference_support;

use std::collections::BTreeSet;
use std::process::Command;

use kreach_domain::spec::{ClusterSpec, KNOWN_KEYS};
use reference_support::{join, read_doc, reference_rows, toml_values, with_key};

/// A valid spec with every table present, two brokers and a client, into which one key at a time
/// is set. Its names are unlike the documented examples', so an example value never collides.
const BASE: &str = r#"
[cluster]
name = "probe"

[listeners.internal]

[listeners.external]
allow = ["192.0.2.0/24"]

[[broker]]
id = 101
node = "probe-b1"
hostname = "probe-b1.probe"
private_ip = "10.99.0.1"
public_ip = "192.0.2.101"

[[broker]]
id = 102
node = "probe-b2"
hostname = "probe-b2.probe"
private_ip = "10.99.0.2"
public_ip = "192.0.2.102"

[[client]]
node = "probe-c1"

[[client_group]]
name = "probe-group"
nodes = "probe-g*"

[rollout]
"#;

/// The keys the parser knows that hold a value (not a table), as dotted paths.
fn parser_keys() -> BTreeSet<String> {
    let tables: BTreeSet<&str> = KNOWN_KEYS.iter().map(|(table, _)| *table).collect();
    let mut keys = BTreeSet::new();
    for (table, known) in KNOWN_KEYS {
        for key in *known {
            let path = join(table, key);
            if !tables.contains(path.as_str()) {
                keys.insert(path);
            }
        }
    }
    keys
}

fn errors(text: &str) -> Vec<String> {
    match ClusterSpec::parse(text) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_parser_key_is_documented_and_every_documented_key_exists() {
    let rows = reference_rows(&read_doc("spec.md"));
    let documented: BTreeSet<String> = rows.iter().map(|row| row.path()).collect();
    let parser = parser_keys();
    let undocumented: Vec<_> = parser.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&parser).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/spec.md and the spec parser disagree.\nknown to the parser, no row in docs/spec.md: {undocumented:?}\nrows in docs/spec.md the parser does not know: {unknown:?}"
    );
    assert_eq!(rows.len(), documented.len(), "a key has two rows");
    // The expected keys include [rollout] agent_timeout (issue 10).
    assert!(parser.contains("rollout.agent_timeout"));
}

#[test]
fn the_parser_itself_knows_every_documented_key() {
    // Independent of KNOWN_KEYS: set the key in a valid spec and look for "unknown key".
    for row in reference_rows(&read_doc("spec.md")) {
        let text = with_key(BASE, &row.section, &row.key, toml::Value::from("x"));
        let unknown: Vec<_> = errors(&text)
            .into_iter()
            .filter(|error| error.contains("unknown key"))
            .collect();
        assert!(unknown.is_empty(), "{}: {unknown:?}", row.path());
        // And a made-up neighbour is refused, so the probe can fail.
        let text = with_key(BASE, &row.section, "zz_not_a_key", toml::Value::from("x"));
        assert!(
            errors(&text)
                .iter()
                .any(|error| error.contains("unknown key")),
            "{}: the parser accepted an unknown key beside it",
            row.section
        );
    }
}

#[test]
fn documented_defaults_are_the_parsers_defaults() {
    let base = ClusterSpec::parse(BASE).expect("the base spec is valid");
    let mut checked = 0;
    for row in reference_rows(&read_doc("spec.md")) {
        let values = toml_values(&row.default);
        let [(literal, value)] = values.as_slice() else {
            // "required", "none", "required when enabled": no default to compare.
            continue;
        };
        let text = with_key(BASE, &row.section, &row.key, value.clone());
        let with_default = ClusterSpec::parse(&text)
            .unwrap_or_else(|errors| panic!("{} = {literal}: {errors}", row.path()));
        assert_eq!(
            with_default,
            base,
            "{} = {literal} (the documented default) is not what leaving it out means",
            row.path()
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} defaults were checked");
}

#[test]
fn documented_values_are_accepted() {
    let mut checked = 0;
    for row in reference_rows(&read_doc("spec.md")) {
        for (literal, value) in toml_values(&row.allowed) {
            let text = with_key(BASE, &row.section, &row.key, value);
            let errors = errors(&text);
            assert!(
                errors.is_empty(),
                "{} = {literal} is documented as allowed: {errors:?}",
                row.path()
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} values were checked");
}

/// The fenced blocks of a markdown text with their info string.
fn fenced_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_string(), String::new())),
            (Some(_), Some("")) => blocks.push(current.take().unwrap()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block");
    blocks
}

#[test]
fn the_worked_examples_validate_and_render_as_shown() {
    let doc = read_doc("spec.md");
    let dir = tempfile::tempdir().unwrap();
    let blocks = fenced_blocks(&doc);
    let kreachctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kreachctl"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("KREACH_COORDINATOR")
            .env_remove("KREACH_CERTS")
            .output()
            .unwrap()
    };
    let mut examples = Vec::new();
    for (info, text) in &blocks {
        if info != "toml" {
            continue;
        }
        // Every spec block is a whole example, named by its first line: `# NAME.toml: …`.
        let name = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# "))
            .and_then(|line| line.split(':').next())
            .filter(|name| name.ends_with(".toml"))
            .unwrap_or_else(|| panic!("a toml block without a `# NAME.toml:` first line:\n{text}"));
        std::fs::write(dir.path().join(name), text).unwrap();
        let run = kreachctl(&["validate", name]);
        assert!(
            run.status.success(),
            "{name} is not a valid spec:\n{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        examples.push(name.to_string());
    }
    for scenario in ["private.toml", "public.toml", "hostname.toml"] {
        assert!(
            examples.iter().any(|name| name == scenario),
            "no {scenario} example"
        );
    }
    let mut renders = 0;
    for (info, text) in &blocks {
        if info != "console" {
            continue;
        }
        let (command, expected) = text.split_once('\n').unwrap();
        let args: Vec<&str> = command
            .strip_prefix("$ kreachctl ")
            .unwrap_or_else(|| panic!("a console block not starting `$ kreachctl`: {command}"))
            .split_whitespace()
            .collect();
        let run = kreachctl(&args);
        assert!(
            run.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&run.stdout),
            expected,
            "docs/spec.md shows other output for `{command}`"
        );
        renders += 1;
    }
    assert!(renders >= 7, "only {renders} render outputs");
}
