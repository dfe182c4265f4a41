//! The Prometheus alert rules shipped in packaging/prometheus: `promtool check rules` accepts them
//! and `promtool test rules` runs their unit tests (each alert fires when it should and not before).

use std::path::Path;
use std::process::Command;

const RULES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus");

fn promtool() -> Option<&'static str> {
    ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|path| Path::new(path).exists())
}

#[test]
fn every_alert_rule_is_valid_and_its_promtool_unit_tests_pass() {
    let tool = promtool();
    if !kreach_test_parts::require(
        kreach_test_parts::Tier::Root,
        "alert_rules",
        tool.is_none().then(|| {
            kreach_test_parts::Missing::new(
                "promtool (Prometheus' checker)",
                "apt-get install prometheus (or bash tests/install.sh)",
            )
        }),
    ) {
        return;
    }
    let tool = tool.unwrap();
    for args in [
        ["check", "rules", "kreach-rules.yml"],
        ["test", "rules", "kreach-rules.test.yml"],
    ] {
        let output = Command::new(tool)
            .args(args)
            .current_dir(RULES_DIR)
            .output()
            .expect("promtool runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.contains("SUCCESS"),
            "promtool {}:\n{said}",
            args.join(" ")
        );
    }
    // Every alert in the rules has a unit test.
    let rules = std::fs::read_to_string(Path::new(RULES_DIR).join("kreach-rules.yml")).unwrap();
    let tests =
        std::fs::read_to_string(Path::new(RULES_DIR).join("kreach-rules.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool unit test"
        );
    }
}
