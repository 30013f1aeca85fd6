//! The dashboard in a real headless Chromium (Debian's package, driven over WebDriver), opened through the real
//! gateway under a path prefix (`/airq/`), over PostgreSQL loaded with two Beijing files and a trained NO₂ model:
//! pick a pollutant and a station, see the chart and the forecast band; a pollutant without a model and a stopped
//! predictive service give the chart with a notice; the comparison and operations pages; a phone-sized window.
//! Screenshots are saved under `<target>/test-output/dashboard/` for a person to look at.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

async fn browser(driver: &airq_testenv::browser::WebDriver, width: u32, height: u32) -> Client {
    ClientBuilder::new(HttpConnector::new())
        .capabilities(driver.capabilities(width, height))
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("no browser session: {e}\n{}", driver.log_tail()))
}

async fn screenshot(client: &Client, dir: &Path, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Waits for `css` and returns it.
async fn element(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
}

/// Runs `script` in the page and returns its value.
async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.unwrap()
}

/// The width in CSS pixels of what `css` draws (0 when absent or empty).
async fn drawn_width(client: &Client, css: &str) -> f64 {
    js(
        client,
        &format!("const e = document.querySelector({css:?}); return e ? e.getBoundingClientRect().width : 0;"),
    )
    .await
    .as_f64()
    .unwrap_or(0.0)
}

async fn notices(client: &Client) -> String {
    js(
        client,
        "return [...document.querySelectorAll('.notice')].map(n => n.textContent).join(' | ');",
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// Waits until the page has drawn the station chart (or failed to).
async fn station_chart(client: &Client) {
    element(client, "#chart svg path.series-mean").await;
}

#[tokio::test]
async fn a_person_reads_a_station_and_its_forecast_in_chromium() {
    let shots = airq_testenv::browser::output_dir("dashboard").unwrap();
    let (test_db, db) = common::loaded_database().await;
    let predictive = common::predictive(&db).await;
    common::train(&predictive.url, "no2-knn", "no2").await;
    let front = common::front(&db, Some(&predictive.url)).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "routes:\n- {{ id: dashboard, pathPrefix: /airq/, upstream: '{}', stripPrefix: true, timeoutSeconds: 10, access: {{ public: true }} }}\n",
        front.url
    );
    let gateway = common::gateway(&test_db.url, &routes, dir.path()).await;
    let driver = airq_testenv::browser::WebDriver::start().await.unwrap();
    let client = browser(&driver, 1280, 900).await;

    // The stations, through the gateway under /airq/.
    client.goto(&format!("{gateway}/airq/")).await.unwrap();
    element(&client, ".station-card[data-station='Dongsi']").await;
    let cards = client.find_all(Locator::Css(".station-card")).await.unwrap();
    assert_eq!(cards.len(), 2);
    // Each card is coloured by its category (the left border), never the grey of "no value".
    let colour = js(
        &client,
        "return getComputedStyle(document.querySelector('.station-card')).borderLeftColor;",
    )
    .await;
    assert_ne!(colour, "rgb(204, 204, 204)", "{colour}");
    screenshot(&client, &shots, "1-stations").await;

    // Pick NO2, then Dongsi.
    let select = element(&client, "select#pollutant").await;
    select.select_by_value("no2").await.unwrap();
    element(&client, ".station-card[data-station='Dongsi'][href*='pollutant=no2']")
        .await
        .click()
        .await
        .unwrap();
    station_chart(&client).await;
    element(&client, "#chart path.band-forecast").await;
    let heading = element(&client, "h1").await.text().await.unwrap();
    assert_eq!(heading, "Dongsi");
    // The measurements, the forecast line and both interval bands are drawn, the bands with an area.
    assert!(drawn_width(&client, "#chart path.series-mean").await > 300.0);
    assert!(drawn_width(&client, "#chart path.forecast-line").await > 20.0);
    let bands = js(
        &client,
        "return [...document.querySelectorAll('#chart path.band-forecast')].map(p => { const b = p.getBBox(); return b.width * b.height; });",
    )
    .await;
    let bands: Vec<f64> = bands.as_array().unwrap().iter().filter_map(Value::as_f64).collect();
    assert_eq!(bands.len(), 2, "80 % and 90 % bands");
    assert!(bands.iter().all(|area| *area > 100.0), "{bands:?}");
    let legend = element(&client, "#chart .legend").await.text().await.unwrap();
    assert!(
        legend.contains("90 % interval") && legend.contains("no2-knn v1"),
        "{legend}"
    );
    assert_eq!(notices(&client).await, "");
    screenshot(&client, &shots, "2-station-no2-forecast").await;

    // The hover shows the values at the nearest hour.
    let overlay = client
        .find(Locator::Css("#chart svg rect[fill='transparent']"))
        .await
        .unwrap();
    client
        .execute(
            "const r = arguments[0].getBoundingClientRect(); arguments[0].dispatchEvent(new MouseEvent('mousemove', { clientX: r.left + r.width * 0.5, clientY: r.top + 20, bubbles: true }));",
            vec![serde_json::to_value(&overlay).unwrap()],
        )
        .await
        .unwrap();
    let tip = element(&client, "#chart .tip:not([hidden])")
        .await
        .text()
        .await
        .unwrap();
    assert!(tip.contains("UTC") && tip.contains("hourly value"), "{tip}");

    // A longer range: downsampled, with the min–max band.
    element(&client, "button[data-range='365']")
        .await
        .click()
        .await
        .unwrap();
    element(&client, "#chart path.band-range").await;
    assert!(drawn_width(&client, "#chart path.band-range").await > 300.0);
    screenshot(&client, &shots, "3-station-no2-year").await;

    // PM2.5 has no model: the chart, and a notice saying so.
    let select = element(&client, "select#pollutant").await;
    select.select_by_value("pm25").await.unwrap();
    element(&client, ".notice").await;
    station_chart(&client).await;
    let text = notices(&client).await;
    assert!(text.contains("No trained model forecasts PM2.5 at Dongsi"), "{text}");
    assert_eq!(drawn_width(&client, "#chart path.band-forecast").await, 0.0);
    screenshot(&client, &shots, "4-station-pm25-no-model").await;

    // An unknown station.
    client.goto(&format!("{gateway}/airq/#/station/Nowhere")).await.unwrap();
    let text = element(&client, ".notice.error").await.text().await.unwrap();
    assert!(text.contains("There is no station “Nowhere”"), "{text}");

    // The comparison and the operations pages.
    client
        .goto(&format!(
            "{gateway}/airq/#/compare?pollutant=no2&from=2017-01-01&to=2017-03-01"
        ))
        .await
        .unwrap();
    element(&client, "#chart path.series-compare").await;
    let lines = client
        .find_all(Locator::Css("#chart path.series-compare"))
        .await
        .unwrap();
    assert_eq!(lines.len(), 2);
    screenshot(&client, &shots, "5-compare").await;
    // An anomaly the predictive service recorded.
    airq_core::store::Store::new(db.clone())
        .anomaly_report(&airq_core::store::AnomalyReport {
            component: "predictive".to_owned(),
            signal: "forecast_abs_error".to_owned(),
            subject: "no2-knn/Dongsi".to_owned(),
            reporter: String::new(),
            opened_at: chrono::Utc::now(),
            value: 310.0,
            expected: Some(12.5),
            score: 31.0,
            peak_score: 31.0,
            detail: "the forecast was 40.0 where 350.0 was measured".to_owned(),
            expires_at: None,
        })
        .await
        .unwrap();
    client.goto(&format!("{gateway}/airq/#/ops")).await.unwrap();
    let anomaly = element(&client, "#anomalies tbody tr.anomaly-open")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        anomaly.contains("open") && anomaly.contains("forecast error") && anomaly.contains("no2-knn/Dongsi"),
        "{anomaly}"
    );
    let summary = element(&client, "#anomalies-summary").await.text().await.unwrap();
    assert_eq!(summary, "1 open, 0 closed in the last 24 hours.");
    let load = element(&client, "#loads tbody tr").await.text().await.unwrap();
    assert!(load.contains("beijing") && load.contains("succeeded"), "{load}");
    let model = element(&client, "#models tbody tr").await.text().await.unwrap();
    assert!(
        model.contains("no2-knn") && model.contains("v1") && model.contains("knn"),
        "{model}"
    );
    element(&client, "#data tbody tr").await;
    screenshot(&client, &shots, "6-operations").await;
    client.close().await.unwrap();

    // A phone: the page fits the screen's width.
    let phone = browser(&driver, 390, 844).await;
    phone
        .goto(&format!("{gateway}/airq/#/station/Dongsi?pollutant=no2"))
        .await
        .unwrap();
    station_chart(&phone).await;
    element(&phone, "#chart path.band-forecast").await;
    let overflow = js(
        &phone,
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
    )
    .await;
    assert_eq!(overflow.as_f64(), Some(0.0), "the page scrolls sideways on a phone");
    screenshot(&phone, &shots, "7-phone-station").await;
    phone.close().await.unwrap();

    // The predictive service stops: the chart without the forecast, and a notice (a new session: no cached forecast).
    predictive.stop().await;
    let client = browser(&driver, 1280, 900).await;
    client
        .goto(&format!("{gateway}/airq/#/station/Dongsi?pollutant=no2"))
        .await
        .unwrap();
    station_chart(&client).await;
    element(&client, ".notice").await;
    let text = notices(&client).await;
    assert!(text.contains("The forecast is not available right now"), "{text}");
    assert_eq!(drawn_width(&client, "#chart path.band-forecast").await, 0.0);
    screenshot(&client, &shots, "8-station-predictive-down").await;
    client.close().await.unwrap();

    eprintln!("screenshots: {}", shots.display());
    test_db.remove().await.unwrap();
}
