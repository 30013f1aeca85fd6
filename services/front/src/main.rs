use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    airq_front::run(airq_front::Config::parse()).await
}
