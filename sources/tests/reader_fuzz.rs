//! Fuzzing the CSV readers (Beijing and long layouts, plain and gzip) with proptest: seeds from
//! `tests/corpus/*.csv` (and, when the shared data is beside the repository, the first rows of a real Beijing file),
//! mutated by inserting the tokens damaged files are made of (separators, quotes, line endings, bad bytes, huge
//! numbers, offsets, long runs), deleting, duplicating lines and truncating. For every input: no panic; an error
//! names the file; every chunk's count of values read is its kept plus its refused values; every refusal names its
//! line, and is short; every kept value is finite, plausible, on the hour, and no two kept values of one station,
//! parameter and hour differ; no station is empty or longer than the bound.
//!
//! `PROPTEST_CASES=20000 cargo test -p airq-sources --test reader_fuzz` runs it longer (docs/benchmarks.md says how long
//! it ran without a finding).

// A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Instant;

use airq_api::etl::CsvFormat;
use airq_sources::csv::{self, MAX_STATION_CHARS};
use airq_sources::{Chunk, TimeRange};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::sync::mpsc;

/// One change to a seed.
#[derive(Debug, Clone)]
enum Edit {
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Replace { at: usize, byte: u8 },
    DuplicateLine { line: usize },
    Truncate { at: usize },
    Run { at: usize, byte: u8, len: usize },
}

fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            &b","[..],
            b"\"",
            b"\"\"",
            b"\r\n",
            b"\n",
            b"\r",
            b"\xff",
            b"\xc3",
            b"\xef\xbb\xbf",
            b"NA",
            b"NaN",
            b"-",
            b"1e309",
            b"-999",
            b"inf",
            b"0x10",
            b"2013",
            b"13",
            b"24",
            b"+0800",
            b"+08:00",
            b"Z",
            b":30",
            b"T",
            b" ",
            b"\t",
            b"\0",
            b"ppb",
            b"mg/m3",
            b"pm25",
            b"station",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 1..12),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), token()).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        2 => (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Replace { at, byte }),
        2 => any::<usize>().prop_map(|line| Edit::DuplicateLine { line }),
        1 => any::<usize>().prop_map(|at| Edit::Truncate { at }),
        1 => (any::<usize>(), prop::sample::select(vec![b'9', b'x', b',', b'"', b'\n']), 1usize..40_000)
            .prop_map(|(at, byte, len)| Edit::Run { at, byte, len }),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for edit in edits {
        let len = bytes.len();
        let pos = |at: usize| if len == 0 { 0 } else { at % (len + 1) };
        match edit {
            Edit::Insert { at, bytes: new } => {
                let at = pos(*at);
                bytes.splice(at..at, new.iter().copied());
            }
            Edit::Delete { at, len: n } => {
                let at = pos(*at);
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Edit::Replace { at, byte } => {
                if len > 0 {
                    bytes[at % len] = *byte;
                }
            }
            Edit::DuplicateLine { line } => {
                let lines: Vec<Vec<u8>> = bytes.split_inclusive(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                if !lines.is_empty() {
                    let copy = lines[line % lines.len()].clone();
                    bytes.extend_from_slice(&copy);
                }
            }
            Edit::Truncate { at } => bytes.truncate(pos(*at)),
            Edit::Run { at, byte, len: n } => {
                let at = pos(*at);
                bytes.splice(at..at, std::iter::repeat_n(*byte, *n));
            }
        }
    }
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Reads `input` (`plain` once gunzipped) and checks every property; the number of values read.
fn check(name: &str, input: &[u8], plain: &[u8], format: CsvFormat) -> Result<i64, TestCaseError> {
    let (tx, mut rx) = mpsc::channel(10_000);
    let result = csv::read(name, input, format, TimeRange::default(), &tx);
    drop(tx);
    if let Err(e) = &result {
        prop_assert!(e.to_string().contains(name), "the error names the file: {e}");
    }
    let lines = plain.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    let mut kept: HashMap<(String, airq_core::parameter::Parameter, i64), f64> = HashMap::new();
    let mut read = 0;
    while let Ok(Chunk {
        stations,
        observations,
        rejected,
        values_read,
        ..
    }) = rx.try_recv()
    {
        prop_assert_eq!(values_read, (observations.len() + rejected.len()) as i64);
        read += values_read;
        for station in &stations {
            prop_assert!(!station.code.is_empty() && station.code.chars().count() <= MAX_STATION_CHARS);
            prop_assert!(!station.code.contains('\n'), "{:?}", station.code);
        }
        for r in &rejected {
            let line: Option<u64> = r.record.strip_prefix("line ").and_then(|n| n.parse().ok());
            prop_assert!(
                line.is_some_and(|n| n >= 2 && n <= lines),
                "{:?} of {} lines",
                r.record,
                lines
            );
            prop_assert!(r.reason.len() < 500, "{}", r.reason);
            prop_assert!(r.parameter.len() < 300, "{}", r.parameter);
            prop_assert!(r.raw_value.as_ref().is_none_or(|v| v.len() < 300));
        }
        for o in &observations {
            prop_assert!(o.value.is_finite());
            prop_assert!(o.parameter.check(o.value).is_ok(), "{o:?}");
            prop_assert_eq!(o.time.rem_euclid(3600), 0, "{:?}", o);
            let first = *kept
                .entry((o.station.to_string(), o.parameter, o.time))
                .or_insert(o.value);
            prop_assert_eq!(first.to_bits(), o.value.to_bits(), "two kept values differ: {:?}", o);
        }
    }
    Ok(read)
}

fn seeds() -> Vec<(CsvFormat, Vec<u8>)> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seeds = vec![
        (CsvFormat::Beijing, std::fs::read(corpus.join("beijing.csv")).unwrap()),
        (CsvFormat::Long, std::fs::read(corpus.join("long.csv")).unwrap()),
    ];
    // Real rows, read by path (never copied into the repository), when the shared data is there.
    if let Ok(path) = airq_testenv::shared_data("beijing-multisite/PRSA_Data_Dongsi_20130301-20170228.csv.gz") {
        let mut text = Vec::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
            .take(4000)
            .read_to_end(&mut text)
            .unwrap();
        seeds.push((CsvFormat::Beijing, text));
    }
    seeds
}

#[test]
fn damaged_csv_never_panics_and_every_value_is_accounted_for() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let seeds = seeds();
    // The seeds as they are: every value accounted for, and something kept.
    for (format, seed) in &seeds {
        assert!(check("seed.csv", seed, seed, *format).unwrap() > 0);
    }
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0..seeds.len(),
        prop::collection::vec(edit(), 1..8),
        any::<bool>(),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(seed, edits, compressed, other_layout)| {
            let (format, bytes) = &seeds[seed];
            let input = apply(bytes, &edits);
            let format = match (format, other_layout) {
                (f, false) => *f,
                (CsvFormat::Beijing, true) => CsvFormat::Long,
                (CsvFormat::Long, true) => CsvFormat::Beijing,
            };
            let sent = if compressed { gzip(&input) } else { input.clone() };
            check("PRSA_Data_Fuzzed_2013.csv", &sent, &input, format)?;
            Ok(())
        })
        .unwrap();
    eprintln!("{cases} damaged files read in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_damaged_gzip_stream_fails_naming_the_offset() {
    for (format, seed) in seeds() {
        let mut gz = gzip(&seed.repeat(20));
        let middle = gz.len() / 2;
        for byte in &mut gz[middle..middle + 16] {
            *byte = !*byte;
        }
        let (tx, _rx) = mpsc::channel(10_000);
        let err = csv::read("broken.csv.gz", gz.as_slice(), format, TimeRange::default(), &tx).unwrap_err();
        assert!(err.to_string().contains("compressed byte"), "{err}");
    }
}
