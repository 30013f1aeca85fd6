//! CSV files: a path, a folder of files, an `http(s)://` URL, or a folder's index over HTTP (a URL ending in `/`,
//! [`super::index`]); plain or gzip-compressed (detected from the first
//! bytes); in the Beijing layout (wide, local time, `NA`) or the long layout (`station,parameter,time,value,unit`).
//! Files are read as a stream in fixed-size chunks, so memory stays flat whatever their size.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use airq_api::etl::CsvFormat;
use airq_core::parameter::{Parameter, compass_degrees};
use airq_core::store::NewStation;
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use tokio::sync::mpsc;

use super::{Chunk, ChunkBuilder, SourceError, TimeRange};

/// Values per chunk (one database transaction).
pub const CHUNK_VALUES: usize = 50_000;

/// Beijing local time is UTC+8 all year.
const BEIJING_OFFSET_SECONDS: i64 = 8 * 3600;

/// One file to read.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    File { path: PathBuf, size: u64 },
    Url(String),
}

impl Input {
    /// How the input is named in errors and rejected values.
    pub fn name(&self) -> String {
        match self {
            Self::File { path, .. } => path.display().to_string(),
            Self::Url(url) => url.clone(),
        }
    }

    /// Bytes to read, when known in advance.
    pub fn size(&self) -> Option<u64> {
        match self {
            Self::File { size, .. } => Some(*size),
            Self::Url(_) => None,
        }
    }
}

/// The files `location` names: a URL, every `.csv` and `.csv.gz` file an index over HTTP lists (a URL ending in
/// `/`), a file, or every `.csv` and `.csv.gz` file of a folder (sorted by name).
pub async fn resolve(location: &str) -> Result<Vec<Input>, SourceError> {
    if super::index::is_index(location) {
        let client = super::http::client()?;
        let files = super::index::fetch(&client, location).await?;
        return Ok(files.into_iter().map(|url| Input::Url(url.into())).collect());
    }
    inputs(location)
}

/// The files `location` names: a URL, a file, or every `.csv` and `.csv.gz` file of a folder (sorted by name).
pub fn inputs(location: &str) -> Result<Vec<Input>, SourceError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(vec![Input::Url(location.to_owned())]);
    }
    let path = Path::new(location.strip_prefix("file://").unwrap_or(location));
    let read_error = |e: std::io::Error| SourceError::Read {
        input: path.display().to_string(),
        detail: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    if meta.is_file() {
        return Ok(vec![Input::File {
            path: path.to_owned(),
            size: meta.len(),
        }]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".csv") || name.ends_with(".csv.gz") {
            let size = entry.metadata().map_err(read_error)?.len();
            files.push(Input::File {
                path: entry.path(),
                size,
            });
        }
    }
    files.sort_by_key(Input::name);
    if files.is_empty() {
        return Err(SourceError::Read {
            input: path.display().to_string(),
            detail: "the folder has no .csv or .csv.gz file".to_owned(),
        });
    }
    Ok(files)
}

/// Counts the bytes read through it (compressed bytes, for progress against the file size).
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads one file from `reader` and sends its chunks; returns when the file is read or the receiver is gone.
pub fn read<'r>(
    input_name: &str,
    reader: impl Read + 'r,
    format: CsvFormat,
    range: TimeRange,
    chunks: &mpsc::Sender<Chunk>,
) -> Result<(), SourceError> {
    let consumed = Arc::new(AtomicU64::new(0));
    let mut buffered = BufReader::with_capacity(
        256 * 1024,
        Counting {
            inner: reader,
            read: consumed.clone(),
        },
    );
    let head = buffered.fill_buf().map_err(|e| SourceError::Read {
        input: input_name.to_owned(),
        detail: e.to_string(),
    })?;
    let decoded: Box<dyn Read + 'r> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let csv = ::csv::ReaderBuilder::new()
        .flexible(true)
        .buffer_capacity(256 * 1024)
        .from_reader(decoded);
    let mut reader = FileReader {
        input: input_name.to_owned(),
        csv,
        range,
        builder: ChunkBuilder::new(input_name),
        consumed,
        reported: 0,
        chunks,
    };
    match format {
        CsvFormat::Beijing => reader.beijing(),
        CsvFormat::Long => reader.long(),
    }
}

struct FileReader<'a, 'r> {
    input: String,
    csv: ::csv::Reader<Box<dyn Read + 'r>>,
    range: TimeRange,
    builder: ChunkBuilder,
    consumed: Arc<AtomicU64>,
    reported: u64,
    chunks: &'a mpsc::Sender<Chunk>,
}

/// The receiver went away: the load was stopped.
struct Stopped;

impl FileReader<'_, '_> {
    fn format_error(&self, detail: impl Into<String>) -> SourceError {
        SourceError::Format {
            input: self.input.clone(),
            detail: detail.into(),
        }
    }

    fn read_error(&self, error: &::csv::Error) -> SourceError {
        let at = error
            .position()
            .map(|p| format!("line {}: ", p.line()))
            .unwrap_or_default();
        match error.kind() {
            ::csv::ErrorKind::Io(io) => SourceError::Read {
                input: self.input.clone(),
                detail: format!("{at}{io}"),
            },
            _ => self.format_error(format!("{at}{error}")),
        }
    }

    fn header(&mut self) -> Result<Vec<String>, SourceError> {
        let headers = self.csv.headers().cloned();
        let headers = headers.map_err(|e| self.read_error(&e))?;
        Ok(headers.iter().map(|h| h.trim().to_owned()).collect())
    }

    /// Sends the chunk built so far when it is full (or `force`).
    fn flush(&mut self, force: bool) -> Result<(), Stopped> {
        if !force && self.builder.held() < CHUNK_VALUES {
            return Ok(());
        }
        let consumed = self.consumed.load(Ordering::Relaxed);
        self.builder.progress(consumed - self.reported);
        self.reported = consumed;
        let chunk = self.builder.take();
        self.chunks.blocking_send(chunk).map_err(|_| Stopped)
    }

    fn finish(&mut self) -> Result<(), SourceError> {
        // A stopped load is not an error of the file.
        let _ = self.flush(true);
        Ok(())
    }

    fn beijing(&mut self) -> Result<(), SourceError> {
        let header = self.header()?;
        let column = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
        let required = |name: &str| {
            column(name).ok_or_else(|| {
                self.format_error(format!(
                    "line 1: no column {name:?}; the Beijing layout has No,year,month,day,hour,PM2.5,PM10,SO2,NO2,CO,\
                     O3,TEMP,PRES,DEWP,RAIN,wd,WSPM,station"
                ))
            })
        };
        let (year, month, day, hour) = (
            required("year")?,
            required("month")?,
            required("day")?,
            required("hour")?,
        );
        let station_column = column("station");
        let file_station = station_from_file_name(&self.input);
        if station_column.is_none() && file_station.is_none() {
            return Err(self.format_error(
                "line 1: no column \"station\", and the file name does not name one (PRSA_Data_<Station>_…)",
            ));
        }
        let mut values: Vec<(usize, Parameter)> = Vec::new();
        for (name, parameter) in [
            ("PM2.5", Parameter::Pm25),
            ("PM10", Parameter::Pm10),
            ("SO2", Parameter::So2),
            ("NO2", Parameter::No2),
            ("CO", Parameter::Co),
            ("O3", Parameter::O3),
        ] {
            values.push((required(name)?, parameter));
        }
        for (name, parameter) in [
            ("TEMP", Parameter::Temp),
            ("PRES", Parameter::Pres),
            ("DEWP", Parameter::Dewp),
            ("RAIN", Parameter::Rain),
            ("WSPM", Parameter::Wspm),
        ] {
            if let Some(i) = column(name) {
                values.push((i, parameter));
            }
        }
        let wind_direction = column("wd");

        let mut record = ::csv::StringRecord::new();
        let mut station: Option<Arc<str>> = None;
        loop {
            match self.csv.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) if matches!(e.kind(), ::csv::ErrorKind::Utf8 { .. }) => {
                    let line = e.position().map(|p| p.line()).unwrap_or_default();
                    self.builder.reject(
                        station.as_ref(),
                        "row",
                        None,
                        None,
                        format!("the row is not UTF-8 text: {e}"),
                        format!("line {line}"),
                    );
                    continue;
                }
                Err(e) => return Err(self.read_error(&e)),
            }
            let line = record.position().map(|p| p.line()).unwrap_or_default();
            let where_ = || format!("line {line}");
            let name = station_column
                .and_then(|i| record.get(i))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .or(file_station.as_deref());
            let Some(name) = name else {
                self.builder
                    .reject(None, "row", None, None, "the row names no station".to_owned(), where_());
                continue;
            };
            if station.as_deref() != Some(name) {
                let new: Arc<str> = Arc::from(name);
                self.builder.station(NewStation {
                    code: name.to_owned(),
                    name: name.to_owned(),
                    source: "csv".to_owned(),
                    latitude: None,
                    longitude: None,
                });
                station = Some(new);
            }
            let Some(station) = station.as_ref() else { continue };
            let field = |i: usize| record.get(i).map(str::trim).unwrap_or("");
            let time = beijing_time(field(year), field(month), field(day), field(hour));
            let time = match time {
                Ok(time) => time,
                Err(why) => {
                    self.builder.reject(Some(station), "row", None, None, why, where_());
                    continue;
                }
            };
            if !self.range.contains(time) {
                continue;
            }
            for &(i, parameter) in &values {
                let cell = field(i);
                if is_missing(cell) {
                    continue;
                }
                match cell.parse::<f64>() {
                    Ok(value) => self.builder.value(station, parameter, time, value, &where_),
                    Err(_) => {
                        self.builder.reject(
                            Some(station),
                            parameter.code(),
                            Some(time),
                            Some(cell.to_owned()),
                            format!("{parameter} {cell:?} is not a number"),
                            where_(),
                        );
                    }
                }
            }
            if let Some(i) = wind_direction {
                let cell = field(i);
                if !is_missing(cell) {
                    match compass_degrees(cell) {
                        Some(degrees) => self.builder.value(station, Parameter::Wd, time, degrees, &where_),
                        None => {
                            self.builder.reject(
                                Some(station),
                                Parameter::Wd.code(),
                                Some(time),
                                Some(cell.to_owned()),
                                format!("wind direction {cell:?} is not a compass point (N, NNE, … NNW)"),
                                where_(),
                            );
                        }
                    }
                }
            }
            if self.flush(false).is_err() {
                return Ok(());
            }
        }
        self.finish()
    }

    fn long(&mut self) -> Result<(), SourceError> {
        let header = self.header()?;
        let column = |name: &str| {
            header.iter().position(|h| h.eq_ignore_ascii_case(name)).ok_or_else(|| {
                self.format_error(format!(
                    "line 1: no column {name:?}; the long layout has station,parameter,time,value,unit"
                ))
            })
        };
        let (station_i, parameter_i, time_i, value_i, unit_i) = (
            column("station")?,
            column("parameter")?,
            column("time")?,
            column("value")?,
            column("unit")?,
        );
        let mut record = ::csv::StringRecord::new();
        let mut stations: std::collections::HashMap<String, Arc<str>> = std::collections::HashMap::new();
        loop {
            match self.csv.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(self.read_error(&e)),
            }
            let line = record.position().map(|p| p.line()).unwrap_or_default();
            let where_ = || format!("line {line}");
            let field = |i: usize| record.get(i).map(str::trim).unwrap_or("");
            let (name, parameter_name, time_text, cell, unit) = (
                field(station_i),
                field(parameter_i),
                field(time_i),
                field(value_i),
                field(unit_i),
            );
            if is_missing(cell) {
                continue;
            }
            if name.is_empty() {
                self.builder
                    .reject(None, "row", None, None, "the row names no station".to_owned(), where_());
                continue;
            }
            let station = match stations.get(name) {
                Some(station) => station.clone(),
                None => {
                    let station: Arc<str> = Arc::from(name);
                    stations.insert(name.to_owned(), station.clone());
                    self.builder.station(NewStation {
                        code: name.to_owned(),
                        name: name.to_owned(),
                        source: "csv".to_owned(),
                        latitude: None,
                        longitude: None,
                    });
                    station
                }
            };
            let reject = |builder: &mut ChunkBuilder, parameter: &str, time: Option<i64>, reason: String| {
                builder.reject(Some(&station), parameter, time, Some(cell.to_owned()), reason, where_());
            };
            let parameter = match parameter_name.parse::<Parameter>() {
                Ok(parameter) => parameter,
                Err(e) => {
                    reject(&mut self.builder, parameter_name, None, e.to_string());
                    continue;
                }
            };
            let time = match parse_time(time_text) {
                Some(time) => time,
                None => {
                    reject(
                        &mut self.builder,
                        parameter.code(),
                        None,
                        format!(
                            "time {time_text:?} is not RFC 3339 (2016-03-01T13:00:00Z) nor YYYY-MM-DD HH:MM[:SS] in UTC"
                        ),
                    );
                    continue;
                }
            };
            if !self.range.contains(time) {
                continue;
            }
            let value = match cell.parse::<f64>() {
                Ok(value) => value,
                Err(_) => {
                    reject(
                        &mut self.builder,
                        parameter.code(),
                        Some(time),
                        format!("{parameter} {cell:?} is not a number"),
                    );
                    continue;
                }
            };
            self.builder.value_in(&station, parameter, time, (value, unit), &where_);
            if self.flush(false).is_err() {
                return Ok(());
            }
        }
        self.finish()
    }
}

fn is_missing(cell: &str) -> bool {
    cell.is_empty() || cell.eq_ignore_ascii_case("NA") || cell.eq_ignore_ascii_case("NaN") || cell == "-"
}

/// The station a Beijing file is about, from its name: `PRSA_Data_<Station>_20130301-20170228.csv.gz`.
fn station_from_file_name(input: &str) -> Option<String> {
    let file = input.rsplit(['/', '\\']).next()?;
    let rest = file.strip_prefix("PRSA_Data_")?;
    let station = rest.split('_').next()?;
    (!station.is_empty()).then(|| station.to_owned())
}

/// A Beijing local date and hour as Unix seconds (UTC).
fn beijing_time(year: &str, month: &str, day: &str, hour: &str) -> Result<i64, String> {
    let number = |what: &str, text: &str| -> Result<u32, String> {
        text.parse::<u32>()
            .map_err(|_| format!("{what} {text:?} is not a whole number"))
    };
    let (y, m, d, h) = (
        number("year", year)?,
        number("month", month)?,
        number("day", day)?,
        number("hour", hour)?,
    );
    let date = i32::try_from(y)
        .ok()
        .and_then(|y| NaiveDate::from_ymd_opt(y, m, d))
        .ok_or_else(|| format!("{year}-{month}-{day} is not a date"))?;
    if h > 23 {
        return Err(format!("hour {hour} is not between 0 and 23"));
    }
    let local = date
        .and_hms_opt(h, 0, 0)
        .ok_or_else(|| format!("hour {hour} is not between 0 and 23"))?;
    Ok(local.and_utc().timestamp() - BEIJING_OFFSET_SECONDS)
}

/// RFC 3339 with an offset, or a date and time without one (taken as UTC).
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.timestamp());
    }
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Some(time.and_utc().timestamp());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str, format: CsvFormat, range: TimeRange) -> Result<Vec<Chunk>, SourceError> {
        let (tx, mut rx) = mpsc::channel(1000);
        read("test.csv", text.as_bytes(), format, range, &tx)?;
        drop(tx);
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            chunks.push(chunk);
        }
        Ok(chunks)
    }

    const BEIJING: &str = "\"No\",\"year\",\"month\",\"day\",\"hour\",\"PM2.5\",\"PM10\",\"SO2\",\"NO2\",\"CO\",\"O3\",\"TEMP\",\"PRES\",\"DEWP\",\"RAIN\",\"wd\",\"WSPM\",\"station\"
1,2013,3,1,0,4,4,4,7,300,77,-0.7,1023,-18.8,0,\"NNW\",4.4,\"Aotizhongxin\"
2,2013,3,1,1,NA,8,4,7,300,77,-1.1,1023.2,-18.2,0,\"N\",4.7,\"Aotizhongxin\"
3,2013,3,1,2,999,12,x,7,,77,-1.1,1023.2,-18.2,0,\"Q\",4.7,\"Aotizhongxin\"
4,2013,2,30,3,7,7,4,7,300,77,-1.1,1023.2,-18.2,0,\"N\",4.7,\"Aotizhongxin\"
5,2013,3,1,4,30,20,4,7,300,77,-1.1,1023.2,-18.2,0,\"N\",4.7,\"Aotizhongxin\"
";

    #[test]
    fn beijing_rows_become_utc_values_with_reasons_for_the_rest() {
        let chunks = read_all(BEIJING, CsvFormat::Beijing, TimeRange::default()).unwrap();
        let chunk = &chunks[0];
        assert_eq!(chunk.stations.len(), 1);
        assert_eq!(chunk.stations[0].code, "Aotizhongxin");
        // 2013-03-01 00:00 in Beijing is 2013-02-28 16:00 UTC.
        let first = &chunk.observations[0];
        assert_eq!(
            (first.parameter, first.time, first.value),
            (Parameter::Pm25, 1_362_067_200, 4.0)
        );
        let wd = chunk
            .observations
            .iter()
            .find(|o| o.parameter == Parameter::Wd)
            .unwrap();
        assert_eq!(wd.value, 337.5);
        let reasons: Vec<(String, String, String)> = chunk
            .rejected
            .iter()
            .map(|r| (r.record.clone(), r.parameter.clone(), r.reason.clone()))
            .collect();
        assert!(
            reasons
                .iter()
                .any(|(l, p, r)| l == "line 4" && p == "pm25" && r.contains("sentinel")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|(l, p, r)| l == "line 4" && p == "so2" && r.contains("not a number")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|(l, p, r)| l == "line 4" && p == "wd" && r.contains("compass")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|(l, p, r)| l == "line 5" && p == "row" && r.contains("2013-2-30")),
            "{reasons:?}"
        );
        // The blank CO cell of line 4 is missing, like NA: neither stored nor refused.
        assert!(!reasons.iter().any(|(l, p, _)| l == "line 4" && p == "co"));
        // Line 6: PM2.5 30 above PM10 20, both flagged.
        let flagged: Vec<_> = chunk.observations.iter().filter(|o| o.flags != 0).collect();
        assert_eq!(flagged.len(), 2, "{flagged:?}");
        // 12 values per full row, minus the NA, plus what was refused.
        let stored = chunk.observations.len() as i64;
        assert_eq!(chunk.values_read, stored + chunk.rejected.len() as i64);
    }

    #[test]
    fn beijing_range_keeps_only_the_hours_asked_for() {
        let from = 1_362_067_200 + 3600;
        let chunks = read_all(
            BEIJING,
            CsvFormat::Beijing,
            TimeRange {
                from: Some(from),
                to: Some(from + 3600),
            },
        )
        .unwrap();
        assert!(chunks[0].observations.iter().all(|o| o.time == from));
        assert!(!chunks[0].observations.is_empty());
    }

    #[test]
    fn a_file_without_the_columns_is_a_clear_error() {
        let err = read_all("a,b\n1,2\n", CsvFormat::Beijing, TimeRange::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("test.csv") && message.contains("\"year\""),
            "{message}"
        );
        let err = read_all("station,value\n", CsvFormat::Long, TimeRange::default()).unwrap_err();
        assert!(err.to_string().contains("\"parameter\""), "{err}");
    }

    #[test]
    fn long_rows_are_normalised_and_checked() {
        let text = "station,parameter,time,value,unit
s1,no2,2016-03-01T13:00:00Z,10,ppb
s1,pm2.5,2016-03-01 14:00,12,µg/m³
s1,um003,2016-03-01 14:00,12,particles/cm³
s1,o3,yesterday,12,ug/m3
s1,co,2016-03-01T13:00:00+08:00,1.5,mg/m3
s1,pm10,2016-03-01T13:00:00Z,-3,ug/m3
s1,pm10,2016-03-01T14:00:00Z,NA,ug/m3
";
        let chunks = read_all(text, CsvFormat::Long, TimeRange::default()).unwrap();
        let chunk = &chunks[0];
        assert_eq!(chunk.observations.len(), 3, "{:?}", chunk.observations);
        assert!((chunk.observations[0].value - 18.82).abs() < 0.01);
        assert_eq!(chunk.observations[2].value, 1500.0);
        // 13:00 at +08:00 is 05:00 UTC.
        assert_eq!(chunk.observations[2].time, 1_456_790_400 + 5 * 3600);
        assert_eq!(chunk.rejected.len(), 3);
        assert_eq!(chunk.values_read, 6);
        assert!(chunk.rejected[0].reason.contains("um003"));
        assert!(chunk.rejected[1].reason.contains("yesterday"));
        assert!(chunk.rejected[2].reason.contains("minimum"));
    }

    #[test]
    fn gzip_is_detected_from_the_content() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(BEIJING.as_bytes()).unwrap();
        let gz = encoder.finish().unwrap();
        let (tx, mut rx) = mpsc::channel(10);
        read("x", gz.as_slice(), CsvFormat::Beijing, TimeRange::default(), &tx).unwrap();
        let chunk = rx.try_recv().unwrap();
        assert!(!chunk.observations.is_empty());
        assert_eq!(chunk.progress, gz.len() as u64);
    }

    #[test]
    fn station_comes_from_the_file_name_when_needed() {
        assert_eq!(
            station_from_file_name("/d/PRSA_Data_Dongsi_20130301-20170228.csv.gz").as_deref(),
            Some("Dongsi")
        );
        assert_eq!(station_from_file_name("other.csv"), None);
    }
}
