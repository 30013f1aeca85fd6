//! A damaged file loaded into a database that holds the clean data, on a real PostgreSQL and on SQLite: every kind of
//! damage a data engineer meets in one file (a field too many, a field too few, a conflicting duplicate, an endless
//! line, an overlong station name, bad bytes, an infinite number, a truncated last line). The clean values stay
//! exactly as they were (fingerprint of every row), every refused row is in `rejected_rows` with its line and
//! reason, and the counts add up to the values read.

// A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read as _;

use airq_api::etl::CsvFormat;
use airq_core::store::Store;
use airq_etl::load::{self, LoadRequest};

/// The first `rows` rows of the real Dongsi file, with its header, as lines (CRLF kept).
fn dongsi(rows: usize) -> Vec<Vec<u8>> {
    let path = airq_testenv::shared_data("beijing-multisite/PRSA_Data_Dongsi_20130301-20170228.csv.gz").unwrap();
    let mut text = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut text)
        .unwrap();
    text.split_inclusive(|b| *b == b'\n')
        .take(rows + 1)
        .map(<[u8]>::to_vec)
        .collect()
}

/// `line` with its field `i` (0-based) set to `value`.
fn with_cell(line: &[u8], i: usize, value: &str) -> Vec<u8> {
    let text = String::from_utf8(line.to_vec()).unwrap();
    let mut cells: Vec<&str> = text.trim_end().split(',').collect();
    cells[i] = value;
    format!("{}\r\n", cells.join(",")).into_bytes()
}

fn replace(line: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(line.to_vec()).unwrap();
    assert!(text.contains(from), "{text:?} has no {from:?}");
    text.replacen(from, to, 1).into_bytes()
}

/// Line numbers (1-based, the header is line 1) of the damaged lines, and what each must be refused for.
struct Damage {
    file: Vec<u8>,
    expected: Vec<(String, &'static str, &'static str)>,
}

fn damaged(clean: &[Vec<u8>]) -> Damage {
    let mut lines = clean.to_vec();
    let mut expected = Vec::new();
    let mut at = |line: usize, parameter: &'static str, reason: &'static str| {
        expected.push((format!("line {line}"), parameter, reason));
    };
    // A field too many in the middle (it would shift every later cell), and one too few.
    lines[10] = replace(&lines[10], ",\"", ",7,\"");
    at(11, "row", "19 fields where the header has 18");
    lines[20] = lines[20].iter().copied().skip_while(|b| *b != b',').skip(1).collect();
    at(21, "row", "17 fields where the header has 18");
    // An endless station name, a long one, bad bytes.
    lines[30] = replace(&lines[30], "\"Dongsi\"", &format!("\"{}\"", "D".repeat(100_000)));
    at(31, "row", "bytes long");
    lines[40] = replace(&lines[40], "\"Dongsi\"", &format!("\"{}\"", "Dongsi".repeat(30)));
    at(41, "row", "longer than 100 characters");
    let bad = lines[50].iter().position(|b| *b == b'"').unwrap() + 1;
    lines[50][bad] = 0xff;
    at(51, "row", "not UTF-8");
    // 1e309 for PM10: that value alone refused, with what was read.
    lines[60] = with_cell(&lines[60], 6, "1e309");
    at(61, "pm10", "not a finite number");
    // The hour of line 3 again with other values: a conflicting duplicate of each value that differs.
    lines.push(with_cell(&clean[2], 5, "555"));
    at(lines.len(), "pm25", "conflicting duplicate: line 3");
    // A last line cut inside a value, with no line ending.
    let last = clean[70].clone();
    let cut = last.iter().position(|b| *b == b'.').unwrap_or(last.len() / 2);
    lines.push(last[..cut].to_vec());
    at(lines.len(), "row", "cut short");
    Damage {
        file: lines.concat(),
        expected,
    }
}

async fn damage_leaves_the_clean_values_alone(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let clean = dongsi(200);
    let clean_path = dir.path().join("PRSA_Data_Dongsi_clean.csv");
    std::fs::write(&clean_path, clean.concat()).unwrap();
    let clean_load = LoadRequest::csv("clean", &clean_path.display().to_string(), CsvFormat::Beijing, "test");
    let first = load::run_to_end(&store, &clean_load).await.unwrap();
    assert!(first.counts.inserted > 2000, "{first:?}");
    let fingerprint = store.fingerprint().await.unwrap();
    let stations = store.stations().await.unwrap().len();

    let damage = damaged(&clean);
    let path = dir.path().join("PRSA_Data_Dongsi_damaged.csv");
    std::fs::write(&path, &damage.file).unwrap();
    let request = LoadRequest::csv("damaged", &path.display().to_string(), CsvFormat::Beijing, "test");
    let outcome = load::run_to_end(&store, &request).await.unwrap();

    assert_eq!(
        store.fingerprint().await.unwrap(),
        fingerprint,
        "no stored value changed"
    );
    assert_eq!(
        store.stations().await.unwrap().len(),
        stations,
        "no station made of damage"
    );
    let c = outcome.counts;
    assert_eq!((c.inserted, c.updated), (0, 0), "{outcome:?}");
    assert_eq!(
        c.inserted + c.updated + c.unchanged + c.rejected,
        outcome.values_read,
        "the counts add up to the values read: {outcome:?}"
    );
    let rejected = store.rejected(outcome.run_id, 1000).await.unwrap();
    assert_eq!(rejected.len() as i64, c.rejected);
    for (record, parameter, reason) in &damage.expected {
        assert!(
            rejected
                .iter()
                .any(|r| &r.record == record && r.parameter == *parameter && r.reason.contains(reason)),
            "{record} {parameter} {reason:?} not in {:#?}",
            rejected
                .iter()
                .map(|r| (&r.record, &r.parameter, &r.reason))
                .collect::<Vec<_>>()
        );
    }
    // Nothing else was refused, and what was refused is kept short.
    let lines: std::collections::BTreeSet<&str> = rejected.iter().map(|r| r.record.as_str()).collect();
    assert_eq!(lines.len(), damage.expected.len(), "{lines:?}");
    assert!(
        rejected
            .iter()
            .all(|r| r.reason.len() < 400 && r.raw_value.as_ref().is_none_or(|v| v.len() < 200))
    );
    let infinite = rejected.iter().find(|r| r.parameter == "pm10").unwrap();
    assert_eq!(infinite.raw_value.as_deref(), Some("1e309"));
}

#[tokio::test]
async fn a_damaged_file_leaves_the_clean_values_alone_on_postgres() {
    let (store, db) = common::postgres_store().await;
    damage_leaves_the_clean_values_alone(store.clone()).await;
    store.database().close().await;
    db.remove().await.unwrap();
}

#[tokio::test]
async fn a_damaged_file_leaves_the_clean_values_alone_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    damage_leaves_the_clean_values_alone(common::sqlite_store(dir.path(), "airq.db").await).await;
}
