//! `kreachctl`: the operator's command line.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use kreach_coordinator::cli::kreachctl::{
    CertsAction, Cli, ClientFormat, Command, Output, RolloutAction, UsersAction,
};
use kreach_coordinator::ctl;
use kreach_domain::desired::node_spec;
use kreach_domain::spec::{read_spec_file, ClusterSpec, SpecFileError};
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
        Command::Certs { action } => certs(&cli, action),
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
    let parts = kreach_domain::desired::render_parts(&desired)
        .map_err(|message| anyhow::anyhow!("rendering node {}: {message}", desired.node))?;
    let rendered = kreach_domain::desired::render_text(&parts);
    let listener_settings: serde_json::Map<String, serde_json::Value> = parts
        .listener_settings
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key.to_string(), serde_json::Value::String(value)))
        .collect();
    let json = serde_json::json!({
        "node": desired.node,
        "role": ctl_role(&desired),
        "description": desired.describe(),
        "hosts_block": parts.hosts_block.unwrap_or_default(),
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

fn ctl_role(desired: &kreach_domain::desired::NodeSpec) -> &'static str {
    kreach_coordinator::core::role_word(&desired.role)
}

fn certs(cli: &Cli, action: &CertsAction) -> anyhow::Result<u8> {
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
            kreach_runtime::tls::init_certs(dir, &names, nodes, *days, *force)?
        }
        CertsAction::Issue {
            dir,
            node,
            days,
            force,
        } => kreach_runtime::tls::issue_node_cert(dir, node, *days, *force)?,
    };
    const ADVICE: &str = "Give each host only its own nodes/NODE.pem and .key plus ca.pem; keep ca.key on this machine.";
    let text: String = written
        .iter()
        .map(|path| format!("wrote {}\n", path.display()))
        .chain([format!("{ADVICE}\n")])
        .collect();
    let json = serde_json::json!({
        "written": written.iter().map(|path| path.display().to_string()).collect::<Vec<_>>(),
        "advice": ADVICE,
    });
    print_value(cli, text, json);
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

/// The cluster `apply` is about: the spec's `cluster.name`; a `--cluster` that names another one
/// is refused (the spec, not the flag, says which cluster it is).
fn spec_cluster(flag: &str, spec_toml: &str) -> anyhow::Result<String> {
    let Ok(spec) = kreach_domain::spec::ClusterSpec::parse(spec_toml) else {
        // The coordinator's plan names every problem of the spec.
        return Ok(flag.to_string());
    };
    if !flag.is_empty() && flag != spec.name {
        anyhow::bail!(
            "--cluster {flag} but the spec is cluster {:?} (cluster.name): apply keys by the spec's name",
            spec.name
        );
    }
    Ok(spec.name)
}

async fn remote(cli: &Cli) -> anyhow::Result<u8> {
    let mut connection = cli.connection();
    let mut admin = connection.admin().await?;
    let fail = |status: tonic::Status| anyhow::anyhow!(ctl::status_message(&status));
    match &cli.command {
        Command::Plan { spec, force, .. } => {
            let spec_toml = read_spec_file(spec)?;
            spec_cluster(&connection.cluster, &spec_toml)?;
            let plan = admin
                .plan(pb::PlanRequest {
                    spec_toml,
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
            connection.cluster = spec_cluster(&connection.cluster, &spec_toml)?;
            let cluster = connection.cluster.clone();
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
                return follow(cli, &connection, &mut admin, &cluster, applied.generation).await;
            }
            Ok(0)
        }
        Command::Status { watch, .. } => {
            if *watch {
                let status = admin
                    .status(pb::StatusRequest {
                        cluster: connection.cluster.clone(),
                    })
                    .await
                    .map_err(fail)?
                    .into_inner();
                if status.rollout.is_none() {
                    print_value(cli, ctl::status_text(&status), ctl::status_json(&status));
                    anyhow::bail!(
                        "no rollout to follow: no spec applied yet (kreachctl apply SPEC first)"
                    );
                }
                return follow(cli, &connection, &mut admin, &connection.cluster, 0).await;
            }
            let status = admin
                .status(pb::StatusRequest {
                    cluster: connection.cluster.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            print_value(cli, ctl::status_text(&status), ctl::status_json(&status));
            Ok(0)
        }
        Command::Check { .. } => {
            let status = admin
                .status(pb::StatusRequest {
                    cluster: connection.cluster.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            if status.rollout.is_none() {
                anyhow::bail!("no spec applied yet: nothing to check (kreachctl apply SPEC first)");
            }
            if !status.served_by.is_empty() {
                // Agents report their hosts' problems to the leader alone: a pass here could
                // hide one.
                anyhow::bail!(
                    "check needs the coordinator that leads, and none answered: this is {} (give kreachctl every coordinator's URL, or try again once one leads)",
                    status.served_by
                );
            }
            let failures = ctl::check_failures(&status.reachability);
            let mut problems = ctl::host_problems(&status.nodes);
            problems.extend(ctl::certificate_problems(&status.certificates));
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
            let control = || pb::RolloutControl {
                cluster: connection.cluster.clone(),
            };
            let status = match action {
                RolloutAction::Pause => admin.pause(control()).await,
                RolloutAction::Resume => admin.resume(control()).await,
                RolloutAction::Abort => admin.abort(control()).await,
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
                    cluster: connection.cluster.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            note_served_by(&history.served_by, false);
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
                cluster: connection.cluster.clone(),
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
                return follow(
                    cli,
                    &connection,
                    &mut admin,
                    &connection.cluster,
                    applied.generation,
                )
                .await;
            }
            Ok(0)
        }
        Command::ClientConfig { client, format, .. } => {
            let config = admin
                .client_config(pb::ClientConfigRequest {
                    client: client.clone(),
                    cluster: connection.cluster.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            let properties = ctl::client_properties(&config, *format == ClientFormat::Java);
            let text: String = properties
                .iter()
                .map(|(key, value)| format!("{key}={value}\n"))
                .collect();
            let json = serde_json::Value::Object(
                properties
                    .into_iter()
                    .map(|(key, value)| (key, serde_json::Value::String(value)))
                    .collect(),
            );
            print_value(cli, text, json);
            Ok(0)
        }
        Command::Diagnose { client, broker, .. } => {
            let mut stream = admin
                .diagnose(pb::DiagnoseRequest {
                    node: client.clone(),
                    broker: *broker,
                    cluster: connection.cluster.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            let table = cli.output == Output::Table;
            if table {
                println!("diagnosing from {client}'s vantage (its agent takes the steps):");
            }
            let mut steps: Vec<kreach_domain::diagnose::Step> = Vec::new();
            loop {
                let message = stream.message().await.map_err(fail)?.ok_or_else(|| {
                    anyhow::anyhow!("the coordinator ended the diagnosis before its last step")
                })?;
                if message.done {
                    if !message.error.is_empty() {
                        return Err(anyhow::anyhow!("diagnose {client}: {}", message.error));
                    }
                    break;
                }
                let step = kreach_domain::diagnose::Step::from(&message);
                if table {
                    println!("{}", step.line());
                }
                steps.push(step);
            }
            let broken = steps.iter().find(|step| !step.ok);
            let text = match broken {
                None => format!("{}\n", kreach_domain::diagnose::ALL_PASSED),
                Some(step) => format!("{}\n", step.broken_line()),
            };
            let json = serde_json::json!({
                "client": client,
                "ok": broken.is_none(),
                "broken": broken,
                "steps": steps,
            });
            print_value(cli, text, json);
            Ok(if broken.is_some() {
                EXIT_UNREACHABLE
            } else {
                0
            })
        }
        Command::Users { action, .. } => {
            let request = match action {
                UsersAction::List => pb::UsersRequest {
                    action: "list".into(),
                    ..pb::UsersRequest::default()
                },
                UsersAction::Add {
                    name,
                    mechanism,
                    iterations,
                } => {
                    use std::io::{BufRead, IsTerminal};
                    if std::io::stdin().is_terminal() {
                        return Err(anyhow::anyhow!(
                            "users add: pipe the password on standard input (kreachctl does not read it from a terminal), e.g. printf '%s' \"$PASSWORD\" | kreachctl users add {name}"
                        ));
                    }
                    let mut password = String::new();
                    std::io::stdin().lock().read_line(&mut password)?;
                    let password = password.trim_end_matches(['\n', '\r']);
                    let user = kreach_coordinator::users::salt_password(
                        name,
                        mechanism,
                        *iterations,
                        password,
                    )
                    .map_err(|error| anyhow::anyhow!("users add: {error}"))?;
                    pb::UsersRequest {
                        action: "add".into(),
                        user: Some(pb::ScramUser::from(&user)),
                        ..pb::UsersRequest::default()
                    }
                }
                UsersAction::Remove { name } => pb::UsersRequest {
                    action: "remove".into(),
                    name: name.clone(),
                    ..pb::UsersRequest::default()
                },
            };
            let request = pb::UsersRequest {
                cluster: connection.cluster.clone(),
                ..request
            };
            let response = admin.users(request).await.map_err(fail)?.into_inner();
            let mut text = String::new();
            if response.generation > 0 {
                text.push_str(&format!(
                    "generation {} rolls the change out to the brokers (kreachctl status)\n",
                    response.generation
                ));
            } else if !matches!(action, UsersAction::List) {
                text.push_str(
                    "no spec applied yet: the brokers get their users with the first apply\n",
                );
            }
            if response.users.is_empty() {
                text.push_str("no SCRAM users\n");
            }
            for user in &response.users {
                text.push_str(&format!(
                    "{}\t{}\t{} iterations\tadded {}\n",
                    user.name,
                    user.mechanism,
                    user.iterations,
                    ctl::format_ms(user.added_ms)
                ));
            }
            let json = serde_json::json!({
                "generation": response.generation,
                "users": response.users.iter().map(|u| serde_json::json!({
                    "name": u.name, "mechanism": u.mechanism, "iterations": u.iterations, "added_ms": u.added_ms,
                })).collect::<Vec<_>>(),
            });
            print_value(cli, text, json);
            Ok(0)
        }
        Command::Nodes { .. } => {
            let nodes = admin
                .nodes(pb::NodesRequest {
                    cluster: connection.cluster.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            note_served_by(&nodes.served_by, nodes.liveness_unknown);
            print_value(cli, ctl::nodes_text(&nodes), ctl::nodes_json(&nodes));
            Ok(0)
        }
        Command::Clusters { .. } => {
            let clusters = admin
                .clusters(pb::ClustersRequest {})
                .await
                .map_err(fail)?
                .into_inner();
            note_served_by(&clusters.served_by, clusters.liveness_unknown);
            print_value(
                cli,
                ctl::clusters_text(&clusters),
                ctl::clusters_json(&clusters),
            );
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

/// Follow the status until the rollout completes (0), pauses or aborts (3). On a terminal the
/// status is redrawn in place under a progress line; otherwise (a pipe, a log) one line per event;
/// `--output json` prints each new status. A completed rollout is followed a little longer, until
/// every online client reported its reachability, so that `check` right after gives the final
/// answer. `generation`: the one just applied (0: whatever rollout is newest); an older one's
/// state ends nothing.
async fn follow(
    cli: &Cli,
    connection: &ctl::Connection,
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    cluster: &str,
    generation: u64,
) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    use tokio_stream::StreamExt;
    /// How long a completed rollout waits for clients' first reachability reports.
    const REACHABILITY_GRACE: std::time::Duration = std::time::Duration::from_secs(15);
    /// With several coordinators: how often a lost stream is followed on another one.
    const RECONNECTS: u32 = 10;
    let terminal = cli.output == Output::Table && std::io::stdout().is_terminal();
    let started = std::time::Instant::now();
    let watch = |admin: &mut pb::admin_service_client::AdminServiceClient<_>| {
        let mut admin = admin.clone();
        let request = pb::StatusRequest {
            cluster: cluster.to_string(),
        };
        async move {
            admin
                .watch(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| anyhow::anyhow!(ctl::status_message(&status)))
        }
    };
    let mut stream = watch(admin).await?;
    // A stream lost with several coordinators listed (the leader stopped or stepped down) is
    // followed again on the one that leads now, through the same list.
    let failover = connection.urls()?.len() > 1;
    let mut reconnects = 0;
    let mut previous: Option<pb::StatusResponse> = None;
    let mut completed_at: Option<std::time::Instant> = None;
    loop {
        // Once completed, the stream may stay quiet: wake up to end after the grace period.
        let wait = completed_at
            .map(|at| REACHABILITY_GRACE.saturating_sub(at.elapsed()))
            .unwrap_or(std::time::Duration::MAX);
        let update = match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(update)) => Some(update),
            Ok(None) => None,
            Err(_) => {
                println!("(some clients have not reported their reachability yet: `kreachctl check` shows them as they do)");
                return Ok(0);
            }
        };
        let received = match update {
            Some(Ok(status)) => Ok(status),
            Some(Err(status)) if ctl::is_lost_connection(&status) => {
                Err(ctl::status_message(&status))
            }
            Some(Err(status)) => anyhow::bail!(ctl::status_message(&status)),
            None => Err("the coordinator closed the status stream".to_string()),
        };
        let status = match received {
            Ok(status) => status,
            Err(lost) if !failover || reconnects >= RECONNECTS => anyhow::bail!(lost),
            Err(lost) => {
                reconnects += 1;
                eprintln!(
                    "kreachctl: {lost}; following the rollout on the coordinator that leads now"
                );
                *admin = connection.admin().await?;
                stream = watch(admin).await?;
                continue;
            }
        };
        // A status from before `generation` (a follower's copy of the store, up to a second old,
        // while the leader changes) says nothing of its rollout: not shown, and it ends nothing.
        if status
            .rollout
            .as_ref()
            .is_none_or(|rollout| rollout.generation < generation)
        {
            continue;
        }
        if previous.as_ref() != Some(&status) {
            match cli.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&ctl::status_json(&status))?
                ),
                Output::Table if terminal => {
                    let progress = status
                        .rollout
                        .as_ref()
                        .map(|rollout| ctl::progress_line(rollout, started.elapsed()))
                        .unwrap_or_default();
                    // Home and clear, then the whole status: redrawn in place.
                    print!("\x1b[H\x1b[2J{progress}\n\n{}", ctl::status_text(&status));
                }
                Output::Table => {
                    for line in ctl::status_events(previous.as_ref(), &status) {
                        println!("{line}");
                    }
                }
            }
        }
        let state = status.rollout.as_ref().map(|r| r.state.clone());
        let online: Vec<&str> = status
            .nodes
            .iter()
            .filter(|node| node.online)
            .map(|node| node.node.as_str())
            .collect();
        let unreported = status
            .reachability
            .iter()
            .any(|row| !row.current && online.contains(&row.client.as_str()));
        previous = Some(status);
        match state.as_deref() {
            Some("completed") if !unreported => return Ok(0),
            Some("completed") => {
                completed_at.get_or_insert_with(std::time::Instant::now);
            }
            Some("paused") | Some("aborted") => return Ok(EXIT_ROLLOUT_STOPPED),
            _ => {}
        }
    }
}

/// A follower's answer: say so on standard error (standard output stays the answer itself).
fn note_served_by(served_by: &str, liveness_unknown: bool) {
    if let Some(note) = ctl::served_by_note(served_by, liveness_unknown) {
        eprintln!("{note}");
    }
}
