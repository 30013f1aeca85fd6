//! A real headless Chromium for the dashboard's tests, driven over WebDriver: Debian's `chromium` and
//! `chromium-driver` packages (installed when missing), one `chromedriver` per test on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::error::{Error, Result, io};
use crate::process::{ServerProcess, free_port};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium and its WebDriver, installed from Debian when either is missing.
pub fn binaries() -> Result<(PathBuf, PathBuf)> {
    let (chromium, driver) = (PathBuf::from(CHROMIUM), PathBuf::from(CHROMEDRIVER));
    if !(chromium.is_file() && driver.is_file()) {
        crate::debian::install(
            &["chromium", "chromium-driver"],
            "the dashboard's browser tests need Chromium and chromedriver",
            &std::env::temp_dir().join("airq-testenv-apt-chromium.log"),
        )?;
    }
    if chromium.is_file() && driver.is_file() {
        Ok((chromium, driver))
    } else {
        Err(Error::Setup(format!(
            "Chromium was installed but {CHROMIUM} or {CHROMEDRIVER} is still missing"
        )))
    }
}

/// A running chromedriver.
#[derive(Debug)]
pub struct WebDriver {
    /// Where to connect a WebDriver client.
    pub url: String,
    chromium: PathBuf,
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl WebDriver {
    /// Starts chromedriver on a free port of 127.0.0.1 and waits until it accepts sessions.
    pub async fn start() -> Result<Self> {
        let (chromium, driver) = tokio::task::spawn_blocking(binaries)
            .await
            .map_err(|e| Error::Setup(format!("installing Chromium panicked: {e}")))??;
        let dir = tempfile::tempdir().map_err(io("cannot create a folder for chromedriver"))?;
        let port = free_port()?;
        let log = dir.path().join("chromedriver.log");
        let mut command = Command::new(&driver);
        command.arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1");
        let mut process = ServerProcess::spawn("chromedriver", command, &log, Signal::SIGKILL)?;
        let url = format!("http://127.0.0.1:{port}");
        let http = crate::http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            process.check_running()?;
            let ready = http
                .get(format!("{url}/status"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if let Some(response) = ready {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == json!(true) {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(process.error("did not become ready within 30s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            url,
            chromium,
            process,
            _dir: dir,
        })
    }

    /// The capabilities of a headless Chromium session with a window of `width`×`height` CSS pixels.
    pub fn capabilities(&self, width: u32, height: u32) -> serde_json::Map<String, Value> {
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            format!("--window-size={width},{height}"),
        ];
        // Chromium's sandbox cannot start as root (tests run as root in CI's container).
        if nix::unistd::Uid::effective().is_root() {
            args.push("--no-sandbox".to_owned());
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".to_owned(), json!("chrome"));
        // The console's messages (a Content-Security-Policy violation, a script error), read with `console`.
        capabilities.insert("goog:loggingPrefs".to_owned(), json!({ "browser": "ALL" }));
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": self.chromium, "args": args }),
        );
        capabilities
    }

    /// What the page of session `session` wrote to the browser's console since the last call: `(level, message)`,
    /// level `SEVERE` for errors (a Content-Security-Policy violation is one), `WARNING`, `INFO`…
    pub async fn console(&self, session: &str) -> Result<Vec<(String, String)>> {
        let failed = |e: String| Error::Setup(format!("reading the browser's console: {e}"));
        let response = crate::http_client()
            .post(format!("{}/session/{session}/se/log", self.url))
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| failed(e.to_string()))?;
        if !status.is_success() {
            return Err(failed(format!("{status}: {body}")));
        }
        Ok(body["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                        (text("level"), text("message"))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The end of chromedriver's log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        crate::process::log_tail(&self.process.log, 30)
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        self.process.stop(Signal::SIGTERM, Duration::from_secs(2));
    }
}

/// A folder for files a person may want to look at after the tests (screenshots): `$AIRQ_TEST_OUTPUT/<name>`, else
/// `<cargo target dir>/test-output/<name>`. Emptied first, so it holds only the last run's files.
pub fn output_dir(name: &str) -> Result<PathBuf> {
    let base = match (
        std::env::var_os("AIRQ_TEST_OUTPUT"),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(target)) => PathBuf::from(target).join("test-output"),
        (None, None) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-output"),
    };
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
    Ok(dir)
}
