//! `airq`: the whole platform on one machine.

mod resources;
mod up;
mod work;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// airq on one machine: embedded SQLite, every service in one process, the same YAML resources as a cluster.
#[derive(Debug, Parser)]
#[command(name = "airq", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: gateway, dashboard, ETL and predictive services, acting on a folder of resources.
    Up(up::UpArgs),
    /// Check a folder of resources with the rules the operator applies, and list what `up` would do with them.
    Validate {
        /// The folder of YAML files.
        #[arg(default_value = "examples")]
        resources: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Up(args) => up::up(args).await.map(|()| ExitCode::SUCCESS),
        Command::Validate { resources } => validate(&resources),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use kube::ResourceExt;
    let resources = resources::read_dir(dir)?;
    for s in &resources.etl_schedules {
        println!("EtlSchedule/{}: valid", s.name_any());
    }
    for m in &resources.models {
        println!("PredictiveModel/{}: valid", m.name_any());
    }
    for a in &resources.adhoc_services {
        println!("AdhocService/{}: valid", a.name_any());
    }
    if let Some(p) = &resources.platform {
        println!("Platform/{}: valid", p.name_any());
    }
    for i in &resources.ignored {
        println!("{i}: not an airq resource, ignored");
    }
    for i in &resources.invalid {
        println!("{i}");
    }
    Ok(if resources.invalid.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
