//! The command lines as a user meets them in `--help` and the man pages: every subcommand and flag
//! is described, the offline commands do not take the coordinator's connection flags, and the older
//! spellings (`--dir`, `--spec`, connection flags before the command) still parse.

use clap::{CommandFactory, Parser};
use kreach_agent::cli as agent;
use kreach_coordinator::cli::kreachctl;

fn all_commands() -> Vec<clap::Command> {
    vec![
        kreachctl::Cli::command(),
        agent::Cli::command(),
        kreach_coordinator::cli::coordinator::Cli::command(),
    ]
}

/// Every subcommand without an about and every visible argument without help, as `path: what`.
fn undescribed(command: &clap::Command, path: &str, found: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_hide_set() || id == "help" || id == "version" {
            continue;
        }
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            found.push(format!("{path}: argument {id}"));
        }
    }
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_path = format!("{path} {}", sub.get_name());
        if sub.get_about().is_none() && sub.get_long_about().is_none() {
            found.push(format!("{sub_path}: no description"));
        }
        undescribed(sub, &sub_path, found);
    }
}

#[test]
fn every_subcommand_and_every_argument_has_a_description() {
    let mut found = Vec::new();
    for command in all_commands() {
        let name = command.get_name().to_string();
        undescribed(&command, &name, &mut found);
    }
    assert!(
        found.is_empty(),
        "undescribed in --help:\n{}",
        found.join("\n")
    );
}

/// kreachctl's commands that never talk to the coordinator.
const OFFLINE: [&[&str]; 5] = [
    &["validate", "spec.toml"],
    &["render", "spec.toml", "--node", "etl-1"],
    &["certs", "init", "--node", "etl-1"],
    &["certs", "issue", "--node", "etl-1"],
    &["completions", "bash"],
];

#[test]
fn offline_commands_neither_list_nor_accept_the_connection_flags() {
    for args in OFFLINE {
        let base: Vec<&str> = std::iter::once("kreachctl")
            .chain(args.iter().copied())
            .collect();
        kreachctl::Cli::try_parse_from(&base)
            .unwrap_or_else(|error| panic!("{base:?} should parse: {error}"));
        for flag in [
            &["--coordinator", "https://c:7443"][..],
            &["--certs", "/tmp/certs"][..],
            &["--insecure"][..],
        ] {
            // `certs init|issue --certs DIR` is where they write: the same directory, by design.
            if args[0] == "certs" && flag[0] == "--certs" {
                continue;
            }
            let mut with_flag = base.clone();
            with_flag.extend_from_slice(flag);
            let error = match kreachctl::Cli::try_parse_from(&with_flag) {
                Ok(_) => panic!("{with_flag:?} was accepted"),
                Err(error) => error,
            };
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{with_flag:?}: {error}"
            );
        }
        // What `kreachctl validate --help` shows.
        let mut command = kreachctl::Cli::command();
        command.build();
        let mut sub = &command;
        for word in args
            .iter()
            .take_while(|word| !word.contains('.') && !word.starts_with('-'))
        {
            match sub.find_subcommand(word) {
                Some(next) => sub = next,
                None => break,
            }
        }
        let help = sub.clone().render_long_help().to_string();
        for flag in ["--coordinator <", "--insecure", "KREACH_COORDINATOR"] {
            assert!(
                !help.contains(flag),
                "{args:?} --help lists {flag}:\n{help}"
            );
        }
    }
}

#[test]
fn online_commands_list_the_connection_flags_with_their_environment_variables() {
    let mut command = kreachctl::Cli::command();
    command.build();
    for path in [
        &["plan"][..],
        &["apply"],
        &["status"],
        &["check"],
        &["rollout", "pause"],
        &["rollout", "resume"],
        &["rollout", "abort"],
        &["history"],
        &["rollback"],
        &["nodes"],
        &["client-config"],
        &["diagnose"],
    ] {
        let mut sub = &command;
        for word in path {
            sub = sub.find_subcommand(word).expect("subcommand exists");
        }
        let help = sub.clone().render_long_help().to_string();
        for text in [
            "--coordinator <URL>",
            "KREACH_COORDINATOR",
            "--certs <DIR>",
            "KREACH_CERTS",
            "--insecure",
        ] {
            assert!(help.contains(text), "{path:?} --help lacks {text}:\n{help}");
        }
    }
}

fn connection(args: &[&str]) -> kreach_coordinator::ctl::Connection {
    kreachctl::Cli::try_parse_from(args)
        .unwrap_or_else(|error| panic!("{args:?}: {error}"))
        .connection()
}

#[test]
fn connection_flags_work_after_the_command_and_before_it_as_they_used_to() {
    let after = connection(&[
        "kreachctl",
        "rollout",
        "pause",
        "--coordinator",
        "https://after:7443",
        "--certs",
        "/after",
        "--insecure",
    ]);
    assert_eq!(after.url, "https://after:7443");
    assert_eq!(after.certs, std::path::PathBuf::from("/after"));
    assert!(after.insecure);

    let before = connection(&[
        "kreachctl",
        "--coordinator",
        "https://before:7443",
        "--certs",
        "/before",
        "--insecure",
        "status",
    ]);
    assert_eq!(before.url, "https://before:7443");
    assert_eq!(before.certs, std::path::PathBuf::from("/before"));
    assert!(before.insecure);

    // Typed after the command wins over typed before it.
    let both = connection(&[
        "kreachctl",
        "--coordinator",
        "https://before:7443",
        "check",
        "--coordinator",
        "https://after:7443",
    ]);
    assert_eq!(both.url, "https://after:7443");
    assert!(!both.insecure);
}

#[test]
fn certificates_directory_is_certs_everywhere_and_dir_still_parses() {
    for spelling in ["--certs", "--dir"] {
        let cli = kreachctl::Cli::try_parse_from([
            "kreachctl",
            "certs",
            "init",
            spelling,
            "/tmp/c",
            "--node",
            "a",
            "--force",
        ])
        .unwrap_or_else(|error| panic!("{spelling}: {error}"));
        match cli.command {
            kreachctl::Command::Certs {
                action: kreachctl::CertsAction::Init { dir, force, .. },
            } => {
                assert_eq!(dir, std::path::PathBuf::from("/tmp/c"));
                assert!(force);
            }
            _ => panic!("not certs init"),
        }
    }
    let mut command = kreachctl::Cli::command();
    command.build();
    let certs = command.find_subcommand("certs").unwrap();
    for action in ["init", "issue"] {
        let help = certs
            .find_subcommand(action)
            .unwrap()
            .clone()
            .render_long_help()
            .to_string();
        assert!(help.contains("--certs <DIR>"), "certs {action}:\n{help}");
        assert!(
            !help.contains("--dir"),
            "certs {action} lists --dir:\n{help}"
        );
    }
}

#[test]
fn the_agent_takes_the_spec_as_kreachctl_does_and_still_takes_dash_dash_spec() {
    for args in [
        &["kreach-agent", "apply-local", "cluster.toml"][..],
        &["kreach-agent", "apply-local", "--spec", "cluster.toml"][..],
    ] {
        let cli =
            agent::Cli::try_parse_from(args).unwrap_or_else(|error| panic!("{args:?}: {error}"));
        match cli.command {
            agent::Command::ApplyLocal {
                spec, spec_option, ..
            } => assert_eq!(
                spec.or(spec_option),
                Some(std::path::PathBuf::from("cluster.toml")),
                "{args:?}"
            ),
            _ => panic!("not apply-local"),
        }
    }
    assert!(agent::Cli::try_parse_from(["kreach-agent", "apply-local"]).is_err());
    let mut command = agent::Cli::command();
    command.build();
    let help = command
        .find_subcommand("apply-local")
        .unwrap()
        .clone()
        .render_long_help()
        .to_string();
    assert!(
        help.contains("<SPEC>") && !help.contains("--spec"),
        "{help}"
    );
    // kreachctl's positional SPEC, for comparison.
    assert!(kreachctl::Cli::try_parse_from(["kreachctl", "validate", "cluster.toml"]).is_ok());
}
