//! Our own binaries, started by tests as real processes on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::error::{Error, Result, io};
use crate::process::{free_port, log_tail};

/// An environment value [`RunningService::start`] replaces by `127.0.0.1:<a free port>` (the gateway's
/// `AIRQ_OPS_LISTEN`), chosen anew if the service has to be started again.
pub const FREE_ADDRESS: &str = "127.0.0.1:<free>";

/// One of airq's binaries running for a test; killed when dropped.
#[derive(Debug)]
pub struct RunningService {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Where `/readyz` and `/metrics` are served: the base URL, or the address given in `AIRQ_OPS_LISTEN` (the
    /// gateway serves them apart from its public listener).
    pub ops_url: String,
    pub log: PathBuf,
    binary: PathBuf,
    child: tokio::process::Child,
    _logs: tempfile::TempDir,
}

impl RunningService {
    /// Starts `binary` with `--listen 127.0.0.1:<free port>` after `args`, with `env` added to its environment
    /// (each value [`FREE_ADDRESS`] replaced by `127.0.0.1:<another free port>`), and waits until `/healthz`
    /// answers. A free port can be taken by another test between the moment it is found and the bind: when the
    /// binary exits saying so, it is started again on other ports (three attempts).
    pub async fn start(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(binary, args, env).await {
                Err(Error::Server { tail, .. }) if attempt < 3 && tail.contains("Address already in use") => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let port = free_port()?;
        let mut resolved: Vec<(&str, String)> = Vec::with_capacity(env.len());
        for (name, value) in env {
            let value = if *value == FREE_ADDRESS {
                format!("127.0.0.1:{}", free_port()?)
            } else {
                (*value).to_owned()
            };
            resolved.push((name, value));
        }
        let logs = tempfile::Builder::new()
            .prefix("airq-service-")
            .tempdir()
            .map_err(io("cannot create a folder for the service's log"))?;
        let log = logs.path().join("service.log");
        let out = std::fs::File::create(&log).map_err(io(format!("cannot create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("cannot create {}", log.display())))?;
        let child = tokio::process::Command::new(binary)
            .args(args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .envs(resolved.iter().map(|(name, value)| (*name, value.as_str())))
            .env("AIRQ_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("cannot start {}", binary.display())))?;
        let base_url = format!("http://127.0.0.1:{port}");
        let ops_url = resolved
            .iter()
            .find(|(name, _)| *name == "AIRQ_OPS_LISTEN")
            .map_or_else(|| base_url.clone(), |(_, address)| format!("http://{address}"));
        let mut service = Self {
            ops_url,
            base_url,
            log,
            binary: binary.to_owned(),
            child,
            _logs: logs,
        };
        service.wait_healthy(Duration::from_secs(30)).await?;
        Ok(service)
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let http = crate::http_client();
        let url = format!("{}/healthz", self.base_url);
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("cannot watch the service process"))? {
                return Err(self.error(format!("exited ({status}) before answering {url}")));
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(self.error(format!("did not answer {url} within {}s", timeout.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// An error about this service that quotes the end of its log.
    pub fn error(&self, problem: impl Into<String>) -> Error {
        Error::Server {
            server: "service".to_owned(),
            binary: self.binary.clone(),
            problem: problem.into(),
            log: self.log.clone(),
            tail: log_tail(&self.log, 30),
        }
    }

    /// GETs `path` and returns the status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        self.get_from(&self.base_url, path).await
    }

    /// GET `path` on the operational endpoints' address.
    pub async fn get_ops(&self, path: &str) -> Result<(u16, String)> {
        self.get_from(&self.ops_url, path).await
    }

    async fn get_from(&self, base: &str, path: &str) -> Result<(u16, String)> {
        let url = format!("{base}{path}");
        let response = crate::http_client()
            .get(&url)
            .send()
            .await
            .map_err(|e| self.error(format!("GET {url} failed: {e}")))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| self.error(format!("GET {url}: unreadable body: {e}")))?;
        Ok((status, body))
    }

    /// Sends SIGTERM and returns the exit status once the process has stopped (within 10 s).
    pub async fn terminate(mut self) -> Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.cast_signed()),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => status.map_err(io("cannot wait for the service process")),
            Err(_) => Err(self.error("did not stop within 10s of SIGTERM")),
        }
    }
}

/// Runs `binary` with `args` to completion (within 30 s) and returns its exit status and everything it printed.
pub async fn run_to_exit(
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(std::process::ExitStatus, String)> {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(binary)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| Error::Setup(format!("{} did not exit within 30s", binary.display())))?
    .map_err(io(format!("cannot run {}", binary.display())))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status, text))
}

impl RunningService {
    /// Checks what every airq service serves: `/healthz`, `/readyz` (ready), `/metrics` with the service's own
    /// metrics, an `X-Request-Id` on responses, and JSON log lines.
    pub async fn check_operational_endpoints(&self, service: &str) -> Result<()> {
        let fail = |problem: String| Err(self.error(problem));
        let (status, body) = self.get("/healthz").await?;
        if status != 200 || !body.contains("\"ok\"") {
            return fail(format!("/healthz answered {status} {body}"));
        }
        let (status, body) = self.get_ops("/readyz").await?;
        if status != 200 || !body.contains("\"ready\"") {
            return fail(format!("/readyz answered {status} {body}"));
        }
        let url = format!("{}/healthz", self.base_url);
        let response = crate::http_client()
            .get(&url)
            .header("x-request-id", "test-request-1")
            .send()
            .await
            .map_err(|e| self.error(format!("GET {url} failed: {e}")))?;
        let echoed = response.headers().get("x-request-id").and_then(|v| v.to_str().ok());
        if echoed != Some("test-request-1") {
            return fail(format!("the request id sent was not returned: {echoed:?}"));
        }
        let (status, metrics) = self.get_ops("/metrics").await?;
        let build_info = format!("airq_{service}_build_info");
        let requests = format!("airq_{service}_http_requests_total{{");
        let latency = format!("airq_{service}_http_request_duration_seconds_bucket");
        for expected in [&build_info, &requests, &latency] {
            if status != 200 || !metrics.contains(expected.as_str()) {
                return fail(format!("/metrics ({status}) lacks {expected}:\n{metrics}"));
            }
        }
        // The requests just made were counted (labels differ: the gateway labels by route id and status class).
        let counted = metrics.lines().filter(|line| line.starts_with(&requests)).any(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        });
        if !counted {
            return fail(format!("/metrics counts no request in {requests}…}}:\n{metrics}"));
        }
        let log = std::fs::read_to_string(&self.log).map_err(io(format!("cannot read {}", self.log.display())))?;
        let json_lines = log
            .lines()
            .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.get("level").is_some()))
            .count();
        if json_lines == 0 || json_lines != log.lines().count() {
            return fail(format!(
                "the log is not all JSON lines ({json_lines} of {})",
                log.lines().count()
            ));
        }
        Ok(())
    }
}

/// The start-up contract of a service backed by the database: it migrates an empty database, serves the operational
/// endpoints, stops cleanly on SIGTERM, and refuses to start on an unreachable database with an error that names it
/// without its password.
pub async fn check_database_service(binary: &Path, service: &str) -> Result<()> {
    check_database_service_with(binary, service, &[]).await
}

/// [`check_database_service`] for a service that needs more settings than the database (`env`).
pub async fn check_database_service_with(binary: &Path, service: &str, env: &[(&str, &str)]) -> Result<()> {
    let db = crate::database().await?;
    let mut with_database = vec![("AIRQ_DATABASE_URL", db.url.as_str())];
    with_database.extend_from_slice(env);
    let running = RunningService::start(binary, &[], &with_database).await?;
    running.check_operational_endpoints(service).await?;
    let (pollutants,): (i64,) = sqlx::query_as("select count(*) from parameters where kind = 'pollutant'")
        .fetch_one(&db.pool)
        .await?;
    if pollutants == 0 {
        return Err(running.error("did not migrate the database: no pollutants in its parameters"));
    }
    let status = running.terminate().await?;
    if !status.success() {
        return Err(Error::Setup(format!(
            "{} exited with {status} on SIGTERM",
            binary.display()
        )));
    }

    let unreachable = format!("postgres://airq:hunter2@127.0.0.1:{}/airq", free_port()?);
    let mut unreachable_env = vec![
        ("AIRQ_DATABASE_URL", unreachable.as_str()),
        ("AIRQ_DATABASE_CONNECT_TIMEOUT", "1"),
        ("AIRQ_LOG_FORMAT", "json"),
    ];
    unreachable_env.extend_from_slice(env);
    let (status, output) = run_to_exit(binary, &["--listen", "127.0.0.1:0"], &unreachable_env).await?;
    let shown = unreachable.replace("hunter2", "***");
    if status.success()
        || !output.contains(&format!("cannot connect to the database at {shown}"))
        || output.contains("hunter2")
    {
        return Err(Error::Setup(format!(
            "{} with an unreachable database: expected a failure naming {shown} without the password, got {status}:\n{output}",
            binary.display()
        )));
    }
    Ok(())
}
