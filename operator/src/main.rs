use airq_operator::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => airq_operator::run(cli.config).await,
        Command::Crds { output_dir: Some(dir) } => airq_operator::crds::write_dir(&dir),
        Command::Crds { output_dir: None } => {
            print!("{}", airq_operator::crds::all_yaml()?);
            Ok(())
        }
    }
}
