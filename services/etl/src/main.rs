use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    airq_etl::run(airq_etl::Config::parse()).await
}
