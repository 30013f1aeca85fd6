//! Benchmark: from `airq up` to the first forecast answered, on this machine, with the repository's `examples/`
//! (the twelve Beijing files loaded from `../shared/data/beijing-multisite`, the PredictiveModel `pm25` trained).
//! Run with `cargo bench -p airq --bench first_forecast` (release build of `airq`).
//!
//! Times, from the command's start on an empty data folder: the first station with a PM2.5 value through the gateway,
//! each phase of the model's training as the dashboard's forecast request sees it (`409 training` with the phase),
//! the first forecast answered (`/api/stations/Dongsi/forecast` through the gateway, i.e. the dashboard's request), the
//! load finished (its quality marks, set while the model trains); then a second start on the same folder (nothing to
//! load or train) to its first forecast.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start(data: &Path, port: u16) -> anyhow::Result<std::process::Child> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new(env!("CARGO_BIN_EXE_airq"))
        .current_dir(&repo)
        .args(["up", "--resources", "examples", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
    Ok(child)
}

async fn wait_for(http: &reqwest::Client, url: &str, check: impl Fn(&serde_json::Value) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
            && let Ok(body) = response.json::<serde_json::Value>().await
            && check(&body)
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} not answered within 30 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(mut child: std::process::Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    child.wait()?;
    Ok(())
}

/// When each training phase was first seen in the dashboard's `409 training` answers, seconds from `started`.
async fn follow_training(
    http: &reqwest::Client,
    url: &str,
    started: Instant,
) -> anyhow::Result<(f64, Vec<(String, f64)>)> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut phases: Vec<(String, f64)> = Vec::new();
    loop {
        if let Ok(response) = http.get(url).send().await {
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if status == 200 && body["points"].is_array() {
                return Ok((started.elapsed().as_secs_f64(), phases));
            }
            let training = &body["error"]["training"];
            let phase = match (training["status"].as_str(), training["progress"]["phase"].as_str()) {
                (Some("waiting"), _) => Some("waiting for the load's values".to_owned()),
                (Some("running"), Some(phase)) => Some(phase.to_owned()),
                _ => None,
            };
            if let Some(phase) = phase
                && phases.last().is_none_or(|(last, _)| *last != phase)
            {
                phases.push((phase, started.elapsed().as_secs_f64()));
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} not answered within 30 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    airq_testenv::shared_data("beijing-multisite")?;
    let work = tempfile::tempdir()?;
    let http = airq_testenv::http_client();
    let port = airq_testenv::process::free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let forecast = format!("{base}/api/stations/Dongsi/forecast?pollutant=pm25");
    let started = Instant::now();
    let child = start(work.path(), port)?;
    wait_for(&http, &format!("{base}/api/stations"), |b| {
        b["stations"]
            .as_array()
            .is_some_and(|s| s.iter().any(|station| station["pollutants"]["pm25"].is_object()))
    })
    .await?;
    let first_station = started.elapsed().as_secs_f64();
    let (first_forecast, phases) = follow_training(&http, &forecast, started).await?;
    wait_for(&http, &format!("{base}/api/ops"), |b| {
        b["loads"][0]["status"] == "succeeded"
    })
    .await?;
    let loaded = started.elapsed().as_secs_f64();
    stop(child)?;
    let again = Instant::now();
    let child = start(work.path(), port)?;
    wait_for(&http, &forecast, |b| b["points"].is_array()).await?;
    let second = again.elapsed().as_secs_f64();
    stop(child)?;
    println!("| from `airq up` on an empty folder to | seconds |\n| --- | ---: |");
    println!("| the first station with a PM2.5 value on the dashboard | {first_station:.1} |");
    for (phase, at) in &phases {
        println!("| the training's phase `{phase}` first seen | {at:.1} |");
    }
    println!("| **the first forecast answered** | **{first_forecast:.1}** |");
    println!("| the load finished (its quality marks set) | {loaded:.1} |");
    println!("| (second start, same folder) the first forecast answered | {second:.1} |");
    Ok(())
}
