//! `kreachctl`: the operator's command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kreach_common::desired::node_spec;
use kreach_common::spec::ClusterSpec;
use kreach_common::{hosts, properties};

const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;

#[derive(Parser)]
#[command(
    name = "kreachctl",
    version,
    about = "Operate kreach: validate a cluster spec and see what each node will look like.",
    after_help = "Exit codes: 0 success; 1 failure (unreadable file); 2 the spec is invalid or the node is unknown."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a cluster spec and print every error, one per line (exit 2 when any).
    Validate {
        /// The cluster spec (TOML).
        spec: PathBuf,
    },
    /// Print a node's desired hosts block and listener settings.
    Render {
        /// The cluster spec (TOML).
        spec: PathBuf,
        /// The node, as named in the spec's [[broker]] or [[client]] `node`.
        #[arg(long)]
        node: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Validate { spec } => validate(spec),
        Command::Render { spec, node } => render(spec, node),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("kreachctl: error: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Parse the spec; on errors print each as `SPEC: field: message` and return None.
fn load_spec(path: &Path) -> anyhow::Result<Option<ClusterSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match ClusterSpec::parse(&text) {
        Ok(spec) => Ok(Some(spec)),
        Err(errors) => {
            for error in &errors.0 {
                println!("{}: {error}", path.display());
            }
            eprintln!(
                "kreachctl: {} error(s) in {}",
                errors.0.len(),
                path.display()
            );
            Ok(None)
        }
    }
}

fn validate(path: &Path) -> anyhow::Result<u8> {
    let Some(spec) = load_spec(path)? else {
        return Ok(EXIT_INVALID);
    };
    println!(
        "{}: valid: cluster {}, {} broker(s), {} client(s), public access {}",
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
    Ok(0)
}

fn render(path: &Path, node: &str) -> anyhow::Result<u8> {
    let Some(spec) = load_spec(path)? else {
        return Ok(EXIT_INVALID);
    };
    let desired = match node_spec(&spec, node) {
        Ok(desired) => desired,
        Err(error) => {
            eprintln!("kreachctl: {error}");
            return Ok(EXIT_INVALID);
        }
    };
    println!("# node {}", desired.describe());
    println!("# hosts block");
    if desired.hosts_entries.is_empty() {
        println!("(none: this node needs no hosts entries; any kreach block is removed)");
    } else {
        let block = hosts::apply_block("", &desired.cluster, &desired.hosts_entries)
            .context("rendering the hosts block")?;
        print!("{}", block.content);
    }
    if let Some(listeners) = &desired.listeners {
        println!("# listener settings (server.properties; other listeners' entries, such as CONTROLLER's, are kept)");
        let values =
            properties::owned_values(listeners).context("rendering the listener settings")?;
        for (key, value) in values {
            println!("{key}={value}");
        }
    }
    Ok(0)
}
