//! `kreach-gen-docs OUT_DIR`: writes the man pages and shell completions the packages ship, generated
//! from the very `clap` definitions the binaries parse, so they cannot drift from `--help`.
//!
//! Layout under OUT_DIR (mirrors the install paths):
//!   man/kreach-agent.8  man/kreach-agent-apply-local.8 …  (one page per subcommand, daemons in 8)
//!   man/kreach-coordinator.8
//!   man/kreachctl.1  man/kreachctl-apply.1  man/kreachctl-rollout-pause.1 …  (the CLI in 1)
//!   bash/<bin>.bash  zsh/_<bin>  fish/<bin>.fish
//!
//! The top-level pages list their subcommands as `kreachctl-apply(1)` and so on; every page so
//! named is written here (see the tests in tests/generated.rs).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .context("usage: kreach-gen-docs OUT_DIR")?;
    let out = Path::new(&out);
    // Daemons in section 8 (the units say man:kreach-agent(8)), the operator CLI in section 1.
    let commands = [
        (kreach_agent::cli::Cli::command(), "8"),
        (kreach_coordinator::cli::coordinator::Cli::command(), "8"),
        (kreach_coordinator::cli::kreachctl::Cli::command(), "1"),
    ];
    for (command, section) in commands {
        write_man(out, command.clone(), section)?;
        write_completions(out, command)?;
    }
    Ok(())
}

/// Write the page of `command` and one per subcommand, recursively (`kreachctl-rollout-pause`),
/// named as the parent pages refer to them.
fn write_man(out: &Path, command: clap::Command, section: &'static str) -> anyhow::Result<()> {
    let dir = out.join("man");
    std::fs::create_dir_all(&dir)?;
    // No `help` subcommand page; build() gives every subcommand its full name (display name).
    let mut command = command.disable_help_subcommand(true);
    command.build();
    write_man_tree(&dir, &command, section)
}

fn write_man_tree(
    dir: &Path,
    command: &clap::Command,
    section: &'static str,
) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(command.clone())
        .section(section)
        .manual("kreach")
        .source(format!("kreach {}", env!("CARGO_PKG_VERSION")));
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_man_tree(dir, sub, section)?;
    }
    Ok(())
}

fn write_completions(out: &Path, mut command: clap::Command) -> anyhow::Result<()> {
    let name = command.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let dir = out.join(shell.to_string());
        std::fs::create_dir_all(&dir)?;
        clap_complete::generate_to(shell, &mut command, &name, &dir)
            .with_context(|| format!("writing {shell} completions for {name}"))?;
    }
    Ok(())
}
