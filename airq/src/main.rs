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
    println!(
        "{}: what `airq up --resources {}` would do",
        dir.display(),
        dir.display()
    );
    for s in &resources.etl_schedules {
        let name = s.name_any();
        let when = match (&s.spec.schedule, s.spec.suspend) {
            (_, true) => "suspended: not loaded".to_owned(),
            (None, false) => "loaded once at the start (not again once a run with this spec succeeded)".to_owned(),
            (Some(cron), false) => format!(
                "loaded at each `{cron}` ({}), not at the start",
                s.spec.time_zone.as_deref().unwrap_or("UTC")
            ),
        };
        println!("  EtlSchedule/{name}: {when}");
        println!("    source: {}", source_line(&s.spec.source));
    }
    for m in &resources.models {
        let spec = &m.spec;
        println!(
            "  PredictiveModel/{}: trained once the one-off loads have stored their values, when no stored version has its revision; then served",
            m.name_any()
        );
        println!(
            "    {} forecasts of {}{} for {} hours, intervals at {}",
            spec.algorithm.name(),
            spec.target.pollutant,
            if spec.target.stations.is_empty() {
                " at every station".to_owned()
            } else {
                format!(" at {}", spec.target.stations.join(", "))
            },
            spec.horizon_hours,
            spec.confidence_levels
                .iter()
                .map(|c| format!("{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for a in &resources.adhoc_services {
        match a.annotations().get(up::LOCAL_URL_ANNOTATION) {
            Some(url) => println!(
                "  AdhocService/{}: routed at {} to {url} (its annotation {})",
                a.name_any(),
                a.spec.route.path_prefix,
                up::LOCAL_URL_ANNOTATION
            ),
            None => println!(
                "  AdhocService/{}: not routed on one machine (nothing runs its image here): give it the annotation \
                 {}: http://127.0.0.1:PORT of a process you run, and {} leads there",
                a.name_any(),
                up::LOCAL_URL_ANNOTATION,
                a.spec.route.path_prefix
            ),
        }
    }
    match &resources.platform {
        Some(p) => println!("  Platform/{}: its access settings for the core routes", p.name_any()),
        None => println!("  no Platform: the core routes with their default access"),
    }
    for i in &resources.ignored {
        println!("  {i}: not an airq resource, ignored");
    }
    for i in &resources.invalid {
        println!("  {i}");
    }
    if resources.invalid.is_empty() {
        println!("valid");
    }
    Ok(if resources.invalid.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where an EtlSchedule's values come from, and what reaching it needs here.
fn source_line(source: &airq_api::etl::EtlSource) -> String {
    if let Some(csv) = &source.csv {
        let url = csv.url.as_str();
        if url.starts_with("http://") || url.starts_with("https://") {
            return format!("CSV from {url}: needs the network to reach it");
        }
        let path = std::path::Path::new(url);
        let found = if path.is_dir() {
            let files = std::fs::read_dir(path)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            name.ends_with(".csv") || name.ends_with(".csv.gz")
                        })
                        .count()
                })
                .unwrap_or(0);
            format!("a folder of {files} CSV files")
        } else if path.is_file() {
            "a file".to_owned()
        } else {
            "NOT FOUND on this machine: the load will fail".to_owned()
        };
        return format!("CSV {url} ({found})");
    }
    if let Some(openaq) = &source.openaq {
        return format!(
            "OpenAQ v3, locations {:?}: needs the internet and an API key (--openaq-api-key or OPENAQ_API_KEY)",
            openaq.locations
        );
    }
    if source.open_meteo.is_some() {
        return "Open-Meteo air quality: needs the internet".to_owned();
    }
    "no source".to_owned()
}
