use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match airq_gateway::run(airq_gateway::Config::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the gateway stopped");
            eprintln!("airq-gateway: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
