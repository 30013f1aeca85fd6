//! `airq up` end to end: the real binary on a temporary data folder, with a folder of resources (an EtlSchedule
//! loading two Beijing files, a PredictiveModel, an invalid file): it prints the dashboard's address and an admin
//! key; the load and the training finish; through the gateway with that key the stations, a series and a forecast
//! with its interval are read, and without a key the API answers 401; Ctrl-C stops it cleanly; started again on the
//! same folder it finds the same data and model without loading or training again, and the old key no longer works.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const STATIONS: [&str; 2] = ["Aotizhongxin", "Dongsi"];

/// A running `airq up` and what it printed.
struct Up {
    child: Child,
    url: String,
    key: String,
    stderr: std::path::PathBuf,
    stdout: std::path::PathBuf,
}

/// Request lines (JSON, with their trace ids) as well as what `up` says by default.
const LOG_LEVEL: &str = "warn,airq::up=info,airq::work=info,airq_core::http=info,airq_gateway::access=info";

fn start(data: &Path, resources: &Path, log: &Path) -> Up {
    let port = airq_testenv::process::free_port().unwrap();
    let stdout = log.with_extension("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_airq"))
        .args(["up", "--data-dir"])
        .arg(data)
        .arg("--resources")
        .arg(resources)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--log-format", "json", "--log-level", LOG_LEVEL])
        // Forecast errors followed every second instead of every five minutes.
        .env("AIRQ_SCORE_INTERVAL_SECONDS", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut url, mut key) = (None, None);
    loop {
        let printed = std::fs::read_to_string(&stdout).unwrap_or_default();
        if printed.lines().any(|line| line.starts_with("Stop with Ctrl-C")) {
            for line in printed.lines() {
                if let Some(rest) = line.trim().strip_prefix("dashboard:") {
                    url = Some(rest.trim().trim_end_matches('/').to_owned());
                }
                if let Some(rest) = line.trim().strip_prefix("admin API key:") {
                    key = Some(rest.trim().to_owned());
                }
            }
            break;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (Some(url), Some(key)) = (url, key) else {
        panic!(
            "airq up printed no address or key:\n{}\n{}",
            std::fs::read_to_string(&stdout).unwrap_or_default(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    Up {
        child,
        url,
        key,
        stderr: log.to_owned(),
        stdout,
    }
}

impl Up {
    async fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut request = airq_testenv::http_client().get(format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GET `path` without a key: status, content type and body as text.
    async fn get_text(&self, path: &str) -> (u16, String, String) {
        let response = airq_testenv::http_client()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, kind, response.text().await.unwrap_or_default())
    }

    /// What it wrote to stderr, then to stdout (the log lines).
    fn log(&self) -> String {
        let mut log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        log.push_str(&std::fs::read_to_string(&self.stdout).unwrap_or_default());
        log
    }

    /// The JSON log lines so far.
    fn json_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Ctrl-C, then the exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "airq up did not stop within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn resources(dir: &Path, csv: &Path) {
    std::fs::write(
        dir.join("etl.yaml"),
        format!(
            "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata:\n  name: beijing\nspec:\n  source:\n    csv:\n      url: {}\n      format: beijing\n",
            csv.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("model.yaml"),
        "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata:\n  name: pm25\nspec:\n  target: { pollutant: pm25 }\n  horizonHours: 24\n  confidenceLevels: [0.8, 0.9]\n  algorithm: { knn: { k: 10 } }\n  features: { lags: [1, 2, 3, 24], calendar: true, weather: true, logTransform: true }\n  training: { from: \"2016-06-01\", calibrationFraction: 0.25 }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata:\n  name: nightly\nspec:\n  source: { csv: { url: /nowhere } }\n  schedule: \"every night\"\n",
    )
    .unwrap();
}

#[tokio::test]
async fn up_loads_trains_serves_stops_and_starts_again() {
    let work = tempfile::tempdir().unwrap();
    let csv = work.path().join("csv");
    let defs = work.path().join("resources");
    let data = work.path().join("data");
    std::fs::create_dir_all(&csv).unwrap();
    std::fs::create_dir_all(&defs).unwrap();
    let folder = airq_testenv::shared_data("beijing-multisite").unwrap();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if STATIONS.iter().any(|s| name.contains(&format!("_{s}_"))) {
            std::fs::copy(&path, csv.join(&name)).unwrap();
        }
    }
    resources(&defs, &csv);

    let started = Instant::now();
    let up = start(&data, &defs, &work.path().join("first.log"));
    // The invalid file is named with the operator's message; the others are used.
    // Until the model has a version, its forecast answers 409 `training` with what the training waits for (the
    // load), then its phases.
    let refusals = std::sync::Mutex::new(Vec::new());
    let dashboard_said = std::sync::Mutex::new(Vec::new());
    let forecast = airq_testenv::eventually("a forecast through the gateway", Duration::from_secs(600), || {
        let (up, refusals, dashboard_said) = (&up, &refusals, &dashboard_said);
        async move {
            let (status, body) = up
                .get("/api/predictive/models/pm25/forecast?station=Dongsi", Some(&up.key))
                .await;
            if status == 200 {
                return Ok(body);
            }
            refusals.lock().unwrap().push((status, body.clone()));
            // The dashboard's forecast says the same once the station is stored.
            let (front, answer) = up.get("/api/stations/Dongsi/forecast?pollutant=pm25", None).await;
            if front != 404 && front != 200 {
                assert_eq!(
                    (front, &answer["error"]["code"]),
                    (409, &Value::from("training")),
                    "{answer}"
                );
                dashboard_said.lock().unwrap().push(answer);
            }
            Err(format!("{status} {body}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", up.log()));
    let refusals = refusals.into_inner().unwrap();
    assert!(!refusals.is_empty(), "the first forecast was answered at once");
    for (status, body) in &refusals {
        assert_eq!(
            (*status, &body["error"]["code"]),
            (409, &Value::from("training")),
            "{body}"
        );
        let training = &body["error"]["training"];
        assert!(
            ["waiting", "running"].contains(&training["status"].as_str().unwrap()),
            "{body}"
        );
        assert!(training["progress"]["phase"].is_string(), "{body}");
    }
    let waited = refusals
        .iter()
        .find(|(_, b)| b["error"]["training"]["status"] == "waiting")
        .unwrap_or_else(|| panic!("no answer while loading: {refusals:?}"));
    assert!(
        waited.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("it waits for the load beijing to store its values"),
        "{}",
        waited.1
    );
    let dashboard_said = dashboard_said.into_inner().unwrap();
    assert!(
        dashboard_said
            .iter()
            .any(|b| b["error"]["training"]["status"] == "running"),
        "the dashboard's forecast never said the model was training: {dashboard_said:?}"
    );
    eprintln!(
        "first forecast {:.1} s after the command",
        started.elapsed().as_secs_f64()
    );
    let log = up.log();
    assert!(
        log.contains("broken.yaml: EtlSchedule/nightly: spec.schedule: \"every night\" is not a valid cron expression"),
        "{log}"
    );
    let point = &forecast["points"][0];
    let interval = &point["intervals"][1];
    assert_eq!(interval["confidence"], 0.9);
    assert!(interval["lower"].as_f64().unwrap() <= point["value"].as_f64().unwrap());
    assert!(point["value"].as_f64().unwrap() <= interval["upper"].as_f64().unwrap());

    // The stations and a series, through the gateway; the dashboard's forecast too.
    let (status, stations) = up.get("/api/stations", Some(&up.key)).await;
    assert_eq!(status, 200, "{stations}");
    let codes: Vec<&str> = stations["stations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, STATIONS);
    let (status, series) = up
        .get(
            "/api/stations/Dongsi/series?pollutant=pm25&from=2016-01-01&to=2017-01-01&points=500",
            None,
        )
        .await;
    assert_eq!(
        (status, series["mean"].as_array().map(Vec::len)),
        (200, Some(366)),
        "{series}"
    );
    let (status, dashboard_forecast) = up.get("/api/stations/Dongsi/forecast?pollutant=pm25", None).await;
    assert_eq!((status, &dashboard_forecast["model"]), (200, &Value::from("pm25")));
    trace_goes_through_the_gateway_and_the_front_to_the_predictive_service(&up).await;
    // The APIs need a key.
    let (status, body) = up.get("/api/predictive/models", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    let (status, _) = up.get("/api/etl/loads", Some(&up.key)).await;
    assert_eq!(status, 200);
    // The model trained while the load set its quality marks; the load finishes too.
    let ops = airq_testenv::eventually("the load to finish", Duration::from_secs(120), || {
        let up = &up;
        async move {
            let (_, ops) = up.get("/api/ops", None).await;
            if ops["loads"][0]["status"] == "succeeded" {
                Ok(ops)
            } else {
                Err(ops.to_string())
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ops["loads"].as_array().unwrap().len(), 1);
    let stored_values = ops["loads"][0]["rowsInserted"].as_i64().unwrap();
    assert!(stored_values > 700_000, "{stored_values}");
    assert!(ops["anomalies"].is_array(), "{ops}");
    let (status, anomalies) = up.get("/api/anomalies?hours=1", None).await;
    assert_eq!(status, 200, "{anomalies}");
    // One OpenAPI document for everything behind the gateway: every operation it lists is served there (called with
    // the admin key, which every route lets through), and its parts are the four APIs.
    let (status, document) = up.get("/api/openapi.json", None).await;
    assert_eq!(status, 200, "{document}");
    let tags: Vec<&str> = document["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["dashboard", "predictive", "etl", "admin"], "{document}");
    assert_eq!(document["servers"][0]["url"], "/");
    let problems =
        airq_testenv::openapi::problems(&airq_testenv::http_client(), &up.url, Some(&up.key), &document).await;
    assert!(problems.is_empty(), "{problems:#?}");
    // The model's forecasts are compared with the stored truth: the newest two weeks of both stations.
    let scored = airq_testenv::eventually("forecasts scored against the truth", Duration::from_secs(60), || {
        let up = &up;
        async move {
            let (_, _, text) = up.get_text("/metrics").await;
            let scored = text
                .lines()
                .find(|l| l.starts_with("airq_predictive_forecasts_scored_total{model=\"pm25\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse::<f64>().ok());
            // A round scores the newest two weeks of both stations; the counter grows as it goes.
            scored.filter(|n| *n >= 2.0 * 300.0).ok_or_else(|| {
                text.lines()
                    .filter(|l| l.contains("predictive"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    })
    .await
    .unwrap();
    assert!(scored >= 2.0 * 300.0, "{scored} hours scored");

    // When the model was ready, a try to paste: the key and the forecast's curl.
    let printed = std::fs::read_to_string(&up.stdout).unwrap();
    assert!(
        printed.contains("airq: pm25 answers forecasts; to try it, paste:"),
        "{printed}"
    );
    assert!(printed.contains(&format!("  KEY={}\n", up.key)), "{printed}");
    let curl = format!(
        "  curl -H \"Authorization: Bearer $KEY\" '{}/api/predictive/models/pm25/forecast?station=",
        up.url
    );
    assert!(
        STATIONS.iter().any(|s| printed.contains(&format!("{curl}{s}'"))),
        "{printed}"
    );

    let first_key = up.key.clone();
    let status = up.interrupt();
    assert!(status.success(), "{status}");

    // Again on the same folder: the same data and model, no new load or training, a new key.
    let up = start(&data, &defs, &work.path().join("second.log"));
    let (status, again) = up.get("/api/stations", None).await;
    assert_eq!((status, &again["stations"]), (200, &stations["stations"]));
    let (status, models) = up.get("/api/predictive/models", Some(&up.key)).await;
    assert_eq!(status, 200, "{models}");
    assert_eq!(models[0]["latest"]["version"], "v1");
    let (status, _) = up.get("/api/predictive/models", Some(&first_key)).await;
    assert_eq!(status, 401, "the key of the first start still works");
    airq_testenv::eventually("the second start to settle", Duration::from_secs(60), || {
        let up = &up;
        async move {
            let log = up.log();
            if log.contains("beijing already loaded") && log.contains("pm25 is trained (v1") {
                Ok(())
            } else {
                Err(log)
            }
        }
    })
    .await
    .unwrap();
    let (_, ops) = up.get("/api/ops", None).await;
    assert_eq!(ops["loads"].as_array().unwrap().len(), 1, "loaded again");

    // A third start on the same folder while the second runs: refused before it touches anything, naming the
    // process that holds the folder; the running one keeps its routes and its key.
    let routes = std::fs::read_to_string(data.join("routes.yaml")).unwrap();
    let third = Command::new(env!("CARGO_BIN_EXE_airq"))
        .args(["up", "--data-dir"])
        .arg(&data)
        .arg("--resources")
        .arg(&defs)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&third.stderr);
    assert!(!third.status.success(), "{said}");
    assert!(
        said.contains("is in use by another `airq up` (process ") && said.contains("nothing was changed"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(data.join("routes.yaml")).unwrap(), routes);
    let (status, _) = up.get("/api/predictive/models", Some(&up.key)).await;
    assert_eq!(
        status, 200,
        "the running instance's key was revoked by the refused start"
    );
    // Another folder but the address in use: refused with the address named, before the folder is used.
    let other = work.path().join("other-data");
    let address = up.url.trim_start_matches("http://").to_owned();
    let fourth = Command::new(env!("CARGO_BIN_EXE_airq"))
        .args(["up", "--data-dir"])
        .arg(&other)
        .arg("--resources")
        .arg(&defs)
        .args(["--listen", &address])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&fourth.stderr);
    assert!(
        !fourth.status.success() && said.contains(&format!("cannot listen on {address}")),
        "{said}"
    );
    assert!(
        !other.join("airq.db").exists(),
        "a database was made before the address was checked"
    );
    let log = up.log();
    let status = up.interrupt();
    assert!(status.success(), "{status}\n{log}");
    // Nothing secret in what it wrote.
    assert!(!log.contains(&first_key[first_key.len() - 20..]));
}

/// A caller's trace context goes through the gateway to the front and from the front to the predictive service (each
/// over HTTP): the gateway's access line and each upstream's request line name the caller's trace id.
async fn trace_goes_through_the_gateway_and_the_front_to_the_predictive_service(up: &Up) {
    let trace = "c0ffee00c0ffee00c0ffee00c0ffee00";
    let response = airq_testenv::http_client()
        .get(format!("{}/api/stations/Dongsi/forecast?pollutant=pm25", up.url))
        .header("traceparent", format!("00-{trace}-aaaabbbbccccdddd-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lines = airq_testenv::eventually("the request's log lines", Duration::from_secs(10), || async {
        let lines: Vec<Value> = up
            .json_lines()
            .into_iter()
            .filter(|line| line["trace_id"] == trace || line["span"]["trace_id"] == trace)
            .collect();
        let services: Vec<&str> = lines
            .iter()
            .filter_map(|line| line["span"]["service"].as_str())
            .collect();
        if services.contains(&"front")
            && services.contains(&"predictive")
            && lines.iter().any(|l| l["trace_id"] == trace)
        {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", up.log()));
    let gateway = lines
        .iter()
        .find(|line| line["target"] == "airq_gateway::access")
        .expect("the gateway's access line");
    assert_eq!(gateway["path"], "/api/stations/Dongsi/forecast", "{gateway}");
    let front = lines.iter().find(|line| line["span"]["service"] == "front").unwrap();
    assert_eq!(
        (front["message"].as_str(), front["status"].as_u64()),
        (Some("answered"), Some(200)),
        "{front}"
    );
    let predictive = lines
        .iter()
        .find(|line| line["span"]["service"] == "predictive")
        .unwrap();
    assert!(
        predictive["span"]["path"].as_str().unwrap().ends_with("/forecast"),
        "{predictive}"
    );
    // Each hop has a request id of its own or the one it was given, never none.
    assert!(
        front["span"]["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{front}"
    );
}

/// Ctrl-C while the load runs: it stops, says so once, and not as an error.
#[tokio::test]
async fn a_load_stopped_with_ctrl_c_is_said_once() {
    let work = tempfile::tempdir().unwrap();
    let defs = work.path().join("resources");
    std::fs::create_dir_all(&defs).unwrap();
    // All twelve files: the load takes long enough to be stopped in its middle.
    resources(&defs, &airq_testenv::shared_data("beijing-multisite").unwrap());
    let up = start(&work.path().join("data"), &defs, &work.path().join("up.log"));
    airq_testenv::eventually("the load to start", Duration::from_secs(60), || {
        let up = &up;
        async move {
            let log = up.log();
            if log.contains("airq: loading beijing") {
                Ok(())
            } else {
                Err(log)
            }
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (stderr, stdout) = (up.stderr.clone(), up.stdout.clone());
    let status = up.interrupt();
    assert!(status.success(), "{status}");
    let said = std::fs::read_to_string(stderr).unwrap();
    assert_eq!(said.matches("EtlSchedule beijing: stopped;").count(), 1, "{said}");
    // Neither in what it says nor in its log lines (JSON on stdout here).
    let logged = std::fs::read_to_string(stdout).unwrap();
    for text in [&said, &logged] {
        assert!(!text.contains("load failed") && !text.contains("ERROR"), "{text}");
    }
}

/// `airq validate` lists what `up` would do with the examples, from the repository's root as the README runs it; a
/// folder that does not exist is said once.
#[test]
fn validate_lists_what_up_would_do() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(env!("CARGO_BIN_EXE_airq"))
        .args(["validate", "examples"])
        .current_dir(&root)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "EtlSchedule/beijing: loaded once at the start",
        "source: CSV ../shared/data/beijing-multisite (a folder of 12 CSV files)",
        "EtlSchedule/open-meteo-beijing: loaded at each `0 */6 * * *` (UTC), not at the start",
        "Open-Meteo air quality: needs the internet",
        "needs the internet and an API key",
        "PredictiveModel/pm25: trained once the one-off loads have stored their values",
        "AdhocService/reports:",
        "Platform/",
    ] {
        assert!(said.contains(line), "{line:?} is missing from:\n{said}");
    }
    assert!(said.trim_end().ends_with("valid"), "{said}");

    let missing = Command::new(env!("CARGO_BIN_EXE_airq"))
        .args(["validate", "no-such-folder"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert_eq!(said.matches("No such file or directory").count(), 1, "{said}");
    assert!(said.contains("cannot read the resources in no-such-folder"), "{said}");
}
