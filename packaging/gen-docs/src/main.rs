//! `kreach-gen-docs OUT_DIR`: writes the man pages and shell completions the packages ship, generated
//! from the very `clap` definitions the binaries parse, so they cannot drift from `--help`.
//!
//! Layout under OUT_DIR (mirrors the install paths):
//!   man/kreach-agent.8  man/kreach-coordinator.8  man/kreachctl.1
//!   bash/<bin>  zsh/_<bin>  fish/<bin>.fish

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

fn write_man(out: &Path, command: clap::Command, section: &'static str) -> anyhow::Result<()> {
    let dir = out.join("man");
    std::fs::create_dir_all(&dir)?;
    let name = command.get_name().to_string();
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .section(section)
        .manual("kreach")
        .source(format!("kreach {}", env!("CARGO_PKG_VERSION")))
        .render(&mut page)?;
    let path = dir.join(format!("{name}.{section}"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
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
