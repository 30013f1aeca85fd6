use airq_predictive::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse()
        .into_command(std::env::args_os())
        .unwrap_or_else(|e| e.exit())
    {
        Command::Serve(config) => airq_predictive::run(config).await,
        Command::Train(args) => airq_predictive::cli::train(args).await,
        Command::Evaluate(args) => airq_predictive::cli::evaluate(*args).await,
        Command::Forecast(args) => airq_predictive::cli::forecast(args).await,
    }
}
