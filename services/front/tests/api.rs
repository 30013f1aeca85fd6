//! The view data API against a real PostgreSQL loaded with two whole Beijing files through the ETL: downsampled
//! series keep every bucket's min, mean and max (checked against the stored hourly values), gaps stay gaps, ranges at
//! and beyond the edges of the data, clear 4xx errors, ETag and compression, the comparison, the forecast with and
//! without the predictive service, and the operations view.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use airq_core::parameter::Parameter;
use airq_core::store::Store;
use reqwest::header;
use serde_json::Value;

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn time(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text).unwrap().timestamp()
}

#[tokio::test]
async fn the_view_api_over_the_beijing_data() {
    let (test_db, db) = common::loaded_database().await;
    let store = Store::new(db.clone());
    let front = common::front(&db, None).await.url;
    let http = airq_testenv::http_client();

    // ---- stations with their newest values and categories
    let (status, body) = get(&http, &format!("{front}/api/stations")).await;
    assert_eq!(status, 200, "{body}");
    let stations = body["stations"].as_array().unwrap();
    let codes: Vec<&str> = stations.iter().map(|s| s["code"].as_str().unwrap()).collect();
    assert_eq!(codes, common::STATIONS);
    let dongsi = store
        .stations()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.code == "Dongsi")
        .unwrap();
    let newest = store.latest(dongsi.id, Parameter::Pm25).await.unwrap().unwrap();
    let newest_value = store
        .series(dongsi.id, Parameter::Pm25, newest, newest + 3600)
        .await
        .unwrap()[0]
        .value;
    let pm25 = &stations[1]["pollutants"]["pm25"];
    assert_eq!(time(pm25["last"].as_str().unwrap()), newest);
    // The last hour of the files: 2017-02-28 23:00 in Beijing.
    assert_eq!(pm25["last"], "2017-02-28T15:00:00Z");
    assert_eq!(pm25["value"].as_f64().unwrap(), newest_value);
    let expected = airq_front::view::category("pm25", newest_value).unwrap();
    assert_eq!(pm25["category"]["label"], expected.label);
    assert_eq!(body["categories"].as_array().unwrap().len(), 6);
    assert_eq!(body["pollutants"].as_array().unwrap().len(), 6);
    let (status, one) = get(&http, &format!("{front}/api/stations/Dongsi")).await;
    assert_eq!((status, &one["pollutants"]["pm25"]), (200, pm25));

    // ---- a year downsampled: each bucket's min, mean and max are those of its hours — read from the daily
    // aggregates (500 points: whole days) and from the hourly values (2000 points: 5 hours)
    let mut hours = Vec::new();
    for (points, expected_width, expected_count) in [(500, 86_400, 366), (2000, 5 * 3600, 1757)] {
        let url =
            format!("{front}/api/stations/Dongsi/series?pollutant=pm25&from=2016-01-01&to=2017-01-01&points={points}");
        let (status, series) = get(&http, &url).await;
        assert_eq!(status, 200, "{series}");
        let width = series["bucketSeconds"].as_i64().unwrap();
        let start = series["start"].as_i64().unwrap();
        assert_eq!((width, start), (expected_width, time("2016-01-01T00:00:00Z")));
        let (min, mean, max, count) = (
            series["min"].as_array().unwrap(),
            series["mean"].as_array().unwrap(),
            series["max"].as_array().unwrap(),
            series["count"].as_array().unwrap(),
        );
        assert_eq!(min.len(), expected_count);
        assert!(min.len() <= points && mean.len() == min.len() && max.len() == min.len());
        hours = store
            .series(dongsi.id, Parameter::Pm25, start, time("2017-01-01T00:00:00Z"))
            .await
            .unwrap();
        let mut buckets: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for point in &hours {
            buckets
                .entry(((point.time - start) / width) as usize)
                .or_default()
                .push(point.value);
        }
        let round = |v: f64| (v * 100.0).round() / 100.0;
        for (i, values) in &buckets {
            let lowest = values.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let average = values.iter().sum::<f64>() / values.len() as f64;
            assert_eq!(min[*i].as_f64(), Some(round(lowest)), "bucket {i}");
            assert_eq!(max[*i].as_f64(), Some(round(highest)), "bucket {i}");
            assert_eq!(mean[*i].as_f64(), Some(round(average)), "bucket {i}");
            assert_eq!(count[*i].as_u64(), Some(values.len() as u64), "bucket {i}");
        }
        // The year's extremes survive downsampling.
        let year_max = hours.iter().map(|p| p.value).fold(f64::NEG_INFINITY, f64::max);
        let shown_max = max.iter().filter_map(Value::as_f64).fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(shown_max, round(year_max));
        // Buckets without a value are null, not zero, and only those.
        for (i, value) in min.iter().enumerate() {
            assert_eq!(value.is_null(), !buckets.contains_key(&i), "bucket {i}");
        }
        assert_eq!(series["filled"].as_u64(), Some(buckets.len() as u64));
    }

    // ---- hourly resolution keeps a missing hour as a gap
    let missing = hours
        .windows(2)
        .find(|w| w[1].time - w[0].time > 3600)
        .map(|w| w[0].time + 3600)
        .expect("Dongsi has a missing PM2.5 hour in 2016");
    let url = format!(
        "{front}/api/stations/Dongsi/series?pollutant=pm25&from={}&to={}&points=500",
        missing - 5 * 3600,
        missing + 5 * 3600
    );
    let (status, around) = get(&http, &url).await;
    assert_eq!(
        (status, around["bucketSeconds"].as_i64()),
        (200, Some(3600)),
        "{around}"
    );
    assert!(around["mean"][5].is_null(), "{around}");
    assert!(around["mean"][4].is_number(), "{around}");

    // ---- the edges of the data
    let (status, before) = get(
        &http,
        &format!("{front}/api/stations/Dongsi/series?pollutant=pm25&from=2013-02-01&to=2013-03-03&points=100"),
    )
    .await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["extent"]["first"], "2013-02-28T16:00:00Z");
    let first_filled = before["count"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c.as_i64() > Some(0))
        .unwrap() as i64;
    let bucket = before["bucketSeconds"].as_i64().unwrap();
    let start = before["start"].as_i64().unwrap();
    // The first filled bucket holds the first hour of the data.
    assert!(start + first_filled * bucket <= time("2013-02-28T16:00:00Z"));
    assert!(time("2013-02-28T16:00:00Z") < start + (first_filled + 1) * bucket);
    let (status, after) = get(
        &http,
        &format!("{front}/api/stations/Dongsi/series?pollutant=pm25&from=2017-02-27&to=2017-03-05"),
    )
    .await;
    assert_eq!(status, 200, "{after}");
    let means = after["mean"].as_array().unwrap();
    let last_filled = means.iter().rposition(Value::is_number).unwrap() as i64;
    assert_eq!(
        after["start"].as_i64().unwrap() + last_filled * 3600,
        time("2017-02-28T15:00:00Z")
    );
    assert!(means[last_filled as usize + 1..].iter().all(Value::is_null));
    // Without a range: the week up to the newest hour.
    let (status, default) = get(&http, &format!("{front}/api/stations/Dongsi/series?pollutant=pm25")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (default["from"].as_str(), default["to"].as_str()),
        (Some("2017-02-21T16:00:00Z"), Some("2017-02-28T16:00:00Z"))
    );
    assert_eq!(default["mean"].as_array().unwrap().len(), 168);
    // Wholly outside the data.
    let (status, body) = get(
        &http,
        &format!("{front}/api/stations/Dongsi/series?pollutant=pm25&from=2019-01-01&to=2019-02-01"),
    )
    .await;
    assert_eq!((status, code(&body)), (404, "no_data"), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("2013-02-28T16:00:00Z") && message.contains("2017-02-28T15:00:00Z"),
        "{message}"
    );

    // ---- errors a person can act on
    for (path, status, expected_code, words) in [
        ("/api/stations/Nowhere", 404, "not_found", "no station \"Nowhere\""),
        (
            "/api/stations/Nowhere/series",
            404,
            "not_found",
            "no station \"Nowhere\"",
        ),
        (
            "/api/stations/Dongsi/series?pollutant=pm3",
            422,
            "invalid_request",
            "pollutant=\"pm3\"",
        ),
        (
            "/api/stations/Dongsi/series?pollutant=temp",
            422,
            "invalid_request",
            "pm25, pm10",
        ),
        (
            "/api/stations/Dongsi/series?from=yesterday",
            422,
            "invalid_request",
            "from=\"yesterday\"",
        ),
        (
            "/api/stations/Dongsi/series?from=2016-02-01&to=2016-01-01",
            422,
            "invalid_request",
            "range is empty",
        ),
        (
            "/api/stations/Dongsi/series?points=1",
            422,
            "invalid_request",
            "points=1",
        ),
        (
            "/api/stations/Dongsi/series?points=many",
            422,
            "invalid_request",
            "points=\"many\"",
        ),
        ("/api/compare?stations=Dongsi,Nowhere", 404, "not_found", "Nowhere"),
        ("/api/nothing", 404, "not_found", "no API endpoint"),
    ] {
        let (got, body) = get(&http, &format!("{front}{path}")).await;
        assert_eq!((got, code(&body)), (status, expected_code), "{path}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(words),
            "{path}: {body}"
        );
    }

    // ---- cacheable and small
    let url = format!("{front}/api/stations/Dongsi/series?pollutant=pm25&from=2016-01-01&to=2017-01-01&points=500");
    let first = http.get(&url).send().await.unwrap();
    let etag = first.headers().get(header::ETAG).unwrap().clone();
    assert_eq!(
        first.headers().get(header::CACHE_CONTROL).unwrap(),
        "public, max-age=60"
    );
    let plain = first.bytes().await.unwrap().len();
    let again = http
        .get(&url)
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    let gzipped = http
        .get(&url)
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.headers().get(header::CONTENT_ENCODING).unwrap(), "gzip");
    let compressed = gzipped.bytes().await.unwrap().len();
    assert!(plain < 24_000, "{plain} bytes for 488 buckets");
    assert!(compressed * 2 < plain, "gzip: {compressed} of {plain} bytes");

    // ---- comparison: every station on the same buckets
    let (status, compared) = get(
        &http,
        &format!("{front}/api/compare?pollutant=no2&from=2016-07-01&to=2016-08-01&points=200"),
    )
    .await;
    assert_eq!(status, 200, "{compared}");
    let count = compared["count"].as_u64().unwrap() as usize;
    let all = compared["series"].as_array().unwrap();
    assert_eq!(all.len(), 2);
    for s in all {
        assert_eq!(s["mean"].as_array().unwrap().len(), count);
        assert!(s["filled"].as_u64().unwrap() > 60, "{s}");
    }
    let (_, only) = get(
        &http,
        &format!("{front}/api/compare?pollutant=no2&stations=Dongsi&from=2016-07-01&to=2016-08-01&points=200"),
    )
    .await;
    assert_eq!(only["series"].as_array().unwrap().len(), 1);
    assert_eq!(only["series"][0]["mean"], all[1]["mean"]);

    // ---- without a predictive service: a forecast is unavailable, the rest works
    let (status, body) = get(&http, &format!("{front}/api/stations/Dongsi/forecast?pollutant=pm25")).await;
    assert_eq!((status, code(&body)), (503, "forecast_unavailable"), "{body}");
    let (status, ops) = get(&http, &format!("{front}/api/ops")).await;
    assert_eq!(status, 200, "{ops}");
    assert_eq!(ops["loads"][0]["name"], "beijing");
    assert_eq!(ops["loads"][0]["status"], "succeeded");
    assert!(ops["models"].is_null());
    assert!(ops["modelsError"].as_str().unwrap().contains("AIRQ_PREDICTIVE_URL"));
    assert_eq!(ops["series"].as_array().unwrap().len(), 12);
    assert_eq!(ops["anomalies"], serde_json::json!([]));
    assert!(
        ops["loads"][0]["rowsStuck"].as_i64().unwrap() > 0,
        "the files hold stuck sensors"
    );

    // ---- anomalies every part reported: open ones first, then the recently closed
    let now = chrono::Utc::now();
    let report = |component: &str, signal: &str, subject: &str, minutes_ago: i64| airq_core::store::AnomalyReport {
        component: component.to_owned(),
        signal: signal.to_owned(),
        subject: subject.to_owned(),
        reporter: String::new(),
        opened_at: now - chrono::Duration::minutes(minutes_ago),
        value: 0.6,
        expected: Some(0.01),
        score: 40.0,
        peak_score: 55.0,
        detail: format!("{signal} of {subject}"),
        expires_at: None,
    };
    store
        .anomaly_report(&report("etl", "load_duration_seconds", "beijing", 90))
        .await
        .unwrap();
    store
        .anomaly_close("etl", "load_duration_seconds", "beijing", "", now)
        .await
        .unwrap();
    store
        .anomaly_report(&report("gateway", "error_ratio", "front", 5))
        .await
        .unwrap();
    // An old episode, closed two days ago: out of the default day.
    store
        .anomaly_report(&report("predictive", "forecast_abs_error", "pm25/Dongsi", 3000))
        .await
        .unwrap();
    store
        .anomaly_close(
            "predictive",
            "forecast_abs_error",
            "pm25/Dongsi",
            "",
            now - chrono::Duration::hours(48),
        )
        .await
        .unwrap();
    let (status, body) = get(&http, &format!("{front}/api/anomalies")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["open"].as_i64(), body["hours"].as_i64()),
        (Some(1), Some(24)),
        "{body}"
    );
    let listed: Vec<(&str, bool)> = body["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["subject"].as_str().unwrap(), a["closedAt"].is_null()))
        .collect();
    assert_eq!(listed, vec![("front", true), ("beijing", false)]);
    assert_eq!(body["anomalies"][0]["peakScore"], 55.0);
    assert_eq!(body["anomalies"][0]["detail"], "error_ratio of front");
    let (_, week) = get(&http, &format!("{front}/api/anomalies?hours=72")).await;
    assert_eq!(week["anomalies"].as_array().unwrap().len(), 3);
    for bad in ["0", "721", "soon"] {
        let (status, body) = get(&http, &format!("{front}/api/anomalies?hours={bad}")).await;
        assert_eq!((status, code(&body)), (422, "invalid_request"), "hours={bad}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("hours="), "{body}");
    }
    let (_, ops) = get(&http, &format!("{front}/api/ops")).await;
    assert_eq!(ops["anomalies"].as_array().unwrap().len(), 2, "{ops}");

    // ---- the OpenAPI description
    let (status, openapi) = get(&http, &format!("{front}/api/openapi.json")).await;
    assert_eq!(status, 200);
    assert!(openapi["paths"]["/api/stations/{code}/series"]["get"].is_object());
    assert!(openapi["paths"]["/api/anomalies"]["get"].is_object());

    test_db.remove().await.unwrap();
}

#[tokio::test]
async fn forecasts_come_from_the_model_of_the_pollutant() {
    let (test_db, db) = common::loaded_database().await;
    let predictive_server = common::predictive(&db).await;
    let predictive = predictive_server.url.clone();
    let front = common::front(&db, Some(&predictive)).await.url;
    let http = airq_testenv::http_client();

    // No model yet.
    let (status, body) = get(&http, &format!("{front}/api/stations/Dongsi/forecast?pollutant=no2")).await;
    assert_eq!((status, code(&body)), (404, "no_model"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no2 at Dongsi"));

    common::train(&predictive, "no2-knn", "no2").await;
    // The model list is reused for 15 s: a new front sees the trained model at once.
    let front = common::front(&db, Some(&predictive)).await.url;
    let (status, forecast) = get(
        &http,
        &format!("{front}/api/stations/Dongsi/forecast?pollutant=no2&confidence=0.8,0.9"),
    )
    .await;
    assert_eq!(status, 200, "{forecast}");
    assert_eq!(forecast["model"], "no2-knn");
    assert_eq!(forecast["origin"], "2017-02-28T15:00:00Z");
    let points = forecast["points"].as_array().unwrap();
    assert_eq!(points.len(), 24);
    for p in points {
        let value = p["value"].as_f64().unwrap();
        let intervals = p["intervals"].as_array().unwrap();
        assert_eq!(intervals.len(), 2);
        for i in intervals {
            assert!(
                i["lower"].as_f64().unwrap() <= value && value <= i["upper"].as_f64().unwrap(),
                "{p}"
            );
        }
    }
    // Another pollutant has no model; a bad level is refused here.
    let (status, body) = get(&http, &format!("{front}/api/stations/Dongsi/forecast?pollutant=o3")).await;
    assert_eq!((status, code(&body)), (404, "no_model"), "{body}");
    let (status, body) = get(
        &http,
        &format!("{front}/api/stations/Dongsi/forecast?pollutant=no2&confidence=90"),
    )
    .await;
    assert_eq!((status, code(&body)), (422, "invalid_request"), "{body}");

    // The operations view lists the model with its scores.
    let (_, ops) = get(&http, &format!("{front}/api/ops")).await;
    let model = &ops["models"][0];
    assert_eq!(model["name"], "no2-knn");
    assert_eq!(model["latest"]["version"], "v1");
    assert!(model["latest"]["metrics"]["mae"].as_f64().unwrap() > 0.0, "{model}");

    // The predictive service stops: the forecast is unavailable, with a reason.
    predictive_server.stop().await;
    let (status, body) = get(&http, &format!("{front}/api/stations/Dongsi/forecast?pollutant=no2")).await;
    assert_eq!((status, code(&body)), (503, "forecast_unavailable"), "{body}");

    test_db.remove().await.unwrap();
}
