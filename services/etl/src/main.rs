use airq_etl::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse()
        .into_command(std::env::args_os())
        .unwrap_or_else(|e| e.exit())
    {
        Command::Serve(config) => airq_etl::run(config).await,
        Command::Load(args) => airq_etl::cli::load(args).await,
    }
}
