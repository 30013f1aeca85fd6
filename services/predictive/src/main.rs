use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    airq_predictive::run(airq_predictive::Config::parse()).await
}
