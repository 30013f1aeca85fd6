//! The dashboard in a real headless Chromium (Debian's package, driven over WebDriver), opened through the real
//! gateway under a path prefix (`/airq/`), over PostgreSQL loaded with two Beijing files and a trained NO₂ model:
//! pick a pollutant and a station, see the chart and the forecast band; a pollutant without a model and a stopped
//! predictive service give the chart with a notice; the comparison and operations pages; a phone-sized window.
//! Screenshots are saved under `<target>/test-output/dashboard/` for a person to look at.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use airq_testenv::browser::WebDriver;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

async fn browser(driver: &WebDriver, width: u32, height: u32) -> Client {
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

/// Fails on what the page wrote to the console as an error since the last call — a Content-Security-Policy
/// violation, a script error, a failed request — except messages containing one of `expected`.
async fn console_clean(driver: &WebDriver, client: &Client, page: &str, expected: &[&str]) {
    let session = client.session_id().await.unwrap().expect("a session");
    let errors: Vec<(String, String)> = driver
        .console(&session)
        .await
        .unwrap()
        .into_iter()
        .filter(|(level, message)| level == "SEVERE" || message.contains("Content Security Policy"))
        .filter(|(_, message)| !expected.iter().any(|e| message.contains(e)))
        .collect();
    assert!(
        errors.is_empty(),
        "{page}: the browser's console has errors: {errors:#?}"
    );
}

/// Every chart and map on the page is drawn at the size it is shown (its drawing's width is the width on screen, so
/// its 11 px text is 11 px), not drawn at one size and scaled.
async fn drawn_at_their_size(client: &Client, page: &str) {
    let sizes = js(
        client,
        "return [...document.querySelectorAll('.chart svg, .map svg')].map(s => [s.viewBox.baseVal.width, s.getBoundingClientRect().width, parseFloat(getComputedStyle(s.querySelector('text')).fontSize)]);",
    )
    .await;
    let sizes = sizes.as_array().unwrap();
    assert!(!sizes.is_empty(), "{page}: no chart");
    for size in sizes {
        let (drawn, shown, font) = (
            size[0].as_f64().unwrap(),
            size[1].as_f64().unwrap(),
            size[2].as_f64().unwrap(),
        );
        let on_screen = font * shown / drawn;
        assert!(
            (drawn - shown).abs() <= 1.5 && (9.5..=12.5).contains(&on_screen),
            "{page}: drawn {drawn} px wide, shown {shown} px wide: its {font} px text is {on_screen:.1} px on screen"
        );
    }
}

/// What a person sees of each line `css` selects: its computed stroke colour (never `none` or transparent) and
/// its length on screen (more than `min_length` px).
async fn visible_lines(client: &Client, css: &str, min_length: f64) -> Vec<String> {
    let lines = js(
        client,
        &format!(
            "return [...document.querySelectorAll({css:?})].map(p => {{ const s = getComputedStyle(p); const m = p.getScreenCTM(); return [s.stroke, s.strokeWidth, p.getTotalLength() * (m ? m.a : 0), s.visibility, s.opacity]; }});"
        ),
    )
    .await;
    let lines = lines.as_array().unwrap().clone();
    assert!(!lines.is_empty(), "no {css}");
    lines
        .iter()
        .map(|line| {
            let stroke = line[0].as_str().unwrap().to_owned();
            let length = line[2].as_f64().unwrap();
            assert!(
                stroke != "none"
                    && !stroke.ends_with(", 0)")
                    && line[1] != "0px"
                    && line[3] == "visible"
                    && line[4] != "0",
                "{css}: a line nobody sees: {line}"
            );
            assert!(length > min_length, "{css}: {length} px long on screen: {line}");
            stroke
        })
        .collect()
}

/// The computed fill of each band `css` selects: never `none` or transparent.
async fn filled_bands(client: &Client, css: &str) {
    let fills = js(
        client,
        &format!("return [...document.querySelectorAll({css:?})].map(p => getComputedStyle(p).fill);"),
    )
    .await;
    let fills = fills.as_array().unwrap();
    assert!(!fills.is_empty(), "no {css}");
    for fill in fills {
        let fill = fill.as_str().unwrap();
        assert!(
            fill != "none" && !fill.ends_with(", 0)") && fill != "transparent",
            "{css}: fill {fill}"
        );
    }
}

#[tokio::test]
async fn a_person_reads_a_station_and_its_forecast_in_chromium() {
    let shots = airq_testenv::browser::output_dir("dashboard").unwrap();
    let (test_db, db) = common::loaded_database().await;
    let predictive = common::predictive(&db).await;
    common::train(&predictive.url, "no2-knn", "no2").await;
    common::train_ahead(&predictive.url, "o3-week", "o3", 168).await;
    let front = common::front(&db, Some(&predictive.url)).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "routes:\n- {{ id: dashboard, pathPrefix: /airq/, upstream: '{}', stripPrefix: true, timeoutSeconds: 10, access: {{ public: true }} }}\n",
        front.url
    );
    let gateway = common::gateway(&test_db.url, &routes, dir.path()).await;
    let driver = WebDriver::start().await.unwrap();
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
    // The data ends in 2017: the page says how old it is.
    let age = element(&client, ".notice.data-age").await.text().await.unwrap();
    assert!(
        age.contains("The newest data is from 2017-") && age.contains("years ago"),
        "{age}"
    );
    console_clean(&driver, &client, "the stations", &[]).await;
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
    let day_ahead = drawn_width(&client, "#chart path.forecast-line").await;
    assert!(day_ahead > 20.0);
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
    assert!(notices(&client).await.starts_with("The newest data is from 2017-"));
    visible_lines(&client, "#chart path.series-mean", 300.0).await;
    visible_lines(&client, "#chart path.forecast-line", 20.0).await;
    filled_bands(&client, "#chart path.band-forecast").await;
    drawn_at_their_size(&client, "a station").await;
    console_clean(&driver, &client, "a station", &[]).await;
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
    filled_bands(&client, "#chart path.band-range").await;
    // The dates are ISO text, as everywhere else on the page.
    let from = js(&client, "return document.querySelector('#from').value;").await;
    assert!(
        from.as_str().is_some_and(|f| f.len() == 10 && f.as_bytes()[4] == b'-'),
        "{from}"
    );
    screenshot(&client, &shots, "3-station-no2-year").await;

    // PM2.5 has no model: the chart, and a notice saying so.
    let select = element(&client, "select#pollutant").await;
    select.select_by_value("pm25").await.unwrap();
    element(&client, ".notice").await;
    station_chart(&client).await;
    let text = notices(&client).await;
    assert!(text.contains("No trained model forecasts PM2.5 at Dongsi"), "{text}");
    assert_eq!(drawn_width(&client, "#chart path.band-forecast").await, 0.0);
    // The front's 404 for the forecast is the notice above, not a fault of the page.
    console_clean(&driver, &client, "a pollutant without a model", &["404"]).await;
    screenshot(&client, &shots, "4-station-pm25-no-model").await;

    // O3's model forecasts a week ahead: the line and both bands run over the whole week — seven times the day the
    // NO2 forecast covered, in a chart six days longer (the week shown and the forecast: 7 × 8 / 14 = 4 times as
    // wide) — and the table reaches the 168th hour.
    let select = element(&client, "select#pollutant").await;
    select.select_by_value("o3").await.unwrap();
    element(&client, "#chart path.band-forecast").await;
    let legend = element(&client, "#chart .legend").await.text().await.unwrap();
    assert!(legend.contains("o3-week v1"), "{legend}");
    let week = drawn_width(&client, "#chart path.forecast-line").await;
    assert!(week > 3.6 * day_ahead, "a week {week} px, a day {day_ahead} px");
    let band_widths = js(
        &client,
        "return [...document.querySelectorAll('#chart path.band-forecast')].map(p => p.getBoundingClientRect().width);",
    )
    .await;
    let band_widths: Vec<f64> = band_widths
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(band_widths.len(), 2);
    assert!(
        band_widths.iter().all(|w| (w - week).abs() < 3.0),
        "{band_widths:?} against {week}"
    );
    visible_lines(&client, "#chart path.forecast-line", 3.6 * day_ahead).await;
    filled_bands(&client, "#chart path.band-forecast").await;
    // Its table: every third hour and the first, the last 167 hours after the first (the 168th hour ahead).
    let table = js(
        &client,
        "const rows = [...document.querySelectorAll('details tbody tr')]; \
         const t = (r) => Date.parse(r.cells[0].textContent.replace(' ', 'T') + ':00Z') / 3600000; \
         return [rows.length, t(rows[rows.length - 1]) - t(rows[0])];",
    )
    .await;
    assert_eq!(table, serde_json::json!([57, 167]), "{table}");
    console_clean(&driver, &client, "a week-ahead forecast", &[]).await;
    screenshot(&client, &shots, "5-station-o3-week").await;

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
    // Each station's line is seen, in a colour of its own; the page's policy refused no style.
    let colours = visible_lines(&client, "#chart path.series-compare", 200.0).await;
    assert_ne!(colours[0], colours[1], "both lines in {}", colours[0]);
    drawn_at_their_size(&client, "the comparison").await;
    let range = element(&client, "#compare-range").await.text().await.unwrap();
    assert!(!range.contains(":00Z") && range.ends_with("UTC."), "{range}");
    console_clean(&driver, &client, "the comparison", &[]).await;
    // A narrower window: the charts are drawn again at the new width.
    client.set_window_size(900, 900).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drawn_at_their_size(&client, "the comparison in a narrower window").await;
    client.set_window_size(1280, 900).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    // Names and units, stations in order of their names.
    let head = element(&client, "#data thead").await.text().await.unwrap();
    assert!(head.contains("PM2.5 (µg/m³)") && !head.contains("pm25"), "{head}");
    let rows = js(
        &client,
        "return [...document.querySelectorAll('#data tbody tr td:first-child')].map(t => t.textContent);",
    )
    .await;
    let rows: Vec<&str> = rows.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let mut sorted = rows.clone();
    sorted.sort_unstable();
    assert_eq!(rows, sorted);
    console_clean(&driver, &client, "the operations", &[]).await;
    screenshot(&client, &shots, "6-operations").await;

    // The API's reference: the one OpenAPI document of everything behind the gateway, as a page.
    client.goto(&format!("{gateway}/airq/#/api")).await.unwrap();
    element(&client, "section.api-part[data-tag='predictive'] .api-operation").await;
    let page = js(&client, "return document.getElementById('view').innerText;").await;
    let page = page.as_str().unwrap();
    for operation in [
        "GET /api/stations/{code}/series",
        "GET /api/predictive/models/{name}/forecast",
        "POST /api/etl/loads",
        "POST /admin/users/{name}/keys",
    ] {
        assert!(page.contains(operation), "{operation} is not on the API page:\n{page}");
    }
    // A parameter with its description, and the answers with their bodies.
    assert!(
        page.contains("station") && page.contains("409") && page.contains("Forecast (application/json)"),
        "{page}"
    );
    let link = element(&client, "#openapi-link").await.attr("href").await.unwrap();
    assert_eq!(link.as_deref(), Some("api/openapi.json"));
    console_clean(&driver, &client, "the API's reference", &[]).await;
    screenshot(&client, &shots, "6-api").await;
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
    drawn_at_their_size(&phone, "a station on a phone").await;
    screenshot(&phone, &shots, "7-phone-station").await;
    // Every other page on the phone.
    for (page, url, ready) in [
        ("7-phone-stations", "#/", ".station-card"),
        (
            "7-phone-compare",
            "#/compare?pollutant=no2&from=2017-01-01&to=2017-03-01",
            "#chart path.series-compare",
        ),
        ("7-phone-operations", "#/ops", "#data tbody tr"),
        ("7-phone-api", "#/api", ".api-operation"),
    ] {
        phone.goto(&format!("{gateway}/airq/{url}")).await.unwrap();
        element(&phone, ready).await;
        let overflow = js(
            &phone,
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
        )
        .await;
        assert_eq!(overflow.as_f64(), Some(0.0), "{page} scrolls sideways");
        if page == "7-phone-compare" {
            drawn_at_their_size(&phone, page).await;
        }
        screenshot(&phone, &shots, page).await;
    }
    console_clean(&driver, &phone, "the pages on a phone", &[]).await;
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
