//! `restart_unit UNIT`: restart one systemd unit through [`SystemdManager`] and report the outcome.
//!
//! Exit status 0 when the unit is active again, 1 on any failure (the error names the unit and its
//! state), 2 on a usage error. The e2e-systemd tier runs it inside a container booting real systemd.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kreach_agent::service::{ServiceManager, SystemdManager};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(unit), None) = (args.next(), args.next()) else {
        eprintln!("usage: restart_unit UNIT");
        return ExitCode::from(2);
    };
    let started = Instant::now();
    let outcome = SystemdManager::connect().and_then(|manager| {
        manager.restart(&unit, Duration::from_secs(30))?;
        Ok(manager.describe())
    });
    match outcome {
        Ok(manager) => {
            println!("restarted {unit} via {manager} in {:?}", started.elapsed());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("restart_unit: {error}");
            ExitCode::FAILURE
        }
    }
}
