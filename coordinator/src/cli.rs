//! The command lines of `kreachctl` and `kreach-coordinator`, kept in the library so that the man
//! pages and shell completions (packaging/gen-docs) are generated from the same definitions the
//! binaries parse.

/// `kreachctl`, the operator's command line.
pub mod kreachctl {
    use std::path::PathBuf;

    use clap::{Parser, Subcommand};

    #[derive(Parser)]
    #[command(
        name = "kreachctl",
        version,
        about = "Operate kreach: validate and render cluster specs offline; plan, apply and follow rollouts on a coordinator; create the mutual-TLS certificates.",
        after_help = "Exit codes: 0 success; 1 failure (unreachable coordinator, unreadable file, refused request); 2 the spec is invalid (a file over 4 MiB or not UTF-8 included) or the node is unknown; 3 the rollout paused or was aborted (status --watch, apply --wait); 4 (check) some client cannot reach some broker it should, or has not reported yet."
    )]
    pub struct Cli {
        /// The coordinator's URL.
        #[arg(
            long,
            global = true,
            env = "KREACH_COORDINATOR",
            default_value = "https://127.0.0.1:7443"
        )]
        pub coordinator: String,
        /// Directory with ca.pem, admin.pem and admin.key (from `kreachctl certs init`).
        #[arg(
            long,
            global = true,
            env = "KREACH_CERTS",
            default_value = "/etc/kreach/certs"
        )]
        pub certs: PathBuf,
        /// Plaintext without certificates; only for a coordinator on a loopback address.
        #[arg(long, global = true)]
        pub insecure: bool,
        /// Output format.
        #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
        pub output: Output,
        #[command(subcommand)]
        pub command: Command,
    }

    #[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum Output {
        Table,
        Json,
    }

    #[derive(Subcommand)]
    pub enum Command {
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
        /// Show what applying SPEC would change: per-node diffs and the rollout's step order. Changes
        /// nothing. Exits 1 when host facts disagree with the spec (apply would refuse), unless --force.
        Plan {
            spec: PathBuf,
            /// Exit 0 even when host facts disagree with the spec (as `apply --force` would apply).
            #[arg(long)]
            force: bool,
        },
        /// Apply SPEC as a new generation and start its rollout (shows the plan and asks first).
        Apply {
            spec: PathBuf,
            /// Do not ask for confirmation.
            #[arg(long, short)]
            yes: bool,
            /// Apply even when host facts disagree with the spec.
            #[arg(long)]
            force: bool,
            /// Follow the rollout until it completes, pauses or is aborted.
            #[arg(long)]
            wait: bool,
        },
        /// Every node: role, agent online, released and applied generation, phase, last error;
        /// then the reachability matrix, client × broker (✓ or why not).
        Status {
            /// Follow the rollout live until it completes, pauses or is aborted.
            #[arg(long, short)]
            watch: bool,
        },
        /// Check that every client reaches every broker it should, as the client agents last
        /// reported it. Exit 0 when all do; exit 4 listing each failure (a client that has not
        /// reported yet counts as a failure: unknown).
        Check,
        /// Control the rollout in progress.
        Rollout {
            #[command(subcommand)]
            action: RolloutAction,
        },
        /// Every applied generation; with --node, what kreach changed on that node and why (its
        /// agent's audit trail: file, old and new hash, action, reason, generation, releaser).
        History {
            /// Show this node's changes instead of the generations.
            #[arg(long, value_name = "NODE")]
            node: Option<String>,
            /// With --node: only the last N changes.
            #[arg(long, value_name = "N", requires = "node")]
            last: Option<u32>,
        },
        /// Roll out an earlier generation's spec again, as a new generation (shows the plan and
        /// asks first).
        Rollback {
            /// The generation to return to (see `kreachctl history`).
            #[arg(long)]
            to: u64,
            /// Do not ask for confirmation.
            #[arg(long, short)]
            yes: bool,
            /// Apply even when host facts disagree with the spec.
            #[arg(long)]
            force: bool,
            /// Follow the rollout until it completes, pauses or is aborted.
            #[arg(long)]
            wait: bool,
        },
        /// The host facts agents reported: hostname, FQDN, addresses, whether Kafka runs.
        Nodes,
        /// Create mutual-TLS certificates.
        Certs {
            #[command(subcommand)]
            action: CertsAction,
        },
    }

    #[derive(Subcommand)]
    pub enum RolloutAction {
        /// Stop releasing steps (what is released stays).
        Pause,
        /// Continue a paused rollout, retrying the step that paused it.
        Resume,
        /// Stop the rollout for good; nodes keep what they were released.
        Abort,
    }

    #[derive(Subcommand)]
    pub enum CertsAction {
        /// Create a CA, the coordinator's certificate, the admin certificate and one per node.
        Init {
            /// Where to write them (refused if they exist, unless --force).
            #[arg(long)]
            dir: PathBuf,
            /// A node name from the spec (repeat for every node).
            #[arg(long = "node", required = true)]
            nodes: Vec<String>,
            /// A DNS name or IP address the coordinator is reached at (repeat; default localhost and 127.0.0.1).
            #[arg(long = "coordinator-name")]
            coordinator_names: Vec<String>,
            /// Validity in days.
            #[arg(long, default_value_t = kreach_common::tls::DEFAULT_VALID_DAYS)]
            days: u32,
            #[arg(long)]
            force: bool,
        },
        /// Issue a certificate for one more node from the CA in DIR.
        Issue {
            #[arg(long)]
            dir: PathBuf,
            #[arg(long)]
            node: String,
            /// Validity in days (default: 825, or until the CA expires when that is sooner).
            #[arg(long)]
            days: Option<u32>,
            #[arg(long)]
            force: bool,
        },
    }
}

/// `kreach-coordinator`, the daemon.
pub mod coordinator {
    use std::path::PathBuf;

    use clap::Parser;

    #[derive(Parser)]
    #[command(
        name = "kreach-coordinator",
        version,
        about = "Holds kreach's desired state and rolls changes out across agents: one broker step at a time, health-gated, controller last, pausing on failure."
    )]
    pub struct Cli {
        /// The coordinator's config (listen address, state directory, TLS files).
        #[arg(long, short, default_value = "/etc/kreach/coordinator.toml")]
        pub config: PathBuf,
    }
}
