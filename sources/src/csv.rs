//! CSV files: a path, a folder of files, an `http(s)://` URL, or a folder's index over HTTP (a URL ending in `/`,
//! [`super::index`]); plain or gzip-compressed (detected from the first
//! bytes); in the Beijing layout (wide, local time, `NA`) or the long layout (`station,parameter,time,value,unit`).
//! Files are read as a stream in fixed-size chunks, so memory stays flat whatever their size.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use airq_api::etl::CsvFormat;
use airq_core::parameter::{Parameter, compass_degrees};
use airq_core::store::NewStation;
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use tokio::sync::mpsc;

use super::first::FirstValues;
use super::lines::{Cells, Lines, MAX_LINE_BYTES, Record, SplitError, Splitter};
use super::{Chunk, ChunkBuilder, SourceError, TimeRange, compact};

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

/// The file's bytes, gunzipped when they are gzip.
enum Decoded<R: Read> {
    Plain(BufReader<Counting<R>>),
    Gzip(flate2::bufread::MultiGzDecoder<BufReader<Counting<R>>>),
}

impl<R: Read> Decoded<R> {
    /// Compressed bytes the decoder has taken so far (where a gzip error is).
    fn compressed_position(&self, consumed: u64) -> Option<u64> {
        match self {
            Self::Plain(_) => None,
            Self::Gzip(gzip) => Some(consumed.saturating_sub(gzip.get_ref().buffer().len() as u64)),
        }
    }
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(plain) => plain.read(buf),
            Self::Gzip(gzip) => gzip.read(buf),
        }
    }
}

/// The longest station code or name, in characters.
pub const MAX_STATION_CHARS: usize = 100;
/// The most characters of a refused value kept in `rejected_rows` and shown in a reason.
const MAX_SHOWN_CHARS: usize = 64;

/// `text` as shown in a reason or stored as a refused raw value: at most [`MAX_SHOWN_CHARS`] characters.
fn shown(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{}… ({} characters)", &text[..cut], text.chars().count()),
        None => text.to_owned(),
    }
}

/// Reads one file from `reader` and sends its chunks; returns when the file is read or the receiver is gone. A row
/// that cannot be read whole (wrong number of fields, too long, not UTF-8, cut short at the end of the file) is
/// refused whole with its line; values already read from earlier lines are sent before a read error is returned.
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
    let decoded = if head.starts_with(&[0x1f, 0x8b]) {
        Decoded::Gzip(flate2::bufread::MultiGzDecoder::new(buffered))
    } else {
        Decoded::Plain(buffered)
    };
    let mut reader = FileReader {
        input: input_name.to_owned(),
        lines: Lines::new(BufReader::with_capacity(256 * 1024, decoded)),
        splitter: Splitter::default(),
        range,
        builder: ChunkBuilder::new(input_name),
        consumed,
        reported: 0,
        chunks,
        stations: HashMap::new(),
        first: FirstValues::default(),
    };
    let result = match format {
        CsvFormat::Beijing => reader.beijing(),
        CsvFormat::Long => reader.long(),
    };
    match result {
        Ok(()) | Err(Stop::Stopped) => Ok(()),
        Err(Stop::Failed(error)) => {
            // What was read before the damage is kept.
            let _ = reader.flush(true);
            Err(error)
        }
    }
}

struct FileReader<'a, R: Read> {
    input: String,
    lines: Lines<BufReader<Decoded<R>>>,
    splitter: Splitter,
    range: TimeRange,
    builder: ChunkBuilder,
    consumed: Arc<AtomicU64>,
    reported: u64,
    chunks: &'a mpsc::Sender<Chunk>,
    /// Stations seen in this file, numbered for `first`.
    stations: HashMap<Arc<str>, u32>,
    /// The first value kept for each station, parameter and time of this file, and its line: a later different value
    /// for the same key is a conflicting duplicate.
    first: FirstValues,
}

/// Why reading stopped early.
enum Stop {
    /// The receiver went away: the load was stopped.
    Stopped,
    Failed(SourceError),
}

impl From<SourceError> for Stop {
    fn from(error: SourceError) -> Self {
        Self::Failed(error)
    }
}

/// A line of data: its number, whether it was the file's unterminated last line, and why it cannot be read whole.
enum Row<'l> {
    Fields(Record<'l>),
    Refused(String),
}

impl<R: Read> FileReader<'_, R> {
    fn format_error(&self, detail: impl Into<String>) -> SourceError {
        SourceError::Format {
            input: self.input.clone(),
            detail: detail.into(),
        }
    }

    fn read_error(&self, error: &std::io::Error) -> SourceError {
        let line = self.lines.number() + 1;
        let consumed = self.consumed.load(Ordering::Relaxed);
        let at = match self.lines.get_ref().get_ref().compressed_position(consumed) {
            Some(offset) => format!(" at compressed byte {offset}"),
            None => String::new(),
        };
        SourceError::Read {
            input: self.input.clone(),
            detail: format!(
                "{error}{at}, in line {line}; the values of the {} lines before it are kept",
                line - 1
            ),
        }
    }

    /// The header's column names (trimmed), from the file's first line.
    fn header(&mut self, layout: &str) -> Result<Vec<String>, SourceError> {
        let line = match self.lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Err(self.format_error(format!(
                    "the file is empty; a file in the {layout} layout starts with its header line"
                )));
            }
            Err(e) => return Err(self.read_error(&e)),
        };
        if let Some(length) = line.too_long {
            return Err(self.format_error(format!(
                "line 1: the header line is {length} bytes long, more than the {MAX_LINE_BYTES} a line may have"
            )));
        }
        let bytes = line.bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line.bytes);
        match self.splitter.split(bytes) {
            Ok(record) => Ok(record.iter().map(str::to_owned).collect()),
            Err(SplitError::NotUtf8 { at }) => {
                Err(self.format_error(format!("line 1: the header line is not UTF-8 text (byte {})", at + 1)))
            }
        }
    }

    /// The next data line split into `columns` fields, or why it is refused whole; `None` at the end of the file.
    /// Blank lines are skipped.
    fn next_row(&mut self, columns: usize) -> Result<Option<(u64, Row<'_>)>, SourceError> {
        loop {
            let line = match self.lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.read_error(&e)),
            };
            let number = line.number;
            if let Some(length) = line.too_long {
                let why = format!("the line is {length} bytes long, more than the {MAX_LINE_BYTES} a line may have");
                return Ok(Some((number, Row::Refused(why))));
            }
            if line.bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let terminated = line.terminated;
            return Ok(Some(match self.splitter.split(line.bytes) {
                Err(SplitError::NotUtf8 { at }) => (
                    number,
                    Row::Refused(format!("the row is not UTF-8 text (byte {} of the line)", at + 1)),
                ),
                Ok(record) if record.len() == columns => (number, Row::Fields(record)),
                Ok(record) if !terminated && record.len() < columns => (
                    number,
                    Row::Refused(format!(
                        "the last line is cut short: it has no line ending and {} of the header's {columns} fields \
                         (the file looks truncated)",
                        record.len()
                    )),
                ),
                Ok(record) => (
                    number,
                    Row::Refused(format!(
                        "the row has {} fields where the header has {columns}; nothing of it is stored",
                        record.len()
                    )),
                ),
            }));
        }
    }

    /// Sends the chunk built so far when it is full (or `force`).
    fn flush(&mut self, force: bool) -> Result<(), Stop> {
        if !force && self.builder.held() < CHUNK_VALUES {
            return Ok(());
        }
        let consumed = self.consumed.load(Ordering::Relaxed);
        self.builder.progress(consumed - self.reported);
        self.reported = consumed;
        let chunk = self.builder.take();
        self.chunks.blocking_send(chunk).map_err(|_| Stop::Stopped)
    }

    /// Refuses line `line` whole, for `why`.
    fn refuse_row(&mut self, station: Option<&Arc<str>>, why: String, line: u64) -> Result<(), Stop> {
        self.builder
            .reject(station, "row", None, None, why, format!("line {line}"));
        self.flush(false)
    }

    /// The station named `name`, described to the chunk the first time it is met.
    fn station(&mut self, name: &str) -> (Arc<str>, u32) {
        if let Some((station, &index)) = self.stations.get_key_value(name) {
            return (station.clone(), index);
        }
        let station: Arc<str> = Arc::from(name);
        let index = self.stations.len() as u32;
        self.stations.insert(station.clone(), index);
        self.builder.station(NewStation {
            code: name.to_owned(),
            name: name.to_owned(),
            source: "csv".to_owned(),
            latitude: None,
            longitude: None,
        });
        (station, index)
    }

    /// A value read from `cell` (already in the stored unit): kept, or refused as implausible or as a conflicting
    /// duplicate of an earlier line of the file.
    fn value(&mut self, (station, index): (&Arc<str>, u32), parameter: Parameter, time: i64, value: f64, line: u64) {
        let hour = time.div_euclid(3600);
        if let Some((first, first_line)) = self.first.get(index, parameter, hour)
            && first.to_bits() != value.to_bits()
        {
            self.builder.reject(
                Some(station),
                parameter.code(),
                Some(time),
                Some(compact(value)),
                format!(
                    "conflicting duplicate: line {first_line} gave {parameter} {} for the same station and hour; \
                     the first is kept",
                    compact(first)
                ),
                format!("line {line}"),
            );
            return;
        }
        if self
            .builder
            .value(station, parameter, time, value, &|| format!("line {line}"))
        {
            self.first.insert(index, parameter, hour, value, line);
        }
    }

    fn beijing(&mut self) -> Result<(), Stop> {
        let header = self.header("Beijing")?;
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
            return Err(self
                .format_error(
                    "line 1: no station: a file in the Beijing layout takes its station from a \"station\" column, \
                     or from its name (PRSA_Data_<Station>_…), and this file has neither",
                )
                .into());
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
        let columns = header.len();
        let file_station: Option<Arc<str>> = file_station.map(Arc::from);
        let mut cells = Cells::default();
        while let Some((line, row)) = self.next_row(columns)? {
            let where_ = || format!("line {line}");
            let record = match row {
                Row::Fields(record) => record,
                Row::Refused(why) => {
                    // The row's own cells cannot be trusted: only the file's station is named.
                    self.builder
                        .reject(file_station.as_ref(), "row", None, None, why, where_());
                    self.flush(false)?;
                    continue;
                }
            };
            // The record borrows the splitter; its fields are copied out before the builder is used.
            record.copy_to(&mut cells);
            let field = |i: usize| cells.get(i);
            let named = station_column.map(field).filter(|s| !s.is_empty());
            if let Some(why) = named.and_then(overlong_station) {
                self.refuse_row(None, why, line)?;
                continue;
            }
            let station = match named {
                Some(name) => self.station(name),
                None => match &file_station {
                    Some(name) => self.station(name),
                    None => {
                        let why = "the row names no station: its \"station\" cell is empty, and the file's name \
                                   does not give one (PRSA_Data_<Station>_…)"
                            .to_owned();
                        self.refuse_row(None, why, line)?;
                        continue;
                    }
                },
            };
            let time = match beijing_time(field(year), field(month), field(day), field(hour)) {
                Ok(time) => {
                    self.builder.stated_offset(BEIJING_OFFSET_SECONDS as i32);
                    time
                }
                Err(why) => {
                    self.refuse_row(Some(&station.0), why, line)?;
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
                match number(cell) {
                    Ok(value) => self.value((&station.0, station.1), parameter, time, value, line),
                    Err(why) => self.builder.reject(
                        Some(&station.0),
                        parameter.code(),
                        Some(time),
                        Some(shown(cell)),
                        format!("{parameter} {} {why}", shown_quoted(cell)),
                        where_(),
                    ),
                }
            }
            if let Some(i) = wind_direction {
                let cell = field(i);
                if !is_missing(cell) {
                    match compass_degrees(cell) {
                        Some(degrees) => self.value((&station.0, station.1), Parameter::Wd, time, degrees, line),
                        None => self.builder.reject(
                            Some(&station.0),
                            Parameter::Wd.code(),
                            Some(time),
                            Some(shown(cell)),
                            format!(
                                "wind direction {} is not a compass point (N, NNE, … NNW)",
                                shown_quoted(cell)
                            ),
                            where_(),
                        ),
                    }
                }
            }
            self.flush(false)?;
        }
        self.flush(true)
    }

    fn long(&mut self) -> Result<(), Stop> {
        let header = self.header("long")?;
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
        let columns = header.len();
        let mut cells = Cells::default();
        while let Some((line, row)) = self.next_row(columns)? {
            let where_ = || format!("line {line}");
            let record = match row {
                Row::Fields(record) => record,
                Row::Refused(why) => {
                    self.refuse_row(None, why, line)?;
                    continue;
                }
            };
            record.copy_to(&mut cells);
            let field = |i: usize| cells.get(i);
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
                let why = "the row names no station: in the long layout the station comes from the \"station\" \
                           column, and its cell is empty"
                    .to_owned();
                self.refuse_row(None, why, line)?;
                continue;
            }
            if let Some(why) = overlong_station(name) {
                self.refuse_row(None, why, line)?;
                continue;
            }
            let station = self.station(name);
            let reject = |builder: &mut ChunkBuilder, parameter: &str, time: Option<i64>, reason: String| {
                builder.reject(Some(&station.0), parameter, time, Some(shown(cell)), reason, where_());
            };
            let parameter = match parameter_name.parse::<Parameter>() {
                Ok(parameter) => parameter,
                Err(_) => {
                    reject(
                        &mut self.builder,
                        &shown(parameter_name),
                        None,
                        format!(
                            "unknown parameter {}; airq knows {}",
                            shown_quoted(parameter_name),
                            Parameter::ALL.map(Parameter::code).join(", ")
                        ),
                    );
                    self.flush(false)?;
                    continue;
                }
            };
            let time = match parse_time(time_text) {
                Some(time) if time.rem_euclid(3600) != 0 => {
                    reject(
                        &mut self.builder,
                        parameter.code(),
                        None,
                        format!(
                            "time {} is not on the hour: airq stores hourly values, one per hour, and does not \
                             guess which hour a reading belongs to",
                            shown_quoted(time_text)
                        ),
                    );
                    self.flush(false)?;
                    continue;
                }
                Some(time) => {
                    if let Some(offset) = stated_offset(time_text) {
                        self.builder.stated_offset(offset);
                    }
                    time
                }
                None => {
                    reject(
                        &mut self.builder,
                        parameter.code(),
                        None,
                        format!(
                            "time {} is not RFC 3339 (2016-03-01T13:00:00Z, +08:00 or +0800) nor YYYY-MM-DD \
                             HH:MM[:SS] in UTC",
                            shown_quoted(time_text)
                        ),
                    );
                    self.flush(false)?;
                    continue;
                }
            };
            if !self.range.contains(time) {
                continue;
            }
            let value = match number(cell) {
                Ok(value) => value,
                Err(why) => {
                    reject(
                        &mut self.builder,
                        parameter.code(),
                        Some(time),
                        format!("{parameter} {} {why}", shown_quoted(cell)),
                    );
                    self.flush(false)?;
                    continue;
                }
            };
            match parameter.normalise(value, unit) {
                Ok(converted) => self.value((&station.0, station.1), parameter, time, converted, line),
                Err(e) => reject(
                    &mut self.builder,
                    parameter.code(),
                    Some(time),
                    if unit.chars().count() > MAX_SHOWN_CHARS {
                        format!("unit {} is not one airq converts from", shown(unit))
                    } else {
                        e.to_string()
                    },
                ),
            }
            self.flush(false)?;
        }
        self.flush(true)
    }
}

/// Why a station name cannot be stored, if it is too long.
fn overlong_station(name: &str) -> Option<String> {
    (name.chars().count() > MAX_STATION_CHARS).then(|| {
        format!(
            "the station name {} is longer than {MAX_STATION_CHARS} characters",
            shown(name)
        )
    })
}

/// `text` quoted for a reason, cut to [`MAX_SHOWN_CHARS`].
fn shown_quoted(text: &str) -> String {
    format!("{:?}", shown(text))
}

/// A cell as a finite number, or why it is not one.
fn number(cell: &str) -> Result<f64, &'static str> {
    match cell.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        Ok(_) => Err("is not a finite number"),
        Err(_) => Err("is not a number"),
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
            .map_err(|_| format!("{what} {} is not a whole number", shown_quoted(text)))
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

/// The date-and-time shapes besides RFC 3339, with an offset and without one (UTC).
const TIME_SHAPES: [(&str, &str); 4] = [
    ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"),
    ("%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d %H:%M:%S"),
    ("%Y-%m-%dT%H:%M%z", "%Y-%m-%dT%H:%M"),
    ("%Y-%m-%d %H:%M%z", "%Y-%m-%d %H:%M"),
];

/// The offset from UTC (seconds east) a time states as a number (`+08:00`, `+0800`, `-05:00`, even `+00:00`): the
/// local time of the place measured. `Z` and times without an offset are UTC by the long layout's definition and
/// say nothing about the place.
pub fn stated_offset(text: &str) -> Option<i32> {
    if text.ends_with(['Z', 'z']) {
        return None;
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .or_else(|| {
            TIME_SHAPES
                .iter()
                .find_map(|(with_offset, _)| DateTime::parse_from_str(text, with_offset).ok())
        })
        .map(|t| t.offset().local_minus_utc())
}

/// RFC 3339 with an offset (`Z`, `+08:00`, or ISO 8601's `+0800`), or a date and time without one (taken as UTC).
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.timestamp());
    }
    TIME_SHAPES.iter().find_map(|(with_offset, utc)| {
        DateTime::parse_from_str(text, with_offset)
            .map(|t| t.timestamp())
            .or_else(|_| NaiveDateTime::parse_from_str(text, utc).map(|t| t.and_utc().timestamp()))
            .ok()
    })
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
        let refused = |line: &str, parameter: &str, reason: &str| {
            reasons
                .iter()
                .any(|(l, p, r)| l == line && p == parameter && r.contains(reason))
        };
        assert!(refused("line 4", "pm25", "sentinel"), "{reasons:?}");
        assert!(refused("line 4", "so2", "not a number"), "{reasons:?}");
        assert!(refused("line 4", "wd", "compass"), "{reasons:?}");
        assert!(refused("line 5", "row", "2013-2-30"), "{reasons:?}");
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

    /// Rows in the Beijing layout as its files have them (header, quoting, `NA`, CRLF line endings); the values are
    /// made up.
    const DONGSI: &str = "\"No\",\"year\",\"month\",\"day\",\"hour\",\"PM2.5\",\"PM10\",\"SO2\",\"NO2\",\"CO\",\"O3\",\"TEMP\",\"PRES\",\"DEWP\",\"RAIN\",\"wd\",\"WSPM\",\"station\"\r
1,2013,3,1,0,9,9,3,17,300,90,-0.4,1021.5,-20.4,0,\"NNW\",5.1,\"Dongsi\"\r
2,2013,3,1,1,4,4,3,15,300,88,-0.9,1022.1,-20.1,0,\"NW\",3.3,\"Dongsi\"\r
3,2013,3,1,2,6,8,NA,17,400,61,-1.1,1022.3,-21.6,0,\"NNW\",4.3,\"Dongsi\"\r
4,2013,3,1,3,5,6,6,19,NA,NA,-1.6,1023.2,-22.5,0,\"N\",4.1,\"Dongsi\"\r
5,2013,3,1,4,2,3,7,NA,200,84,-2.1,1024.1,-23.5,0,\"NNW\",2.2,\"Dongsi\"\r
";

    /// Every chunk of `text` read as `name`, merged.
    fn read_one(name: &str, text: &[u8], format: CsvFormat) -> Result<Chunk, SourceError> {
        let (tx, mut rx) = mpsc::channel(1000);
        let result = read(name, text, format, TimeRange::default(), &tx);
        drop(tx);
        let mut all = Chunk::default();
        while let Ok(chunk) = rx.try_recv() {
            all.stations.extend(chunk.stations);
            all.observations.extend(chunk.observations);
            all.rejected.extend(chunk.rejected);
            all.values_read += chunk.values_read;
            for (offset, rows) in chunk.stated_offsets {
                *all.stated_offsets.entry(offset).or_default() += rows;
            }
        }
        result.map(|()| all)
    }

    fn dongsi_lines() -> Vec<String> {
        DONGSI.split_inclusive('\n').map(str::to_owned).collect()
    }

    /// (record, parameter, reason) of every refused value.
    fn refusals(chunk: &Chunk) -> Vec<(String, String, String)> {
        chunk
            .rejected
            .iter()
            .map(|r| (r.record.clone(), r.parameter.clone(), r.reason.clone()))
            .collect()
    }

    /// The hours (UTC) stored for `station`, sorted.
    fn hours(chunk: &Chunk, station: &str) -> Vec<i64> {
        let mut hours: Vec<i64> = chunk
            .observations
            .iter()
            .filter(|o| &*o.station == station)
            .map(|o| o.time)
            .collect();
        hours.sort_unstable();
        hours.dedup();
        hours
    }

    #[test]
    fn a_row_with_a_field_too_many_or_too_few_is_refused_whole() {
        let mut lines = dongsi_lines();
        // An extra field in the middle of line 3, a missing one in line 4.
        lines[2] = lines[2].replace(",300,88,", ",300,12,88,");
        lines[3] = lines[3].replace(",NA,17,", ",17,");
        let chunk = read_one("test.csv", lines.concat().as_bytes(), CsvFormat::Beijing).unwrap();
        assert_eq!(chunk.stations.len(), 1, "{:?}", chunk.stations);
        assert_eq!(chunk.stations[0].code, "Dongsi");
        let first = 1_362_067_200;
        assert_eq!(hours(&chunk, "Dongsi"), vec![first, first + 3 * 3600, first + 4 * 3600]);
        let refused = refusals(&chunk);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert_eq!(refused[0].0, "line 3");
        assert_eq!(refused[0].1, "row");
        assert!(
            refused[0].2.contains("19 fields where the header has 18"),
            "{refused:?}"
        );
        assert_eq!(refused[1].0, "line 4");
        assert!(
            refused[1].2.contains("17 fields where the header has 18"),
            "{refused:?}"
        );
        assert_eq!(
            chunk.values_read,
            chunk.observations.len() as i64 + 2,
            "each refused row counts once"
        );
    }

    #[test]
    fn a_truncated_last_line_is_refused_whole_with_the_reason() {
        let text = DONGSI.to_owned();
        // The last line cut inside its NO2 value... and what follows lost.
        let cut = text.rfind(",200,84,").unwrap() + 3;
        let chunk = read_one("test.csv", &text.as_bytes()[..cut], CsvFormat::Beijing).unwrap();
        let refused = refusals(&chunk);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, "line 6");
        assert!(refused[0].2.contains("cut short"), "{refused:?}");
        assert!(!hours(&chunk, "Dongsi").contains(&(1_362_067_200 + 4 * 3600)));
        // A last line without a line ending but whole is kept.
        let whole = read_one("test.csv", DONGSI.trim_end().as_bytes(), CsvFormat::Beijing).unwrap();
        assert!(whole.rejected.is_empty(), "{:?}", whole.rejected);
        assert_eq!(hours(&whole, "Dongsi").len(), 5);
    }

    #[test]
    fn conflicting_duplicates_keep_the_first_and_refuse_the_other() {
        let mut lines = dongsi_lines();
        // Hour 1 again, PM2.5 different; hour 2 again, identical.
        lines.push(lines[2].replacen(",4,4,3,", ",40,4,3,", 1));
        lines.push(lines[3].clone());
        let chunk = read_one("test.csv", lines.concat().as_bytes(), CsvFormat::Beijing).unwrap();
        let pm25: Vec<f64> = chunk
            .observations
            .iter()
            .filter(|o| o.parameter == Parameter::Pm25 && o.time == 1_362_067_200 + 3600)
            .map(|o| o.value)
            .collect();
        assert_eq!(pm25, vec![4.0], "the first value is kept");
        let refused = refusals(&chunk);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!((refused[0].0.as_str(), refused[0].1.as_str()), ("line 7", "pm25"));
        assert!(
            refused[0].2.starts_with("conflicting duplicate") && refused[0].2.contains("line 3"),
            "{refused:?}"
        );
        // The long layout: one instant written in two time zones.
        let text = "station,parameter,time,value,unit
s1,no2,2016-03-01T13:00:00Z,10,ug/m3
s1,no2,2016-03-01T21:00:00+08:00,12,ug/m3
s1,no2,2016-03-01T21:00:00+0800,10,ug/m3
";
        let chunk = read_one("test.csv", text.as_bytes(), CsvFormat::Long).unwrap();
        assert_eq!(chunk.observations.len(), 2, "the identical repeat is passed on");
        assert!(chunk.observations.iter().all(|o| o.value == 10.0));
        let refused = refusals(&chunk);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].2.contains("conflicting duplicate: line 2"), "{refused:?}");
    }

    #[test]
    fn an_endless_line_is_refused_with_flat_memory() {
        let mut lines = dongsi_lines();
        let huge = "D".repeat(10 * MAX_LINE_BYTES);
        lines[2] = lines[2].replace("\"Dongsi\"", &format!("\"{huge}\""));
        let long_name = "X".repeat(MAX_STATION_CHARS + 1);
        lines[3] = lines[3].replace("\"Dongsi\"", &format!("\"{long_name}\""));
        let chunk = read_one("test.csv", lines.concat().as_bytes(), CsvFormat::Beijing).unwrap();
        assert_eq!(chunk.stations.len(), 1, "no station is made of a damaged line");
        let refused = refusals(&chunk);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].2.contains("bytes long, more than"), "{refused:?}");
        assert!(refused[1].2.contains("longer than 100 characters"), "{refused:?}");
        assert!(refused.iter().all(|r| r.2.len() < 300), "reasons stay short");
        // The long layout's parameter, unit and value cells are bounded the same way.
        let text = format!(
            "station,parameter,time,value,unit\ns1,{p},2016-03-01T13:00:00Z,1,ug/m3\ns1,no2,2016-03-01T13:00:00Z,1,{p}\n",
            p = "q".repeat(5000)
        );
        let chunk = read_one("test.csv", text.as_bytes(), CsvFormat::Long).unwrap();
        assert_eq!(chunk.rejected.len(), 2);
        assert!(
            chunk
                .rejected
                .iter()
                .all(|r| r.reason.len() < 400 && r.parameter.len() < 200)
        );
    }

    #[test]
    fn bad_bytes_refuse_the_row_in_both_layouts() {
        let mut bytes = DONGSI.as_bytes().to_vec();
        let at = DONGSI.find("NW\"").unwrap();
        bytes[at] = 0xff;
        let chunk = read_one("test.csv", &bytes, CsvFormat::Beijing).unwrap();
        assert_eq!(refusals(&chunk).len(), 1);
        assert!(refusals(&chunk)[0].2.contains("not UTF-8"));
        assert_eq!(hours(&chunk, "Dongsi").len(), 4);
        let mut long = b"station,parameter,time,value,unit\ns1,no2,2016-03-01T13:00:00Z,1,ug/m3\n".to_vec();
        long.extend_from_slice(b"s\xff,no2,2016-03-01T14:00:00Z,1,ug/m3\ns1,no2,2016-03-01T15:00:00Z,1,ug/m3\n");
        let chunk = read_one("test.csv", &long, CsvFormat::Long).unwrap();
        assert_eq!(chunk.observations.len(), 2);
        assert_eq!(refusals(&chunk)[0].0, "line 3");
        assert!(refusals(&chunk)[0].2.contains("not UTF-8"));
    }

    #[test]
    fn the_offsets_a_file_states_are_counted() {
        let text = "station,parameter,time,value,unit
s1,no2,2016-03-01T01:00:00Z,10,ug/m3
s1,no2,2016-03-01T02:00:00+01:00,10,ug/m3
s1,no2,2016-03-01T03:00:00+0100,10,ug/m3
s1,no2,2016-07-01 04:00+0200,10,ug/m3
s1,no2,2016-07-01 04:00,10,ug/m3
s1,no2,2016-07-01T05:00:00-00:00,10,ug/m3
";
        let chunk = read_one("test.csv", text.as_bytes(), CsvFormat::Long).unwrap();
        let stated: Vec<(i32, u64)> = chunk.stated_offsets.into_iter().collect();
        assert_eq!(stated, [(0, 1), (3600, 2), (7200, 1)]);
        let chunk = read_one("test.csv", dongsi_lines().concat().as_bytes(), CsvFormat::Beijing).unwrap();
        assert_eq!(chunk.stated_offsets.keys().copied().collect::<Vec<_>>(), [8 * 3600]);
        assert_eq!(stated_offset("2016-03-01T01:00:00z"), None);
        assert_eq!(stated_offset("not a time"), None);
    }

    #[test]
    fn long_times_are_on_the_hour_and_offsets_may_omit_the_colon() {
        let text = "station,parameter,time,value,unit
s1,no2,2016-03-01T01:30Z,10,ug/m3
s1,no2,2016-03-01T01:30:00Z,10,ug/m3
s1,no2,2016-03-01T09:00:00+0800,11,ug/m3
";
        let chunk = read_one("test.csv", text.as_bytes(), CsvFormat::Long).unwrap();
        assert_eq!(chunk.observations.len(), 1);
        assert_eq!(chunk.observations[0].time, 1_456_790_400 + 3600);
        let refused = refusals(&chunk);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].2.contains("not RFC 3339"), "{refused:?}");
        assert!(refused[1].2.contains("not on the hour"), "{refused:?}");
    }

    #[test]
    fn a_file_without_a_station_says_where_the_station_comes_from() {
        let mut lines = dongsi_lines();
        lines[2] = lines[2].replace("\"Dongsi\"", "\"\"");
        let chunk = read_one("other.csv", lines.concat().as_bytes(), CsvFormat::Beijing).unwrap();
        let refused = refusals(&chunk);
        assert!(
            refused[0].2.contains("\"station\" cell is empty") && refused[0].2.contains("file's name"),
            "{refused:?}"
        );
        // Named by the file, the same row is the file's station.
        let chunk = read_one(
            "/d/PRSA_Data_Dongsi_20130301-20170228.csv",
            lines.concat().as_bytes(),
            CsvFormat::Beijing,
        )
        .unwrap();
        assert!(chunk.rejected.is_empty());
        let header_only = DONGSI.lines().next().unwrap().replace(",\"station\"", "");
        let err = read_one("other.csv", header_only.as_bytes(), CsvFormat::Beijing).unwrap_err();
        assert!(err.to_string().contains("from its name"), "{err}");
    }

    #[test]
    fn small_things_are_said_plainly() {
        let err = read_one("empty.csv", b"", CsvFormat::Beijing).unwrap_err();
        assert!(err.to_string().contains("the file is empty"), "{err}");
        let err = read_one("empty.csv", b"", CsvFormat::Long).unwrap_err();
        assert!(err.to_string().contains("the file is empty"), "{err}");
        // 1e309 is read as infinity: refused, with what was read.
        let text = DONGSI.replacen(",9,9,3,17,", ",1e309,9,3,17,", 1);
        let chunk = read_one("test.csv", text.as_bytes(), CsvFormat::Beijing).unwrap();
        assert_eq!(chunk.rejected[0].raw_value.as_deref(), Some("1e309"));
        assert!(chunk.rejected[0].reason.contains("not a finite number"));
    }

    #[test]
    fn a_damaged_gzip_names_the_compressed_offset_and_keeps_what_came_before() {
        use std::io::Write;
        let mut text = String::from(dongsi_lines()[0].as_str());
        for hour in 0..20_000 {
            let (day, hour) = (hour / 24, hour % 24);
            let date = NaiveDate::from_ymd_opt(2013, 3, 1).unwrap() + chrono::Duration::days(day);
            text.push_str(&format!(
                "{hour},{},{},{},{hour},9,9,3,17,300,89,-0.5,1024.5,-21.4,0,\"NNW\",5.7,\"Dongsi\"\r\n",
                date.format("%Y"),
                date.format("%-m"),
                date.format("%-d")
            ));
        }
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        let mut gz = encoder.finish().unwrap();
        let middle = gz.len() / 2;
        for byte in &mut gz[middle..middle + 64] {
            *byte ^= 0x5a;
        }
        let (tx, mut rx) = mpsc::channel(1000);
        let err = read("x.csv.gz", gz.as_slice(), CsvFormat::Beijing, TimeRange::default(), &tx).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("compressed byte"), "{message}");
        assert!(message.contains("lines before it are kept"), "{message}");
        drop(tx);
        let mut kept = 0;
        while let Ok(chunk) = rx.try_recv() {
            kept += chunk.observations.len();
        }
        assert!(kept > 0, "the values before the damage are sent");
    }
}
