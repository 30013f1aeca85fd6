use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    airq_operator::run(airq_operator::Config::parse()).await
}
