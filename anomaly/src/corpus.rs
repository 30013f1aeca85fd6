//! Labelled series in NAB's layout: `<dir>/labels.json` maps `"<group>/<file>.csv"` to its anomaly windows (pairs of
//! timestamps), and each CSV file is `timestamp,value`.

use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;

use crate::nab::Window;

/// What is wrong with a corpus, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Labels { path: PathBuf, message: String },
    #[error("{path}, line {line}: {message}")]
    Row {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// One labelled series.
#[derive(Debug, Clone)]
pub struct Series {
    /// The file's name as `labels.json` spells it (`realKnownCause/nyc_taxi.csv`).
    pub name: String,
    /// Seconds since the epoch (timestamps are naive; only differences matter).
    pub timestamps: Vec<i64>,
    pub values: Vec<f64>,
    /// The labelled windows as rows, in order.
    pub windows: Vec<Window>,
}

impl Series {
    /// The usual spacing between rows (the median), in seconds; at least 1.
    pub fn step_seconds(&self) -> i64 {
        let mut steps: Vec<i64> = self.timestamps.windows(2).map(|w| w[1] - w[0]).collect();
        if steps.is_empty() {
            return 1;
        }
        steps.sort_unstable();
        steps[steps.len() / 2].max(1)
    }

    /// How many rows make `seconds` at this series' usual spacing (at least 1).
    pub fn rows_in(&self, seconds: i64) -> usize {
        usize::try_from(seconds / self.step_seconds()).unwrap_or(0).max(1)
    }
}

fn parse_time(text: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// Loads every file `labels.json` names, in name order.
pub fn load(dir: &Path) -> Result<Vec<Series>, Error> {
    let labels_path = dir.join("labels.json");
    let labels_text = std::fs::read_to_string(&labels_path).map_err(|source| Error::Read {
        path: labels_path.clone(),
        source,
    })?;
    let labels_error = |message: String| Error::Labels {
        path: labels_path.clone(),
        message,
    };
    let labels: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&labels_text).map_err(|e| labels_error(e.to_string()))?;
    let mut corpus = Vec::with_capacity(labels.len());
    for (name, windows) in &labels {
        let spans = windows
            .as_array()
            .ok_or_else(|| labels_error(format!("{name}: expected a list of [start, end] pairs")))?;
        let mut times = Vec::with_capacity(spans.len());
        for span in spans {
            let pair = span
                .as_array()
                .filter(|pair| pair.len() == 2)
                .ok_or_else(|| labels_error(format!("{name}: a window is not a [start, end] pair: {span}")))?;
            let mut ends = [0_i64; 2];
            for (end, text) in ends.iter_mut().zip(pair) {
                *end = text
                    .as_str()
                    .and_then(parse_time)
                    .ok_or_else(|| labels_error(format!("{name}: not a timestamp: {text}")))?;
            }
            times.push((ends[0], ends[1]));
        }
        let mut series = read_csv(&dir.join(name), name)?;
        series.windows = times
            .iter()
            .filter_map(|&(start, end)| {
                // Rows stay in the file's order (a detector sees them so), and a file's clock may step back
                // (NAB's machine_temperature repeats an hour): a window spans its first to its last row in time.
                let inside = |t: &i64| (start..=end).contains(t);
                let first = series.timestamps.iter().position(inside)?;
                let last = series.timestamps.iter().rposition(inside)?;
                Some(Window {
                    start: first,
                    end: last,
                })
            })
            .collect();
        corpus.push(series);
    }
    Ok(corpus)
}

fn read_csv(path: &Path, name: &str) -> Result<Series, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let row_error = |line: usize, message: String| Error::Row {
        path: path.to_owned(),
        line,
        message,
    };
    let mut series = Series {
        name: name.to_owned(),
        timestamps: Vec::new(),
        values: Vec::new(),
        windows: Vec::new(),
    };
    for (index, row) in text.lines().enumerate().skip(1) {
        let line = index + 1;
        if row.trim().is_empty() {
            continue;
        }
        let (time, value) = row
            .split_once(',')
            .ok_or_else(|| row_error(line, format!("expected `timestamp,value`, got {row:?}")))?;
        let time = parse_time(time).ok_or_else(|| row_error(line, format!("not a timestamp: {time:?}")))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| row_error(line, format!("not a number: {value:?}")))?;
        series.timestamps.push(time);
        series.values.push(value);
    }
    Ok(series)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("directory");
        }
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn windows_become_the_rows_they_cover() {
        let dir = std::env::temp_dir().join(format!("airq-anomaly-corpus-{}", std::process::id()));
        write(
            &dir,
            "labels.json",
            r#"{"g/a.csv": [["2014-01-01 00:10:00.000000", "2014-01-01 00:20:00.000000"]]}"#,
        );
        let rows: String = (0..6).map(|i| format!("2014-01-01 00:{:02}:00,{i}\n", i * 5)).collect();
        write(&dir, "g/a.csv", &format!("timestamp,value\n{rows}"));
        let corpus = load(&dir).expect("corpus");
        assert_eq!(corpus.len(), 1);
        assert_eq!(corpus[0].windows, vec![Window { start: 2, end: 4 }]);
        assert_eq!(corpus[0].step_seconds(), 300);
        assert_eq!(corpus[0].rows_in(3600), 12);

        write(
            &dir,
            "g/a.csv",
            "timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 00:05:00,x\n",
        );
        let err = load(&dir).expect_err("bad value").to_string();
        assert!(err.contains("a.csv, line 3: not a number"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
