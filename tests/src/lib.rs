//! The airq test environment: a real PostgreSQL server and a real Kubernetes control plane, started once per test
//! run and shared by every test, each test getting its own database or namespace.
//!
//! Under `airq-testenv run -- cargo test …` (the README's test command) the runner starts the servers while the
//! tests compile and publishes them in `$AIRQ_TESTENV_DIR`; every test process of the run uses those. A test process
//! started without the runner (`cargo test -p airq-gateway`) starts its own servers on first use, and the kernel stops
//! them when it exits.

pub mod browser;
pub mod debian;
pub mod error;
pub mod images;
pub mod kubernetes;
pub mod node;
pub mod openapi;
pub mod pods;
pub mod postgres;
pub mod process;
pub mod service;
pub mod tools;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::sync::OnceCell;

pub use error::{Error, Result};
pub use images::images;

use crate::error::io;

/// Set by the runner: the folder where it publishes the servers of this run.
pub const ENV_DIR: &str = "AIRQ_TESTENV_DIR";
/// Set by the runner: its process id, so that tests stop waiting if it dies.
pub const ENV_PID: &str = "AIRQ_TESTENV_PID";

/// How long a test waits for the runner to publish a server (a cold build of the control plane takes minutes).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// Where the shared PostgreSQL server listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostgresInfo {
    pub port: u16,
    /// The superuser's URL, to database `postgres`.
    pub admin_url: String,
    /// This machine's address, where pods of the test node reach the server.
    pub pod_address: Option<std::net::Ipv4Addr>,
    /// The superuser's password, which connections from pods must give.
    pub pod_password: String,
}

impl PostgresInfo {
    /// What tests need to know of `server`.
    pub fn from_server(server: &postgres::PostgresServer) -> Self {
        Self {
            port: server.port,
            admin_url: server.admin_url(),
            pod_address: server.pod_address,
            pod_password: server.pod_password.clone(),
        }
    }

    /// The URL of database `name` on this server.
    pub fn url_for(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The URL with which pods reach database `name` at `host:port` (a Service in front of this server, or its
    /// address and port).
    pub fn pod_url_for(&self, host: &str, port: u16, name: &str) -> String {
        format!("postgres://postgres:{}@{host}:{port}/{name}", self.pod_password)
    }
}

/// Where the shared Kubernetes control plane is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubernetesInfo {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
}

/// Where the helm binary is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelmInfo {
    pub binary: PathBuf,
}

/// A server or tool the runner publishes, by the name of its file in `$AIRQ_TESTENV_DIR`.
pub trait Published: Serialize + DeserializeOwned {
    const NAME: &'static str;
}
impl Published for PostgresInfo {
    const NAME: &'static str = "postgres";
}
impl Published for KubernetesInfo {
    const NAME: &'static str = "kubernetes";
}
impl Published for HelmInfo {
    const NAME: &'static str = "helm";
}
impl Published for node::NodeInfo {
    const NAME: &'static str = "node";
}

/// Servers started by this process, kept alive until it exits.
static OWN_SERVERS: Mutex<Vec<OwnServer>> = Mutex::new(Vec::new());

// Held only to keep the servers alive. At most one of each per process, kept until it exits: their size does not matter.
#[allow(dead_code)]
#[allow(clippy::large_enum_variant)]
enum OwnServer {
    Postgres(postgres::PostgresServer),
    Kubernetes(kubernetes::ControlPlane),
}

fn keep(server: OwnServer) {
    OWN_SERVERS.lock().unwrap_or_else(|p| p.into_inner()).push(server);
}

/// The shared PostgreSQL server.
pub async fn postgres() -> Result<PostgresInfo> {
    static OWN: OnceCell<Result<PostgresInfo, String>> = OnceCell::const_new();
    if let Some(dir) = runner_dir() {
        return wait_published(&dir).await;
    }
    OWN.get_or_init(|| async {
        let dir = own_run_dir().map_err(|e| e.to_string())?.join("postgres");
        let started = tokio::task::spawn_blocking(move || postgres::PostgresServer::start(&dir))
            .await
            .map_err(|e| format!("starting PostgreSQL panicked: {e}"))?
            .map_err(|e| e.to_string())?;
        let info = PostgresInfo::from_server(&started);
        keep(OwnServer::Postgres(started));
        Ok(info)
    })
    .await
    .clone()
    .map_err(Error::Setup)
}

/// The shared Kubernetes control plane.
pub async fn kubernetes() -> Result<KubernetesInfo> {
    static OWN: OnceCell<Result<KubernetesInfo, String>> = OnceCell::const_new();
    if let Some(dir) = runner_dir() {
        return wait_published(&dir).await;
    }
    OWN.get_or_init(|| async {
        let dir = own_run_dir().map_err(|e| e.to_string())?.join("kubernetes");
        let plane = kubernetes::ControlPlane::start(&dir).await.map_err(|e| e.to_string())?;
        let info = KubernetesInfo {
            kubeconfig: plane.kubeconfig.clone(),
            server: plane.server.clone(),
        };
        keep(OwnServer::Kubernetes(plane));
        Ok(info)
    })
    .await
    .clone()
    .map_err(Error::Setup)
}

/// The test node, on which pods run. It is host-wide (one per machine), so only the test runner starts it: under
/// `cargo test-all`, or with `airq-testenv up` in another shell and its `AIRQ_TESTENV_DIR` exported.
pub async fn node() -> Result<node::NodeInfo> {
    match runner_dir() {
        Some(dir) => wait_published(&dir).await,
        None => Err(Error::Setup(format!(
            "this test needs the test node, which only the test runner starts (one per machine): run `cargo \
             test-all`, or `cargo run -p airq-testenv -- up` in another shell and export the {ENV_DIR} it prints"
        ))),
    }
}

/// The helm binary built from `tests/tools/helm`.
pub async fn helm() -> Result<PathBuf> {
    if let Some(dir) = runner_dir() {
        return Ok(wait_published::<HelmInfo>(&dir).await?.binary);
    }
    tokio::task::spawn_blocking(tools::helm_binary)
        .await
        .map_err(|e| Error::Setup(format!("building helm panicked: {e}")))?
}

/// A fresh, empty database of its own for one test.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

/// Creates a fresh database on the shared server and connects to it.
pub async fn database() -> Result<TestDatabase> {
    let server = postgres().await?;
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server.admin_url).await?;
    admin.execute(format!(r#"create database "{name}""#).as_str()).await?;
    admin.close().await?;
    let url = server.url_for(&name);
    let pool = PgPoolOptions::new().max_connections(5).connect(&url).await?;
    Ok(TestDatabase { name, url, pool })
}

impl TestDatabase {
    /// Drops the database (closing this pool first). Tests that load millions of rows call it at their end, so a
    /// run's disk use does not grow with every such test; a failing test keeps its database for inspection.
    pub async fn remove(self) -> Result<()> {
        self.pool.close().await;
        let server = postgres().await?;
        let mut admin = PgConnection::connect(&server.admin_url).await?;
        admin
            .execute(format!(r#"drop database if exists "{}" with (force)"#, self.name).as_str())
            .await?;
        admin.close().await?;
        Ok(())
    }
}

/// A client of the shared control plane with cluster-admin rights. Each test makes its own: a client lives on the
/// runtime of the test that made it.
pub async fn kube_client() -> Result<kube::Client> {
    kubernetes::client_from(&kubernetes().await?.kubeconfig).await
}

/// Creates a namespace of its own for one test and returns its name.
pub async fn namespace(client: &kube::Client) -> Result<String> {
    let name = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "airq.dev/test": "true" } }
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(name)
}

/// Creates a namespace of its own for one test, whose pods must meet the Pod Security Standard "restricted": the
/// API server refuses a pod that asks for more.
pub async fn restricted_namespace(client: &kube::Client) -> Result<String> {
    use kube::api::{Patch, PatchParams};
    let name = namespace(client).await?;
    let labels = serde_json::json!({ "metadata": { "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&labels))
        .await?;
    Ok(name)
}

/// Deletes a test's namespace (with everything in it) once the test passed: pods on the test node stop, and their
/// CPU and memory requests no longer hold the node's room. A failing test keeps its namespace to be looked at.
pub async fn delete_namespace(client: &kube::Client, name: &str) -> Result<()> {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &kube::api::DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Polls `probe` until it returns `Ok`, or fails after `timeout` quoting the last reason `probe` gave for not yet.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let last = match probe().await {
            Ok(value) => return Ok(value),
            Err(reason) => reason,
        };
        if started.elapsed() > timeout {
            return Err(Error::Timeout {
                what: what.to_owned(),
                seconds: timeout.as_secs(),
                last: Some(last),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GETs the JSON resource at `url` until its `status` is no longer `running` (a load, a training), and returns it.
pub async fn wait_finished(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    timeout: Duration,
) -> Result<serde_json::Value> {
    eventually(what, timeout, || async {
        let resource: serde_json::Value = http
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match resource["status"].as_str() {
            Some("running") => Err(format!("still running: {resource}")),
            _ => Ok(resource),
        }
    })
    .await
}

fn runner_dir() -> Option<PathBuf> {
    std::env::var_os(ENV_DIR).map(PathBuf::from)
}

/// Waits until the runner has published `T` (or the reason it could not).
async fn wait_published<T: Published>(dir: &Path) -> Result<T> {
    let ready = dir.join(format!("{}.json", T::NAME));
    let failed = dir.join(format!("{}.error", T::NAME));
    let runner = std::env::var(ENV_PID).ok().and_then(|pid| pid.parse::<i32>().ok());
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            return Ok(serde_json::from_str(&text)?);
        }
        if let Ok(reason) = std::fs::read_to_string(&failed) {
            return Err(Error::Setup(format!(
                "the test runner could not start {}: {reason}",
                T::NAME
            )));
        }
        if let Some(pid) = runner
            && !process_alive(pid)
        {
            return Err(Error::Setup(format!(
                "the test runner (pid {pid}) exited before publishing {} in {}",
                T::NAME,
                dir.display()
            )));
        }
        if started.elapsed() > PUBLISH_TIMEOUT {
            return Err(Error::Timeout {
                what: format!("the test runner to publish {} in {}", T::NAME, dir.display()),
                seconds: PUBLISH_TIMEOUT.as_secs(),
                last: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Publishes `value` (or, on error, its reason) for the tests of this run.
pub fn publish<T: Published>(dir: &Path, value: &Result<T>) -> Result<()> {
    let (file, text) = match value {
        Ok(value) => (format!("{}.json", T::NAME), serde_json::to_string_pretty(value)?),
        Err(err) => (format!("{}.error", T::NAME), err.to_string()),
    };
    // Written whole, then renamed: readers never see half a file.
    let staging = dir.join(format!(".{file}.tmp"));
    std::fs::write(&staging, text).map_err(io(format!("cannot write {}", staging.display())))?;
    std::fs::rename(&staging, dir.join(&file)).map_err(io(format!("cannot publish {file} in {}", dir.display())))
}

fn process_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// The folder under which runs keep their servers' files: `$TMPDIR/airq-testenv`.
fn runs_root() -> PathBuf {
    std::env::temp_dir().join("airq-testenv")
}

/// A new folder for this process's servers, after removing the folders of runs whose process is gone.
pub fn create_run_dir() -> Result<PathBuf> {
    let root = runs_root();
    std::fs::create_dir_all(&root).map_err(io(format!("cannot create {}", root.display())))?;
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let stale = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<i32>().ok())
                .is_some_and(|pid| !process_alive(pid));
            if stale {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
    // PostgreSQL may run as another user when tests run as root: it must be able to reach its folder.
    use std::os::unix::fs::PermissionsExt;
    for path in [&root, &dir] {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
    }
    Ok(dir)
}

fn own_run_dir() -> Result<PathBuf> {
    static DIR: std::sync::OnceLock<std::result::Result<PathBuf, String>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| create_run_dir().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Setup)
}

/// A client acting as service account `name` of `namespace` (created when missing), with a token the control plane
/// signed for it: it may do what RBAC grants that account and nothing else.
pub async fn service_account_client(admin: &kube::Client, namespace: &str, name: &str) -> Result<kube::Client> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    if accounts.get_opt(name).await?.is_none() {
        let account: ServiceAccount = serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))?;
        accounts.create(&PostParams::default(), &account).await?;
    }
    let request: TokenRequest = serde_json::from_value(serde_json::json!({ "spec": { "audiences": [] } }))?;
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| Error::Setup(format!("the TokenRequest for {namespace}/{name} returned no token")))?;
    let kubeconfig = kube::config::Kubeconfig::read_from(kubernetes().await?.kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Ok(kube::Client::try_from(config)?)
}

/// A path under the shared data folder (`../shared/data` beside the repository, or `AIRQ_SHARED_DATA`), checked to
/// exist so a missing data set is a clear error rather than an empty load.
pub fn shared_data(relative: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("AIRQ_SHARED_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    };
    let path = base.join(relative);
    if !path.exists() {
        return Err(Error::Setup(format!(
            "the shared data {} is missing (set AIRQ_SHARED_DATA to the folder holding beijing-multisite/ and nab/)",
            path.display()
        )));
    }
    Ok(path)
}

/// An HTTP client for tests. reqwest is built with rustls but without a crypto provider of its own (airq uses ring,
/// like kube and sqlx, and a second provider would leave rustls unable to pick a default), so the process's provider
/// is installed first; installing it again is harmless.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
