//! The command line: `evaluate` reads the long CSV layout as well as the Beijing one (`--format`) and scores the same
//! data the same way; its stdout is the table alone (the logs go to stderr), so `evaluate … > table.md` holds the
//! table.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

/// The NO2 values of a Beijing-layout file in the long layout (`station,parameter,time,value,unit`), with the files'
/// local time written with its offset.
fn to_long(beijing: &Path, long: &Path) {
    let text = std::fs::read_to_string(beijing).unwrap();
    let mut out = std::fs::File::create(long).unwrap();
    writeln!(out, "station,parameter,time,value,unit").unwrap();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (year, month, day, hour) = (f[1], f[2], f[3], f[4]);
        let (no2, station) = (f[8], f[17].trim_matches('"'));
        if no2 == "NA" {
            continue;
        }
        writeln!(
            out,
            "{station},no2,{year}-{month:0>2}-{day:0>2}T{hour:0>2}:00:00+08:00,{no2},ug/m3"
        )
        .unwrap();
    }
}

/// The same file with every time in UTC (`Z`): the local time no longer stated.
fn to_utc(long: &Path, utc: &Path) {
    let text = std::fs::read_to_string(long).unwrap();
    let mut out = std::fs::File::create(utc).unwrap();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        if i == 0 {
            writeln!(out, "{line}").unwrap();
            continue;
        }
        let time = chrono::DateTime::parse_from_rfc3339(f[2]).unwrap().to_utc();
        writeln!(
            out,
            "{},{},{},{},{}",
            f[0],
            f[1],
            time.format("%Y-%m-%dT%H:%M:%SZ"),
            f[3],
            f[4]
        )
        .unwrap();
    }
}

/// `airq-predictive evaluate` of `spec` on `csv` in `format` (and `extra` arguments): the scores (from `--json`),
/// stdout and stderr.
async fn evaluate(dir: &Path, spec: &Value, csv: &Path, format: &str, extra: &[&str]) -> (Value, String, String) {
    let scores = dir.join(format!("{format}{}.json", extra.len()));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_airq-predictive"))
        .arg("evaluate")
        .args(["--spec", &spec.to_string(), "--format", format, "--csv"])
        .arg(csv)
        .args(["--fit-from", "2015-10-01", "--calibrate-from", "2016-01-01"])
        .args(["--test-from", "2016-03-01", "--test-to", "2016-05-01", "--json"])
        .arg(&scores)
        .args(extra)
        .env("AIRQ_LOG_LEVEL", "info")
        .env("AIRQ_LOG_FORMAT", "json")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(output.status.success(), "{stderr}");
    let scores: Value = serde_json::from_slice(&std::fs::read(&scores).unwrap()).unwrap();
    (scores, stdout, stderr)
}

#[tokio::test]
async fn evaluate_reads_both_layouts_alike_and_prints_the_table_alone() {
    let dir = tempfile::tempdir().unwrap();
    let beijing = common::slice_csv(dir.path());
    let long = dir.path().join("long.csv");
    to_long(&beijing, &long);
    let mut spec = common::spec(json!({ "linear": { "l2": 1.0 } }));
    spec["features"]["weather"] = json!(false);

    let (from_beijing, table, logs) = evaluate(dir.path(), &spec, &beijing, "beijing", &[]).await;
    let (from_long, long_table, long_logs) = evaluate(dir.path(), &spec, &long, "long", &[]).await;
    // The same values, read from either layout, give the same scores.
    let mae = |scores: &Value| scores[0]["mae"].as_f64().unwrap();
    assert!(mae(&from_beijing) > 0.0, "{from_beijing}");
    assert!(
        (mae(&from_beijing) - mae(&from_long)).abs() < 1e-9,
        "{from_beijing}\n{from_long}"
    );
    assert_eq!(from_beijing[0]["forecasts"], from_long[0]["forecasts"]);
    // stdout: the Markdown table and nothing else; the JSON log lines are on stderr.
    for stdout in [&table, &long_table] {
        assert!(stdout.lines().count() >= 3, "{stdout}");
        assert!(
            stdout.lines().all(|l| l.is_empty() || l.starts_with('|')),
            "not the table alone:\n{stdout}"
        );
    }
    assert!(
        logs.lines().any(|l| l.starts_with('{')),
        "no log line on stderr: {logs}"
    );
    // Local time is the one the files state: Beijing time for the Beijing files, the long file's `+08:00`.
    for logs in [&logs, &long_logs] {
        assert!(
            logs.lines()
                .any(|l| l.contains("the offset the files state") && l.contains(r#""utc_offset_hours":8"#)),
            "{logs}"
        );
    }
    // The same file in UTC states no local time: the protocol's days and 23:00 origins are UTC's (other scores),
    // unless --utc-offset says where the stations are.
    let utc = dir.path().join("utc.csv");
    to_utc(&long, &utc);
    let (in_utc, _, utc_logs) = evaluate(dir.path(), &spec, &utc, "long", &[]).await;
    assert!(utc_logs.contains("states no time zone"), "{utc_logs}");
    assert!((mae(&in_utc) - mae(&from_beijing)).abs() > 1e-6, "{in_utc}");
    let (told, _, _) = evaluate(dir.path(), &spec, &utc, "long", &["--utc-offset", "8"]).await;
    assert_eq!(told[0]["forecasts"], from_beijing[0]["forecasts"]);
    assert!((mae(&told) - mae(&from_beijing)).abs() < 1e-9);
    // Kept in ppb where asked: the same data scored in mixing ratios (NO2: 24.45 / 46.0055 of µg/m³), the table
    // naming the unit; a particle's ppb is refused with the field.
    // On the concentration scale a ridge regression scales with its target exactly.
    let mut linear = spec.clone();
    linear["features"]["logTransform"] = json!(false);
    let (in_ug, _, _) = evaluate(dir.path(), &linear, &long, "long", &["--utc-offset", "8"]).await;
    let (in_ppb, ppb_table, _) = evaluate(dir.path(), &linear, &long, "long", &["--unit", "ppb"]).await;
    let ratio = mae(&in_ppb) / mae(&in_ug);
    assert!((ratio - 24.45 / 46.0055).abs() < 1e-4, "{ratio}");
    assert_eq!(in_ppb[0]["pollutant"], "no2 (ppb)");
    assert!(ppb_table.contains("| no2 (ppb) |"), "{ppb_table}");
    let mut pm25 = spec.clone();
    pm25["target"]["pollutant"] = json!("pm25");
    pm25["target"]["unit"] = json!("ppb");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_airq-predictive"))
        .args(["evaluate", "--spec", &pm25.to_string(), "--csv"])
        .arg(&beijing)
        .output()
        .await
        .unwrap();
    let refused = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && refused.contains("target.unit"), "{refused}");
    // A layout that is not one is refused by name.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_airq-predictive"))
        .args(["evaluate", "--spec", &spec.to_string(), "--format", "wide", "--csv"])
        .arg(&long)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let refused = String::from_utf8_lossy(&output.stderr);
    assert!(
        refused.contains("wide") && refused.contains("beijing") && refused.contains("long"),
        "{refused}"
    );
}

#[tokio::test]
async fn tuning_chooses_inside_the_fitting_period_and_then_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let beijing = common::slice_csv(dir.path());
    let mut spec = common::spec(json!({ "linear": { "l2": 1.0 } }));
    spec["features"]["weather"] = json!(false);
    let run = |tune: Vec<&'static str>| {
        let (spec, beijing) = (spec.to_string(), beijing.clone());
        async move {
            let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_airq-predictive"));
            command
                .args(["evaluate", "--spec", &spec, "--csv"])
                .arg(&beijing)
                .args(["--fit-from", "2015-10-01", "--calibrate-from", "2016-03-01"])
                .args(["--test-from", "2016-04-01", "--test-to", "2016-05-01"])
                .args(["--folds", "2", "--fold-days", "21", "--fold-calibration-days", "21"]);
            for t in tune {
                command.args(["--tune", t]);
            }
            command.output().await.unwrap()
        }
    };
    let output = run(vec![
        "algorithm.linear.l2=0.01,100000",
        "features.logTransform=true,false",
    ])
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    // The folds' table: four candidates, two folds, the lowest mean in bold; the folds end where calibration
    // starts (2016-03-01 local, 2016-02-29T16:00Z) and never reach the test period.
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("l2=")).collect();
    assert_eq!(rows.len(), 4 + 1, "four candidates and the tuned evaluation:\n{stdout}");
    assert!(stdout.contains("| Fold 1 MAE | Fold 2 MAE | Mean MAE |"), "{stdout}");
    assert!(
        stdout.contains("calibrates to 2016-02-08 16:00 UTC and validates to 2016-02-29 16:00 UTC"),
        "{stdout}"
    );
    let mean = |row: &str| -> f64 {
        row.trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap()
            .trim()
            .trim_matches('*')
            .parse()
            .unwrap()
    };
    let candidates = &rows[..4];
    let best = candidates.iter().min_by(|a, b| mean(a).total_cmp(&mean(b))).unwrap();
    assert_eq!(candidates.iter().filter(|r| r.contains("**")).count(), 1, "{stdout}");
    assert!(best.contains("**"), "the lowest mean is the one chosen:\n{stdout}");
    // Then the chosen spec is evaluated on the test period, as without --tune.
    let label = best.split('|').nth(1).unwrap().trim().trim_matches('*');
    assert!(rows[4].contains(&format!("(tuned: {label})")), "{stdout}");
    // A value that makes no valid spec is refused with its field.
    let output = run(vec!["algorithm.linear.l2=-1"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("l2"), "{stderr}");
}
