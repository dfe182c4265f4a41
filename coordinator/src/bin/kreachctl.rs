//! `kreachctl`: the operator's command line.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use kreach_common::desired::node_spec;
use kreach_common::spec::{read_spec_file, ClusterSpec, SpecFileError};
use kreach_coordinator::cli::kreachctl::{CertsAction, Cli, Command, Output, RolloutAction};
use kreach_coordinator::ctl;
use kreach_proto as pb;

const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;
const EXIT_ROLLOUT_STOPPED: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Validate { spec } => validate(&cli, spec),
        Command::Render { spec, node } => render(&cli, spec, node),
        Command::Certs { action } => certs(action),
        Command::Completions { shell } => {
            kreach_coordinator::cli::kreachctl::write_completions(*shell, &mut std::io::stdout());
            Ok(0)
        }
        _ => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(remote(&cli)),
            Err(error) => Err(error.into()),
        },
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("kreachctl: error: {error:#}");
            // A spec file that cannot be a spec (too big, not UTF-8) is an invalid spec.
            let invalid_spec = error
                .downcast_ref::<SpecFileError>()
                .is_some_and(SpecFileError::is_invalid_spec);
            ExitCode::from(if invalid_spec {
                EXIT_INVALID
            } else {
                EXIT_FAILED
            })
        }
    }
}

/// Parse the spec; on errors print each as `SPEC: field: message` (or, with `--output json`, one
/// object listing them) and return None.
fn load_spec(cli: &Cli, path: &Path) -> anyhow::Result<Option<ClusterSpec>> {
    let text = read_spec_file(path)?;
    match ClusterSpec::parse(&text) {
        Ok(spec) => Ok(Some(spec)),
        Err(errors) => {
            let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            let text: String = lines
                .iter()
                .map(|error| format!("{}: {error}\n", path.display()))
                .collect();
            let json = serde_json::json!({
                "spec": path.display().to_string(),
                "valid": false,
                "errors": lines,
            });
            print_value(cli, text, json);
            eprintln!(
                "kreachctl: {} error(s) in {}",
                errors.0.len(),
                path.display()
            );
            Ok(None)
        }
    }
}

fn validate(cli: &Cli, path: &Path) -> anyhow::Result<u8> {
    let Some(spec) = load_spec(cli, path)? else {
        return Ok(EXIT_INVALID);
    };
    let text = format!(
        "{}: valid: cluster {}, {} broker(s), {} client(s), public access {}\n",
        path.display(),
        spec.name,
        spec.brokers.len(),
        spec.clients.len(),
        if spec.external.enabled {
            "enabled"
        } else {
            "disabled"
        }
    );
    let json = serde_json::json!({
        "spec": path.display().to_string(),
        "valid": true,
        "cluster": spec.name,
        "brokers": spec.brokers.len(),
        "clients": spec.clients.len(),
        "public_access": spec.external.enabled,
    });
    print_value(cli, text, json);
    Ok(0)
}

fn render(cli: &Cli, path: &Path, node: &str) -> anyhow::Result<u8> {
    let Some(spec) = load_spec(cli, path)? else {
        return Ok(EXIT_INVALID);
    };
    let desired = match node_spec(&spec, node) {
        Ok(desired) => desired,
        Err(error) => {
            eprintln!("kreachctl: {error}");
            return Ok(EXIT_INVALID);
        }
    };
    let rendered = kreach_common::desired::render_node(&desired)
        .map_err(|message| anyhow::anyhow!("rendering node {}: {message}", desired.node))?;
    let hosts_block = if desired.hosts_entries.is_empty() {
        String::new()
    } else {
        kreach_common::hosts::apply_block("", &desired.cluster, &desired.hosts_entries)
            .map_err(|error| anyhow::anyhow!("rendering node {}: {error}", desired.node))?
            .content
    };
    let listener_settings = match &desired.listeners {
        Some(listeners) => kreach_common::properties::owned_values(listeners)
            .map_err(|error| anyhow::anyhow!("rendering node {}: {error}", desired.node))?
            .into_iter()
            .map(|(key, value)| (key.to_string(), serde_json::Value::String(value)))
            .collect::<serde_json::Map<_, _>>(),
        None => serde_json::Map::new(),
    };
    let json = serde_json::json!({
        "node": desired.node,
        "role": ctl_role(&desired),
        "description": desired.describe(),
        "hosts_block": hosts_block,
        "listener_settings": listener_settings,
        "restarts_kafka_on_change": desired.listeners.is_some(),
    });
    print_value(
        cli,
        format!("# node {}\n{rendered}", desired.describe()),
        json,
    );
    Ok(0)
}

fn ctl_role(desired: &kreach_common::desired::NodeSpec) -> &'static str {
    kreach_coordinator::core::role_word(&desired.role)
}

fn certs(action: &CertsAction) -> anyhow::Result<u8> {
    let written = match action {
        CertsAction::Init {
            dir,
            nodes,
            coordinator_names,
            days,
            force,
        } => {
            let names = if coordinator_names.is_empty() {
                vec!["localhost".to_string(), "127.0.0.1".to_string()]
            } else {
                coordinator_names.clone()
            };
            kreach_common::tls::init_certs(dir, &names, nodes, *days, *force)?
        }
        CertsAction::Issue {
            dir,
            node,
            days,
            force,
        } => kreach_common::tls::issue_node_cert(dir, node, *days, *force)?,
    };
    for path in written {
        println!("wrote {}", path.display());
    }
    println!("Give each host only its own nodes/NODE.pem and .key plus ca.pem; keep ca.key on this machine.");
    Ok(0)
}

fn print_value(cli: &Cli, text: String, json: serde_json::Value) {
    match cli.output {
        Output::Table => print!("{text}"),
        Output::Json => println!("{}", serde_json::to_string_pretty(&json).expect("json")),
    }
}

/// Why a plan whose host facts disagree is refused, naming every disagreement.
fn facts_refusal(plan: &pb::PlanResponse, what: &str) -> String {
    format!(
        "refused: host facts disagree with {what}, or its agents never connected (fix it, or pass --force):\n{}",
        plan.warnings.join("\n")
    )
}

/// Before an apply or a rollback: show the plan (tables only), refuse when host facts disagree
/// with `what` (unless `force`), then ask `question` (unless `yes`). False: the operator said no.
fn review_plan(
    cli: &Cli,
    plan: &pb::PlanResponse,
    what: &str,
    question: &str,
    yes: bool,
    force: bool,
) -> anyhow::Result<bool> {
    if cli.output == Output::Table {
        print!("{}", ctl::plan_text(plan));
    }
    if !plan.warnings.is_empty() && !force {
        anyhow::bail!(facts_refusal(plan, what));
    }
    Ok(yes || confirm(question)?)
}

/// What an accepted apply or rollback says: the new generation (and, as JSON, its plan).
fn print_applied(cli: &Cli, applied: &pb::ApplyResponse, rollback_of: Option<u64>) {
    match cli.output {
        Output::Table => println!(
            "applied generation {}{}; follow it with `kreachctl status --watch`",
            applied.generation,
            rollback_of
                .map(|to| format!(" (the spec of generation {to})"))
                .unwrap_or_default()
        ),
        Output::Json => println!(
            "{}",
            serde_json::json!({"generation": applied.generation, "rollback_of": rollback_of, "plan": applied.plan.as_ref().map(ctl::plan_json)})
        ),
    }
}

/// The applied plan's per-node diffs as the operator reviewed them: checked against the hosts
/// just before (the Apply answer itself only knows the generation diffs, as the hosts are about
/// to change).
fn with_reviewed_diffs(applied: &mut pb::ApplyResponse, reviewed: &pb::PlanResponse) {
    if let Some(plan) = applied.plan.as_mut() {
        plan.nodes.clone_from(&reviewed.nodes);
    }
}

/// Ask on the terminal; refuse when there is none (scripts say --yes).
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("not asking without a terminal: pass --yes to apply");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

async fn remote(cli: &Cli) -> anyhow::Result<u8> {
    let connection = cli.connection();
    let mut admin = connection.admin().await?;
    let fail = |status: tonic::Status| anyhow::anyhow!(ctl::status_message(&status));
    match &cli.command {
        Command::Plan { spec, force, .. } => {
            let plan = admin
                .plan(pb::PlanRequest {
                    spec_toml: read_spec_file(spec)?,
                    force: *force,
                })
                .await
                .map_err(fail)?
                .into_inner();
            print_value(cli, ctl::plan_text(&plan), ctl::plan_json(&plan));
            if !plan.warnings.is_empty() && !*force {
                eprintln!("kreachctl: {}", facts_refusal(&plan, "the spec"));
                return Ok(EXIT_FAILED);
            }
            Ok(0)
        }
        Command::Apply {
            spec,
            yes,
            force,
            wait,
            ..
        } => {
            let spec_toml = read_spec_file(spec)?;
            let plan = admin
                .plan(pb::PlanRequest {
                    spec_toml: spec_toml.clone(),
                    force: *force,
                })
                .await
                .map_err(fail)?
                .into_inner();
            let question = format!(
                "Apply {} as generation {}?",
                spec.display(),
                plan.from_generation + 1
            );
            if !review_plan(cli, &plan, "the spec", &question, *yes, *force)? {
                println!("not applied");
                return Ok(EXIT_FAILED);
            }
            let mut applied = admin
                .apply(pb::ApplyRequest {
                    spec_toml,
                    force: *force,
                })
                .await
                .map_err(fail)?
                .into_inner();
            with_reviewed_diffs(&mut applied, &plan);
            print_applied(cli, &applied, None);
            if *wait {
                return follow(cli, &mut admin).await;
            }
            Ok(0)
        }
        Command::Status { watch, .. } => {
            if *watch {
                let status = admin
                    .status(pb::StatusRequest {})
                    .await
                    .map_err(fail)?
                    .into_inner();
                if status.rollout.is_none() {
                    print_value(cli, ctl::status_text(&status), ctl::status_json(&status));
                    anyhow::bail!(
                        "no rollout to follow: no spec applied yet (kreachctl apply SPEC first)"
                    );
                }
                return follow(cli, &mut admin).await;
            }
            let status = admin
                .status(pb::StatusRequest {})
                .await
                .map_err(fail)?
                .into_inner();
            print_value(cli, ctl::status_text(&status), ctl::status_json(&status));
            Ok(0)
        }
        Command::Check { .. } => {
            let status = admin
                .status(pb::StatusRequest {})
                .await
                .map_err(fail)?
                .into_inner();
            if status.rollout.is_none() {
                anyhow::bail!("no spec applied yet: nothing to check (kreachctl apply SPEC first)");
            }
            let failures = ctl::check_failures(&status.reachability);
            let problems = ctl::host_problems(&status.nodes);
            match cli.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&ctl::check_json(&status))?
                ),
                Output::Table if failures.is_empty() && problems.is_empty() => {
                    let pairs: usize = status
                        .reachability
                        .iter()
                        .map(|row| row.brokers.len())
                        .sum();
                    println!(
                        "ok: {} client(s) reach every broker they should ({pairs} client × broker pair(s)); no host reports a problem",
                        status.reachability.len()
                    );
                }
                Output::Table => {
                    print!("{}", ctl::reachability_text(&status.reachability));
                    for problem in &problems {
                        println!("  ✗ {problem}");
                    }
                    println!(
                        "{} failure(s), {} host problem(s)",
                        failures.len(),
                        problems.len()
                    );
                }
            }
            Ok(if failures.is_empty() && problems.is_empty() {
                0
            } else {
                EXIT_UNREACHABLE
            })
        }
        Command::Rollout { action, .. } => {
            let status = match action {
                RolloutAction::Pause => admin.pause(pb::RolloutControl {}).await,
                RolloutAction::Resume => admin.resume(pb::RolloutControl {}).await,
                RolloutAction::Abort => admin.abort(pb::RolloutControl {}).await,
            }
            .map_err(fail)?
            .into_inner();
            print_value(cli, ctl::status_text(&status), ctl::status_json(&status));
            Ok(0)
        }
        Command::History { node, last, .. } => {
            let history = admin
                .history(pb::HistoryRequest {
                    node: node.clone().unwrap_or_default(),
                    last: last.unwrap_or(0),
                })
                .await
                .map_err(fail)?
                .into_inner();
            match node {
                None => print_value(
                    cli,
                    ctl::history_text(&history),
                    ctl::history_json(&history),
                ),
                Some(node) => print_value(
                    cli,
                    ctl::changes_text(node, &history.changes),
                    ctl::changes_json(&history.changes),
                ),
            }
            Ok(0)
        }
        Command::Rollback {
            to,
            yes,
            force,
            wait,
            ..
        } => {
            let request = |dry_run| pb::RollbackRequest {
                to: *to,
                force: *force,
                dry_run,
            };
            let preview = admin
                .rollback(request(true))
                .await
                .map_err(fail)?
                .into_inner();
            let plan = preview.plan.unwrap_or_default();
            let question = format!(
                "Roll out generation {to}'s spec again as generation {}?",
                plan.from_generation + 1
            );
            let what = format!("generation {to}'s spec");
            if !review_plan(cli, &plan, &what, &question, *yes, *force)? {
                println!("not applied");
                return Ok(EXIT_FAILED);
            }
            let mut applied = admin
                .rollback(request(false))
                .await
                .map_err(fail)?
                .into_inner();
            with_reviewed_diffs(&mut applied, &plan);
            print_applied(cli, &applied, Some(*to));
            if *wait {
                return follow(cli, &mut admin).await;
            }
            Ok(0)
        }
        Command::Nodes { .. } => {
            let nodes = admin
                .nodes(pb::NodesRequest {})
                .await
                .map_err(fail)?
                .into_inner();
            print_value(cli, ctl::nodes_text(&nodes), ctl::nodes_json(&nodes));
            Ok(0)
        }
        Command::Validate { .. }
        | Command::Render { .. }
        | Command::Certs { .. }
        | Command::Completions { .. } => {
            unreachable!("local commands")
        }
    }
}

/// Print status as it changes until the rollout completes (0), pauses or aborts (3).
async fn follow(
    cli: &Cli,
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<u8> {
    use tokio_stream::StreamExt;
    let mut stream = admin
        .watch(pb::StatusRequest {})
        .await
        .map_err(|status| anyhow::anyhow!(ctl::status_message(&status)))?
        .into_inner();
    let mut last = String::new();
    while let Some(update) = stream.next().await {
        let status = update.map_err(|status| anyhow::anyhow!(ctl::status_message(&status)))?;
        let text = ctl::status_text(&status);
        if text != last {
            print_value(cli, format!("{text}\n"), ctl::status_json(&status));
            last = text;
        }
        match status.rollout.as_ref().map(|r| r.state.as_str()) {
            Some("completed") => return Ok(0),
            Some("paused") | Some("aborted") => return Ok(EXIT_ROLLOUT_STOPPED),
            _ => {}
        }
    }
    anyhow::bail!("the coordinator closed the status stream")
}
