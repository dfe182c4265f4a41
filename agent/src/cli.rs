//! The `kreach-agent` command line, kept in the library so that the man page and shell completions
//! (packaging/gen-docs) are generated from the same definition the binary parses.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kreach-agent",
    version,
    about = "Keeps this host's Kafka reachability in its desired state: the kreach block in the hosts file, the broker's listener settings, and Kafka restarts.",
    after_help = "Exit codes: 0 converged; 1 failed (nothing half-written; \"rollback failed\": the previous config is back but the service does not serve on it either, the node needs attention); 2 invalid spec or config; 3 a health gate failed and the previous config was restored; 4 unmanaged hosts lines shadow kreach's entries (everything else converged; with --dry-run, nothing was changed)."
)]
pub struct Cli {
    /// The agent's own config: node name, state directory, the files and unit it may manage.
    #[arg(long, short, default_value = "/etc/kreach/agent.toml", global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Apply a cluster spec to this node without a coordinator: print the plan (a unified diff per
    /// file and the restarts it implies), then write, restart and verify.
    #[command(override_usage = "kreach-agent apply-local [OPTIONS] <SPEC>")]
    ApplyLocal {
        /// The cluster spec (TOML), as `kreachctl validate SPEC` and `kreachctl apply SPEC` take it.
        #[arg(value_name = "SPEC", required_unless_present = "spec_option")]
        spec: Option<PathBuf>,
        /// The older spelling, `--spec SPEC`, kept for existing scripts.
        #[arg(
            id = "spec_option",
            long = "spec",
            value_name = "SPEC",
            hide = true,
            conflicts_with = "spec"
        )]
        spec_option: Option<PathBuf>,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run as a daemon: enforce the last applied state and repair drift in the managed files; with
    /// [coordinator] in the config, also apply the releases the coordinator sends for this node.
    Run,
    /// Print the last applied state of this node (JSON).
    State,
    /// Print a shell completion script for kreach-agent to stdout (reads no config).
    ///
    /// For example: `kreach-agent completions bash > /etc/bash_completion.d/kreach-agent`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the audit trail: every change the agent made to a managed file on this host (file,
    /// old and new sha256, action, reason, generation, who released it), oldest first. Kept in
    /// STATE_DIR/audit.jsonl.
    Audit {
        /// Only the last N entries.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// One JSON object per line, as stored.
        #[arg(long)]
        json: bool,
    },
    /// On a client host: the steps a person takes by hand when a Kafka client cannot connect,
    /// against every broker of this client's view (or one): resolve the advertised name (and what
    /// answered), TCP connect, TLS handshake with hostname verification, SASL login, ApiVersions,
    /// Metadata, and the advertised endpoint compared with the spec; each with its result and
    /// time, printed as it finishes. A broker's steps stop at the first that breaks. Exit 0 when
    /// every step passed, 4 when one broke (named on the last line).
    Diagnose {
        /// Only this broker id.
        #[arg(long, value_name = "ID")]
        broker: Option<i32>,
        /// One JSON object per step (broker_id, step, ok, detail, elapsed_ms).
        #[arg(long)]
        json: bool,
    },
    /// On a broker: list the dynamic broker configs (set over the Kafka protocol, e.g. with
    /// `kafka-configs.sh --alter`, and kept in the cluster's metadata) that Kafka uses instead of
    /// what kreach wrote to server.properties for a key it owns (`advertised.listeners`,
    /// `listeners`, the protocol map, a listener's TLS/SASL keys). Asks this broker over its
    /// PLAINTEXT listener. Exit 0 when there are none, 3 when some hide kreach's edits.
    Overrides {
        /// Delete this broker's overrides (per-broker ones; a cluster-wide default is named with
        /// the kafka-configs.sh command that deletes it), then list again.
        #[arg(long)]
        delete: bool,
    },
}

/// Write `shell`'s completion script for kreach-agent to `out`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "kreach-agent", out);
}
