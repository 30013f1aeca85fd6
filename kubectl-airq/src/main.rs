//! `kubectl airq`: drives airq's custom resources from kubectl. kubectl finds this binary on the `PATH` by its name
//! (`kubectl-airq`) and hands it the arguments after `airq`.

mod forecast;
mod status;
mod table;
mod wait;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// airq from kubectl: retrain models, run loads now, see what is not Ready and why, ask a model for a forecast.
#[derive(Debug, Parser)]
#[command(name = "kubectl-airq", bin_name = "kubectl airq", version)]
struct Cli {
    /// The namespace; the current context's when absent.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context to use; the current one when absent.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig file; `KUBECONFIG` or `~/.kube/config` when absent (in a pod: its service account).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every airq resource, Ready or why not.
    Status {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Retrain a PredictiveModel now (sets spec.retrainRequest) and wait for the new version to be served.
    Retrain {
        /// The PredictiveModel.
        model: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Run an EtlSchedule's load now (sets spec.runRequest) and wait for it to finish.
    Load {
        /// The EtlSchedule.
        schedule: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Ask a PredictiveModel's server for a forecast, through the API server's service proxy.
    Forecast {
        /// The PredictiveModel.
        model: String,
        /// The station code.
        #[arg(long)]
        station: String,
        /// The hour to forecast (RFC 3339, e.g. 2017-02-28T12:00:00Z); every hour of the horizon when absent.
        #[arg(long)]
        at: Option<String>,
        /// Confidence levels of the intervals, comma-separated (e.g. 0.5,0.95); the model's when absent.
        #[arg(long)]
        confidence: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// How long to wait, or not at all.
#[derive(Debug, Clone, clap::Args)]
struct WaitArgs {
    /// Return once the request is set, without waiting.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this long (e.g. 90s, 10m, 1h).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

async fn connect(cli: &Cli) -> anyhow::Result<(kube::Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&cli.kubeconfig, &cli.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("cannot read the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| anyhow::anyhow!("no cluster to talk to: {e} (set KUBECONFIG or --kubeconfig)"))?,
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((kube::Client::try_from(config)?, namespace))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (client, namespace) = connect(&cli).await?;
    match cli.command {
        Command::Status { all_namespaces } => {
            let scope = (!all_namespaces).then_some(namespace.as_str());
            let all_ready = status::run(&client, scope).await?;
            Ok(if all_ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Retrain { model, wait } => {
            wait::retrain(&client, &namespace, &model, (!wait.no_wait).then_some(wait.timeout)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load { schedule, wait } => {
            wait::load(&client, &namespace, &schedule, (!wait.no_wait).then_some(wait.timeout)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Forecast {
            model,
            station,
            at,
            confidence,
            output,
        } => {
            let request = forecast::Request {
                station,
                at,
                confidence,
            };
            forecast::run(&client, &namespace, &model, &request, output == Output::Json).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
