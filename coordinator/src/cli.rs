//! The command lines of `kreachctl` and `kreach-coordinator`, kept in the library so that the man
//! pages and shell completions (packaging/gen-docs) are generated from the same definitions the
//! binaries parse.

/// `kreachctl`, the operator's command line.
pub mod kreachctl {
    use std::path::PathBuf;

    use clap::parser::ValueSource;
    use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};

    /// The coordinator `kreachctl` talks to when neither `--coordinator` nor `KREACH_COORDINATOR`
    /// says otherwise.
    pub const DEFAULT_COORDINATOR: &str = "https://127.0.0.1:7443";
    /// The certificates directory: where `certs init` writes and where the admin certificate is
    /// read from, unless `--certs` or `KREACH_CERTS` says otherwise.
    pub const DEFAULT_CERTS: &str = "/etc/kreach/certs";

    #[derive(Parser)]
    #[command(
        name = "kreachctl",
        version,
        about = "Operate kreach: validate and render cluster specs offline; plan, apply and follow rollouts on a coordinator; create the mutual-TLS certificates.",
        after_help = "The commands that talk to the coordinator (plan, apply, status, check, rollout, history, rollback, nodes, clusters, ...) take --coordinator URL[,URL...], --certs DIR and --insecure (or KREACH_COORDINATOR and KREACH_CERTS), and --cluster NAME (or KREACH_CLUSTER) once the coordinator holds several clusters (plan and apply take it from the spec); see their --help.\n\nExit codes: 0 success; 1 failure (unreachable coordinator, unreadable file, refused request); 2 the spec is invalid (a file over 4 MiB or not UTF-8 included) or the node is unknown; 3 the rollout paused or was aborted (status --watch, apply --wait); 4 (check) some client cannot reach some broker it should, or has not reported yet."
    )]
    pub struct Cli {
        /// Output format.
        #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
        pub output: Output,
        /// The commands that talk to the coordinator take `--coordinator`, `--certs` and
        /// `--insecure` after their name; these hidden copies keep the older spelling before the
        /// command (`kreachctl --coordinator URL status`) working. Read them through
        /// [`Cli::connection`].
        #[command(flatten)]
        legacy_connect: LegacyConnectArgs,
        #[command(subcommand)]
        pub command: Command,
    }

    #[derive(Args)]
    struct LegacyConnectArgs {
        #[arg(
            id = "legacy_coordinator",
            long = "coordinator",
            hide = true,
            env = "KREACH_COORDINATOR",
            default_value = DEFAULT_COORDINATOR
        )]
        coordinator: String,
        #[arg(
            id = "legacy_certs",
            long = "certs",
            hide = true,
            env = "KREACH_CERTS",
            default_value = DEFAULT_CERTS
        )]
        certs: PathBuf,
        #[arg(id = "legacy_insecure", long = "insecure", hide = true)]
        insecure: bool,
    }

    impl Cli {
        /// Where the coordinator is and how to authenticate: a flag after the command wins, then
        /// one before it, then the environment (KREACH_COORDINATOR, KREACH_CERTS), then the
        /// defaults.
        pub fn connection(&self) -> crate::ctl::Connection {
            let legacy = &self.legacy_connect;
            let Some(connect) = self.command.connect_args() else {
                return crate::ctl::Connection {
                    url: legacy.coordinator.clone(),
                    certs: legacy.certs.clone(),
                    insecure: legacy.insecure,
                    cluster: String::new(),
                };
            };
            crate::ctl::Connection {
                url: if connect.coordinator_on_command_line {
                    connect.coordinator.clone()
                } else {
                    legacy.coordinator.clone()
                },
                certs: if connect.certs_on_command_line {
                    connect.certs.clone()
                } else {
                    legacy.certs.clone()
                },
                insecure: connect.insecure || legacy.insecure,
                cluster: connect.cluster.clone(),
            }
        }
    }

    /// How to reach the coordinator: on every command that talks to it, and only on those.
    #[derive(Clone, Debug)]
    pub struct ConnectArgs {
        pub coordinator: String,
        pub certs: PathBuf,
        pub insecure: bool,
        pub cluster: String,
        coordinator_on_command_line: bool,
        certs_on_command_line: bool,
    }

    /// What clap parses; [`ConnectArgs`] adds whether each value was typed after the command (so
    /// it beats the hidden spelling before the command, and that one beats the environment).
    #[derive(Args)]
    struct RawConnectArgs {
        /// The coordinator's URL, or several separated by commas
        /// (`https://coord-1:7443,https://coord-2:7443`): the coordinators of a highly available
        /// setup, tried in order; one that cannot be reached, or that follows (`not the leader`),
        /// is passed over for the leader it names, else for the next.
        #[arg(
            long,
            global = true,
            value_name = "URL",
            env = "KREACH_COORDINATOR",
            default_value = DEFAULT_COORDINATOR
        )]
        coordinator: String,
        /// The certificates directory: ca.pem, admin.pem and admin.key (from `kreachctl certs
        /// init`).
        #[arg(
            long,
            global = true,
            value_name = "DIR",
            env = "KREACH_CERTS",
            default_value = DEFAULT_CERTS
        )]
        certs: PathBuf,
        /// Plaintext without certificates; only for a coordinator on a loopback address.
        #[arg(long, global = true)]
        insecure: bool,
        /// Which of the coordinator's clusters (a spec's `cluster.name`); needed once it holds
        /// more than one. plan and apply take the cluster from the spec.
        #[arg(long, global = true, value_name = "NAME", env = "KREACH_CLUSTER")]
        cluster: Option<String>,
    }

    impl FromArgMatches for ConnectArgs {
        fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
            let raw = RawConnectArgs::from_arg_matches(matches)?;
            let typed = |id| matches.value_source(id) == Some(ValueSource::CommandLine);
            Ok(ConnectArgs {
                coordinator: raw.coordinator,
                certs: raw.certs,
                insecure: raw.insecure,
                cluster: raw.cluster.unwrap_or_default(),
                coordinator_on_command_line: typed("coordinator"),
                certs_on_command_line: typed("certs"),
            })
        }

        fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
            *self = ConnectArgs::from_arg_matches(matches)?;
            Ok(())
        }
    }

    impl Args for ConnectArgs {
        fn augment_args(command: clap::Command) -> clap::Command {
            RawConnectArgs::augment_args(command)
        }

        fn augment_args_for_update(command: clap::Command) -> clap::Command {
            RawConnectArgs::augment_args_for_update(command)
        }
    }

    #[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum Output {
        /// Tables and sentences for people.
        Table,
        /// One JSON document, for scripts.
        Json,
    }

    /// Which client's property names `client-config` prints.
    #[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum ClientFormat {
        /// librdkafka: kcat, confluent-kafka and the clients built on it.
        Librdkafka,
        /// The Java client (and Kafka's own command-line tools).
        Java,
    }

    #[derive(Subcommand)]
    pub enum Command {
        /// Check a cluster spec and print every error, one per line (exit 2 when any); needs no
        /// coordinator.
        Validate {
            /// The cluster spec (TOML).
            spec: PathBuf,
        },
        /// Print a node's desired hosts block and listener settings; needs no coordinator.
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
            /// The cluster spec (TOML) to compare with what is applied.
            spec: PathBuf,
            /// Exit 0 even when host facts disagree with the spec (as `apply --force` would apply).
            #[arg(long)]
            force: bool,
            #[command(flatten)]
            connect: ConnectArgs,
        },
        /// Apply SPEC as a new generation and start its rollout (shows the plan and asks first).
        Apply {
            /// The cluster spec (TOML) to roll out.
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
            #[command(flatten)]
            connect: ConnectArgs,
        },
        /// Every node: role, agent online, released and applied generation, phase, last error;
        /// then the reachability matrix, client × broker (✓ or why not).
        Status {
            /// Follow the rollout live until it completes, pauses or is aborted.
            #[arg(long, short)]
            watch: bool,
            #[command(flatten)]
            connect: ConnectArgs,
        },
        /// Check that every client reaches every broker it should, as the client agents last
        /// reported it. Exit 0 when all do; exit 4 listing each failure (a client that has not
        /// reported yet counts as a failure: unknown).
        Check {
            #[command(flatten)]
            connect: ConnectArgs,
        },
        /// Control the rollout in progress.
        Rollout {
            #[command(subcommand)]
            action: RolloutAction,
            #[command(flatten)]
            connect: ConnectArgs,
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
            #[command(flatten)]
            connect: ConnectArgs,
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
            #[command(flatten)]
            connect: ConnectArgs,
        },
        /// The host facts agents reported: hostname, FQDN, addresses, whether Kafka runs.
        Nodes {
            #[command(flatten)]
            connect: ConnectArgs,
        },
        /// The Kafka clusters this coordinator holds (one per spec `cluster.name`): each one's
        /// newest generation, its rollout's state, and its nodes with their agents connected.
        Clusters {
            #[command(flatten)]
            connect: ConnectArgs,
        },
        /// Print the properties a Kafka client on CLIENT's host needs to reach the cluster: the
        /// bootstrap servers of its view, the listener's security protocol and SASL mechanism,
        /// and the Kafka CA file its agent installs (TLS listeners).
        #[command(name = "client-config")]
        ClientConfig {
            /// A client node of the applied spec.
            #[arg(value_name = "CLIENT")]
            client: String,
            /// Property names for librdkafka (kcat, confluent-kafka, Go/Python/.NET clients) or for
            /// the Java client.
            #[arg(long, value_enum, default_value_t = ClientFormat::Librdkafka)]
            format: ClientFormat,
            #[command(flatten)]
            connect: ConnectArgs,
        },
        /// From a client host's vantage, the steps a person takes by hand when a Kafka client
        /// cannot connect: resolve each advertised name (and which file or resolver answered), TCP
        /// connect, TLS handshake with hostname verification, SASL login, ApiVersions, Metadata,
        /// and the advertised endpoint compared with the spec. The client's agent takes the steps
        /// and each line is printed as it finishes; a broker's steps stop at the first that breaks.
        /// Changes nothing. Exit 0 when every step passed, 4 naming the first broken step, 1 when
        /// the agent cannot be asked (offline, not a client).
        Diagnose {
            /// A client node of the newest spec; its agent must be connected.
            #[arg(value_name = "CLIENT")]
            client: String,
            /// Only this broker (its id); default: every broker of the client's view.
            #[arg(long, value_name = "ID")]
            broker: Option<i32>,
            #[command(flatten)]
            connect: ConnectArgs,
        },
        /// The cluster's SCRAM users for SASL listeners: list them, add one (or change its
        /// password), remove one. kreachctl salts the password itself (PBKDF2, Kafka's SCRAM
        /// format); the coordinator stores only the salted credential, never the password, and
        /// every broker's agent keeps the users in Kafka (AlterUserScramCredentials). An add or
        /// remove is rolled out as a new generation of the newest spec.
        Users {
            #[command(subcommand)]
            action: UsersAction,
            #[command(flatten)]
            connect: ConnectArgs,
        },
        /// Create the mutual-TLS certificates; needs no coordinator.
        Certs {
            #[command(subcommand)]
            action: CertsAction,
        },
        /// Print a shell completion script for kreachctl to stdout.
        ///
        /// For example: `kreachctl completions bash > /etc/bash_completion.d/kreachctl`, or
        /// `kreachctl completions zsh > "${fpath[1]}/_kreachctl"`.
        Completions {
            /// The shell to complete for.
            #[arg(value_enum)]
            shell: clap_complete::Shell,
        },
    }

    impl Command {
        /// How to reach the coordinator; `None` for the offline commands (validate, render, certs,
        /// completions), which do not accept those flags.
        pub fn connect_args(&self) -> Option<&ConnectArgs> {
            match self {
                Command::Plan { connect, .. }
                | Command::Apply { connect, .. }
                | Command::Status { connect, .. }
                | Command::Check { connect }
                | Command::Rollout { connect, .. }
                | Command::History { connect, .. }
                | Command::Rollback { connect, .. }
                | Command::Nodes { connect }
                | Command::Clusters { connect }
                | Command::ClientConfig { connect, .. }
                | Command::Diagnose { connect, .. }
                | Command::Users { connect, .. } => Some(connect),
                Command::Validate { .. }
                | Command::Render { .. }
                | Command::Certs { .. }
                | Command::Completions { .. } => None,
            }
        }
    }

    /// Write `shell`'s completion script for kreachctl to `out`.
    pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "kreachctl", out);
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
    pub enum UsersAction {
        /// Every SCRAM user: name, mechanism, iterations, when added (never a credential).
        List,
        /// Add a user, or change its password: the password is read from standard input (one
        /// line), e.g. `printf '%s' "$PASSWORD" | kreachctl users add app`.
        Add {
            /// The user name clients log in with.
            #[arg(value_name = "NAME")]
            name: String,
            /// The SCRAM mechanism (the listener's `sasl_mechanism`).
            #[arg(long, value_parser = ["SCRAM-SHA-256", "SCRAM-SHA-512"], default_value = "SCRAM-SHA-512")]
            mechanism: String,
            /// PBKDF2 iterations (Kafka takes 4096 to 16384).
            #[arg(long, default_value_t = 8192)]
            iterations: u32,
        },
        /// Remove a user (every mechanism of it).
        Remove {
            /// The user to remove.
            #[arg(value_name = "NAME")]
            name: String,
        },
    }

    #[derive(Subcommand)]
    pub enum CertsAction {
        /// Create a CA, the coordinator's certificate, the admin certificate and one per node.
        Init {
            /// The certificates directory to write them to (refused if the files exist, unless
            /// --force); the commands that talk to the coordinator read the admin certificate from
            /// the same --certs.
            #[arg(
                long = "certs",
                alias = "dir",
                value_name = "DIR",
                env = "KREACH_CERTS",
                default_value = DEFAULT_CERTS
            )]
            dir: PathBuf,
            /// A node name from the spec (repeat for every node).
            #[arg(long = "node", value_name = "NODE", required = true)]
            nodes: Vec<String>,
            /// A DNS name or IP address the coordinator is reached at (repeat; default localhost and 127.0.0.1).
            #[arg(long = "coordinator-name", value_name = "NAME")]
            coordinator_names: Vec<String>,
            /// Validity in days.
            #[arg(long, default_value_t = kreach_runtime::tls::DEFAULT_VALID_DAYS)]
            days: u32,
            /// Overwrite certificates and keys that already exist in the directory (a new CA:
            /// every host needs its files again).
            #[arg(long)]
            force: bool,
        },
        /// Issue a certificate for one more node from the CA in the certificates directory.
        Issue {
            /// The certificates directory holding ca.pem and ca.key (from `certs init`); the node's
            /// files are written to its nodes/ folder.
            #[arg(
                long = "certs",
                alias = "dir",
                value_name = "DIR",
                env = "KREACH_CERTS",
                default_value = DEFAULT_CERTS
            )]
            dir: PathBuf,
            /// The node name, as in the spec.
            #[arg(long, value_name = "NODE")]
            node: String,
            /// Validity in days (default: 825, or until the CA expires when that is sooner).
            #[arg(long)]
            days: Option<u32>,
            /// Overwrite the node's certificate and key if they exist.
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
        /// The coordinator's config (listen address, state directory, TLS files, [store]).
        #[arg(
            long,
            short,
            default_value = "/etc/kreach/coordinator.toml",
            global = true
        )]
        pub config: PathBuf,
        /// Without a command: run the coordinator.
        #[command(subcommand)]
        pub command: Option<Command>,
    }

    #[derive(clap::Subcommand)]
    pub enum Command {
        /// Move every store (generations, rollout state, agent records, audit) from redb to etcd
        /// or back. The etcd side is the config's [store]; refuses, changing nothing, while a
        /// coordinator runs on either side, while a rollout is moving, or when the destination
        /// already holds a store.
        #[command(
            after_help = "Examples:\n  kreach-coordinator --config /etc/kreach/coordinator.toml migrate --from redb:/var/lib/kreach-coordinator --to etcd\n  kreach-coordinator migrate --from etcd --to redb:/var/lib/kreach-coordinator\n\nExit codes: 0 moved; 1 refused or failed (nothing changed at the destination unless it says so); 2 the config or the arguments are invalid."
        )]
        Migrate {
            /// Where the stores are now: `redb:PATH` (the state directory) or `etcd`.
            #[arg(long, value_name = "redb:PATH|etcd")]
            from: String,
            /// Where they go: `etcd` or `redb:PATH` (an empty state directory).
            #[arg(long, value_name = "etcd|redb:PATH")]
            to: String,
        },
    }
}
