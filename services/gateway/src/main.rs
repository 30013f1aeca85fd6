use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    airq_gateway::run(airq_gateway::Config::parse()).await
}
