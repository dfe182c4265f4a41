//! `kreach-gen-docs OUT_DIR` as packaging runs it: a man page for every subcommand that the
//! parent pages refer to, and completion scripts for every binary.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn generate() -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_kreach-gen-docs"))
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "kreach-gen-docs failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

fn pages(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("man"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn every_page_a_man_page_refers_to_exists() {
    let out = generate();
    let pages = pages(out.path());
    for expected in [
        "kreachctl.1",
        "kreachctl-apply.1",
        "kreachctl-plan.1",
        "kreachctl-validate.1",
        "kreachctl-render.1",
        "kreachctl-status.1",
        "kreachctl-check.1",
        "kreachctl-client-config.1",
        "kreachctl-diagnose.1",
        "kreachctl-users.1",
        "kreachctl-users-add.1",
        "kreachctl-users-list.1",
        "kreachctl-users-remove.1",
        "kreachctl-history.1",
        "kreachctl-rollback.1",
        "kreachctl-nodes.1",
        "kreachctl-clusters.1",
        "kreachctl-rollout.1",
        "kreachctl-rollout-pause.1",
        "kreachctl-rollout-resume.1",
        "kreachctl-rollout-abort.1",
        "kreachctl-certs.1",
        "kreachctl-certs-init.1",
        "kreachctl-certs-issue.1",
        "kreachctl-completions.1",
        "kreach-agent.8",
        "kreach-agent-apply-local.8",
        "kreach-agent-run.8",
        "kreach-agent-state.8",
        "kreach-agent-audit.8",
        "kreach-agent-overrides.8",
        "kreach-agent-diagnose.8",
        "kreach-agent-completions.8",
        "kreach-coordinator.8",
        "kreach-coordinator-migrate.8",
    ] {
        assert!(pages.contains(expected), "no {expected} in {pages:?}");
    }
    assert!(
        !pages.iter().any(|page| page.contains("-help.")),
        "{pages:?}"
    );
    // Every `NAME-SUB(N)` a page lists under SUBCOMMANDS is a page of its own.
    for page in &pages {
        let text = std::fs::read_to_string(out.path().join("man").join(page)).unwrap();
        let text = text.replace("\\-", "-");
        for line in text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_suffix(')').and_then(|l| l.rsplit_once('(')) {
                let (name, section) = name;
                if name.starts_with("kreach") && !name.contains(' ') {
                    let file = format!("{name}.{section}");
                    assert!(pages.contains(&file), "{page} refers to {line}, no {file}");
                }
            }
        }
    }
}

#[test]
fn subcommand_pages_describe_their_own_flags() {
    let out = generate();
    let read = |page: &str| {
        std::fs::read_to_string(out.path().join("man").join(page))
            .unwrap()
            .replace("\\-", "-")
    };
    let apply = read("kreachctl-apply.1");
    for text in [
        "--yes",
        "--wait",
        "--force",
        "--coordinator",
        "KREACH_COORDINATOR",
        "SPEC",
    ] {
        assert!(
            apply.contains(text),
            "kreachctl-apply.1 lacks {text}:\n{apply}"
        );
    }
    let validate = read("kreachctl-validate.1");
    assert!(!validate.contains("--coordinator"), "{validate}");
    let init = read("kreachctl-certs-init.1");
    assert!(
        init.contains("--certs") && init.contains("--force"),
        "{init}"
    );
}

#[test]
fn completions_for_every_binary_and_shell() {
    let out = generate();
    for bin in ["kreachctl", "kreach-agent", "kreach-coordinator"] {
        for file in [
            format!("bash/{bin}.bash"),
            format!("zsh/_{bin}"),
            format!("fish/{bin}.fish"),
        ] {
            let text = std::fs::read_to_string(out.path().join(&file))
                .unwrap_or_else(|error| panic!("{file}: {error}"));
            assert!(text.contains(bin), "{file}");
        }
    }
    let bash = std::fs::read_to_string(out.path().join("bash/kreachctl.bash")).unwrap();
    assert!(
        bash.contains("rollout") && bash.contains("--coordinator"),
        "{bash}"
    );
}
