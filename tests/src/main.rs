//! `airq-testenv`: starts the test environment's servers once for a whole test run.
//!
//! `airq-testenv run -- cargo test --workspace` starts PostgreSQL and the Kubernetes control plane (building it first
//! if the cache is cold) while the command compiles and runs, publishes them in `$AIRQ_TESTENV_DIR` for every test
//! process, and stops them when the command ends. `airq-testenv up` starts them and waits, for working by hand.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airq_testenv::kubernetes::ControlPlane;
use airq_testenv::node::{Node, NodeInfo};
use airq_testenv::postgres::PostgresServer;
use airq_testenv::{ENV_DIR, ENV_PID, HelmInfo, KubernetesInfo, PostgresInfo, create_run_dir, publish, tools};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "airq-testenv",
    version,
    about = "Real PostgreSQL and Kubernetes servers for airq's tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the servers, run COMMAND with `AIRQ_TESTENV_DIR` set, stop the servers; exits with COMMAND's status.
    Run {
        /// The command to run, e.g. `cargo test --workspace`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Start the servers and print how to use them from another shell; stop them on Ctrl-C.
    Up,
    /// Only build (or find in the cache) the Go tools: the control plane, the node, CoreDNS and helm.
    Build,
    /// Remove what a test node left on this machine (after a run that was killed): its pods, mounts, bridge,
    /// iptables chains and cgroups.
    Clean,
}

/// The servers this runner started, stopped at the end.
#[derive(Default)]
struct Servers {
    postgres: Option<PostgresServer>,
    kubernetes: Option<ControlPlane>,
    node: Option<Node>,
}

impl Servers {
    fn stop(&mut self) {
        if let Some(mut node) = self.node.take() {
            node.stop();
        }
        if let Some(mut plane) = self.kubernetes.take() {
            plane.stop();
        }
        if let Some(mut postgres) = self.postgres.take() {
            postgres.stop();
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("airq-testenv: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Cmd) -> anyhow::Result<ExitCode> {
    match command {
        Cmd::Build => {
            let started = Instant::now();
            let kubernetes = tokio::task::spawn_blocking(tools::kubernetes_binaries);
            let coredns = tokio::task::spawn_blocking(tools::coredns_binary);
            let helm = tokio::task::spawn_blocking(tools::helm_binary);
            eprintln!("control plane and node: {}", kubernetes.await??.display());
            eprintln!("CoreDNS: {}", coredns.await??.display());
            eprintln!("helm: {}", helm.await??.display());
            eprintln!("done in {:.1?}", started.elapsed());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Clean => {
            let found = airq_testenv::node::clean_host();
            if found.is_empty() {
                eprintln!("airq-testenv: no test node's leftovers on this machine");
            } else {
                eprintln!("airq-testenv: removed {}", found.join("; "));
            }
            Ok(if found.iter().any(|f| f.starts_with("could not")) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Up => {
            let dir = create_run_dir()?;
            let servers = Arc::new(Mutex::new(Servers::default()));
            let (pg, k8s, helm) = tokio::join!(
                start_postgres(&dir, servers.clone()),
                start_kubernetes(&dir, servers.clone()),
                build_helm(&dir)
            );
            let outcome = (|| -> anyhow::Result<()> {
                let (pg, (k8s, node), helm) = (pg?, k8s?, helm?);
                println!("PostgreSQL: {}", pg.admin_url);
                println!("Kubernetes: {} (kubeconfig {})", k8s.server, k8s.kubeconfig.display());
                println!(
                    "node: {} at {} (containerd {})",
                    node.name,
                    node.address,
                    node.containerd.display()
                );
                println!("helm: {}", helm.binary.display());
                println!(
                    "\nIn another shell:\n  export {ENV_DIR}={}\n  export KUBECONFIG={}",
                    dir.display(),
                    k8s.kubeconfig.display()
                );
                println!("Stop with Ctrl-C.");
                Ok(())
            })();
            if outcome.is_ok() {
                let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            lock(&servers).stop();
            let _ = std::fs::remove_dir_all(&dir);
            outcome.map(|()| ExitCode::SUCCESS)
        }
        Cmd::Run { command } => {
            let dir = create_run_dir()?;
            let servers = Arc::new(Mutex::new(Servers::default()));
            let started = Instant::now();
            // The servers start while the command compiles; tests wait for what they need.
            let starting = tokio::spawn({
                let (dir, servers) = (dir.clone(), servers.clone());
                async move {
                    let _ = tokio::join!(
                        start_postgres(&dir, servers.clone()),
                        start_kubernetes(&dir, servers),
                        build_helm(&dir),
                        prepare_browser()
                    );
                }
            });
            let (program, args) = command
                .split_first()
                .ok_or_else(|| anyhow::anyhow!("no command given"))?;
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .env(ENV_DIR, &dir)
                .env(ENV_PID, std::process::id().to_string())
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
            // Ctrl-C reaches the command too (same terminal); the runner outlives it to stop the servers. SIGTERM
            // (a CI job cancelled) is passed on to the command, and the servers are stopped once it has ended.
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status?,
                    _ = tokio::signal::ctrl_c() => eprintln!("airq-testenv: interrupted; waiting for the command to stop"),
                    _ = terminate.recv() => {
                        eprintln!("airq-testenv: terminated; stopping the command, then the servers");
                        if let Some(pid) = child.id() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid.cast_signed()),
                                nix::sys::signal::Signal::SIGTERM,
                            );
                        }
                    }
                }
            };
            starting.abort();
            lock(&servers).stop();
            if status.success() {
                let _ = std::fs::remove_dir_all(&dir);
            } else {
                eprintln!("airq-testenv: the servers' logs are kept in {}", dir.display());
            }
            eprintln!(
                "airq-testenv: `{}` finished ({status}) in {:.1?}",
                command.join(" "),
                started.elapsed()
            );
            Ok(match status.code() {
                Some(0) => ExitCode::SUCCESS,
                Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                None => ExitCode::FAILURE,
            })
        }
    }
}

/// Installs Chromium and chromedriver for the dashboard's browser tests when they are missing, while the tests
/// compile (each test starts its own chromedriver).
async fn prepare_browser() {
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(airq_testenv::browser::binaries)
        .await
        .unwrap_or_else(|e| Err(airq_testenv::Error::Setup(format!("installing Chromium panicked: {e}"))));
    report("Chromium", &result, started, |(chromium, _)| {
        format!("at {}", chromium.display())
    });
}

fn lock(servers: &Mutex<Servers>) -> std::sync::MutexGuard<'_, Servers> {
    servers.lock().unwrap_or_else(|p| p.into_inner())
}

async fn start_postgres(dir: &Path, servers: Arc<Mutex<Servers>>) -> anyhow::Result<PostgresInfo> {
    let started = Instant::now();
    let pg_dir = dir.join("postgres");
    let result = tokio::task::spawn_blocking(move || PostgresServer::start(&pg_dir))
        .await?
        .map(|server| {
            let info = PostgresInfo::from_server(&server);
            lock(&servers).postgres = Some(server);
            info
        });
    report("PostgreSQL", &result, started, |info| {
        format!("on 127.0.0.1:{}", info.port)
    });
    publish(dir, &result)?;
    Ok(result?)
}

/// Starts the control plane, then the node that joins it.
async fn start_kubernetes(dir: &Path, servers: Arc<Mutex<Servers>>) -> anyhow::Result<(KubernetesInfo, NodeInfo)> {
    let started = Instant::now();
    let result = ControlPlane::start(&dir.join("kubernetes")).await;
    let (result, node_result) = match result {
        Ok(plane) => {
            let info = KubernetesInfo {
                kubeconfig: plane.kubeconfig.clone(),
                server: plane.server.clone(),
            };
            report("Kubernetes control plane", &Ok(info.clone()), started, |info| {
                format!("at {}", info.server)
            });
            publish(dir, &Ok(info.clone()))?;
            let node_started = Instant::now();
            let node = Node::start(&dir.join("node"), &plane).await;
            lock(&servers).kubernetes = Some(plane);
            let node = node.map(|node| {
                let info = node.info.clone();
                lock(&servers).node = Some(node);
                info
            });
            report("Kubernetes node", &node, node_started, |info| {
                format!("{} at {}", info.name, info.address)
            });
            (Ok(info), node)
        }
        Err(err) => {
            let failed = Err(err);
            report("Kubernetes control plane", &failed, started, |_: &KubernetesInfo| {
                String::new()
            });
            publish(dir, &failed)?;
            let node = Err(airq_testenv::Error::Setup(
                "the node cannot start: the control plane did not".to_owned(),
            ));
            (failed, node)
        }
    };
    publish(dir, &node_result)?;
    Ok((result?, node_result?))
}

async fn build_helm(dir: &Path) -> anyhow::Result<HelmInfo> {
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(tools::helm_binary)
        .await?
        .map(|binary| HelmInfo { binary });
    report("helm", &result, started, |info| format!("at {}", info.binary.display()));
    publish(dir, &result)?;
    Ok(result?)
}

fn report<T>(what: &str, result: &airq_testenv::Result<T>, started: Instant, describe: impl Fn(&T) -> String) {
    match result {
        Ok(value) => eprintln!(
            "airq-testenv: {what} ready {} ({:.1?})",
            describe(value),
            started.elapsed()
        ),
        Err(err) => eprintln!("airq-testenv: {what} failed: {err}"),
    }
}
