//! Text files read line by line with bounded memory: a line longer than [`MAX_LINE_BYTES`] is cut there and its
//! rest skipped (the caller refuses it), so one damaged line — a 300 MB station name — costs no more memory than a
//! normal one. Each line is split into fields by `csv_core` (RFC 4180 quoting); a record is one line, so a field
//! cannot hold a line break.

use std::io::{self, BufRead};

/// The longest line kept, in bytes (its line ending not counted). Rows of the supported layouts are about 100 bytes.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// One line of the input, without its line ending.
#[derive(Debug)]
pub struct Line<'a> {
    /// 1-based.
    pub number: u64,
    /// The line's bytes, at most [`MAX_LINE_BYTES`].
    pub bytes: &'a [u8],
    /// The line's whole length in bytes, when it was longer than [`MAX_LINE_BYTES`] (the rest was skipped).
    pub too_long: Option<u64>,
    /// Whether a line ending closed it (only the last line of a file may lack one).
    pub terminated: bool,
}

/// Lines of a buffered reader.
pub struct Lines<R> {
    inner: R,
    number: u64,
    buffer: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            number: 0,
            buffer: Vec::with_capacity(1024),
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The number of the last line returned.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The next line, or `None` at the end of the input.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buffer.clear();
        let mut total: u64 = 0;
        let mut terminated = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            let (taken, used) = match memchr::memchr(b'\n', available) {
                Some(i) => {
                    terminated = true;
                    (i, i + 1)
                }
                None => (available.len(), available.len()),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.buffer.len());
            self.buffer.extend_from_slice(&available[..taken.min(room)]);
            total += taken as u64;
            self.inner.consume(used);
            if terminated {
                break;
            }
        }
        if total == 0 && !terminated {
            return Ok(None);
        }
        self.number += 1;
        // A CRLF line ending.
        if terminated && total <= MAX_LINE_BYTES as u64 && self.buffer.last() == Some(&b'\r') {
            self.buffer.pop();
        }
        Ok(Some(Line {
            number: self.number,
            bytes: &self.buffer,
            too_long: (total > MAX_LINE_BYTES as u64).then_some(total),
            terminated,
        }))
    }
}

/// Splits lines into fields; reuses its buffers from line to line.
pub struct Splitter {
    reader: csv_core::Reader,
    output: Vec<u8>,
    ends: Vec<usize>,
    fields: usize,
    text_len: usize,
}

impl Default for Splitter {
    fn default() -> Self {
        Self {
            reader: csv_core::Reader::new(),
            output: Vec::new(),
            ends: Vec::new(),
            fields: 0,
            text_len: 0,
        }
    }
}

/// Why a line could not be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// The line is not UTF-8 text; the byte offset (0-based) of the first bad byte in the line.
    NotUtf8 { at: usize },
}

impl Splitter {
    /// Splits `line` into its fields (unquoted, not trimmed).
    pub fn split(&mut self, line: &[u8]) -> Result<Record<'_>, SplitError> {
        if let Err(e) = std::str::from_utf8(line) {
            return Err(SplitError::NotUtf8 { at: e.valid_up_to() });
        }
        // Unquoting only shortens; a field per byte at most.
        if self.output.len() < line.len() + 1 {
            self.output.resize(line.len() + 1, 0);
        }
        if self.ends.len() < line.len() + 2 {
            self.ends.resize(line.len() + 2, 0);
        }
        self.reader.reset();
        // The line, then a line ending that closes its record (an end of input would drop a trailing empty field).
        let mut pending: [&[u8]; 2] = [b"\n", b""];
        let mut next = 0;
        let (mut input, mut out, mut ends) = (line, 0, 0);
        loop {
            let (result, read, written, ended) =
                self.reader
                    .read_record(input, &mut self.output[out..], &mut self.ends[ends..]);
            input = &input[read..];
            // csv_core counts the ends from the record's start across calls.
            out += written;
            ends += ended;
            match result {
                csv_core::ReadRecordResult::InputEmpty => {
                    if let Some(more) = pending.get_mut(next) {
                        input = std::mem::take(more);
                        next += 1;
                    }
                }
                csv_core::ReadRecordResult::Record | csv_core::ReadRecordResult::End => break,
                // Cannot happen with the sizes above; grow and go on if it does.
                csv_core::ReadRecordResult::OutputFull => self.output.resize(self.output.len() * 2 + 1, 0),
                csv_core::ReadRecordResult::OutputEndsFull => self.ends.resize(self.ends.len() * 2 + 1, 0),
            }
        }
        self.fields = ends;
        self.text_len = out;
        // The output is made of the line's UTF-8 with quotes removed at ASCII boundaries: still UTF-8.
        let text = std::str::from_utf8(&self.output[..out]).map_err(|e| SplitError::NotUtf8 { at: e.valid_up_to() })?;
        Ok(Record {
            text,
            ends: &self.ends[..ends],
        })
    }
}

/// The fields of one line.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    text: &'a str,
    ends: &'a [usize],
}

impl<'a> Record<'a> {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i`, trimmed.
    pub fn get(&self, i: usize) -> Option<&'a str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end).map(str::trim)
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// Copies the fields into `cells` (whose buffers are reused).
    pub fn copy_to(&self, cells: &mut Cells) {
        cells.text.clear();
        cells.text.push_str(self.text);
        cells.ends.clear();
        cells.ends.extend_from_slice(self.ends);
    }
}

/// The fields of a line, owned: kept while the line's values are handled.
#[derive(Debug, Default)]
pub struct Cells {
    text: String,
    ends: Vec<usize>,
}

impl Cells {
    /// Field `i`, trimmed; empty when the line has no such field.
    pub fn get(&self, i: usize) -> &str {
        Record {
            text: &self.text,
            ends: &self.ends,
        }
        .get(i)
        .unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[u8]) -> Vec<(u64, String, Option<u64>, bool)> {
        let mut lines = Lines::new(io::BufReader::with_capacity(7, text));
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().unwrap() {
            out.push((
                line.number,
                String::from_utf8_lossy(line.bytes).into_owned(),
                line.too_long,
                line.terminated,
            ));
        }
        out
    }

    #[test]
    fn lines_keep_their_numbers_endings_and_bounds() {
        assert_eq!(
            lines(b"a,b\r\n\nc"),
            vec![
                (1, "a,b".to_owned(), None, true),
                (2, String::new(), None, true),
                (3, "c".to_owned(), None, false)
            ]
        );
        let long = format!("x\n{}\ny\n", "z".repeat(MAX_LINE_BYTES + 10));
        let got = lines(long.as_bytes());
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].1.len(), MAX_LINE_BYTES);
        assert_eq!(got[1].2, Some(MAX_LINE_BYTES as u64 + 10));
        assert_eq!(got[2], (3, "y".to_owned(), None, true));
        assert!(lines(b"").is_empty());
    }

    #[test]
    fn fields_are_unquoted_and_counted() {
        let mut splitter = Splitter::default();
        let record = splitter.split(b"1,\"a,b\", c ,\"say \"\"hi\"\"\",").unwrap();
        let fields: Vec<&str> = record.iter().collect();
        assert_eq!(fields, vec!["1", "a,b", "c", "say \"hi\"", ""]);
        let record = splitter.split(b"a").unwrap();
        assert_eq!(record.len(), 1);
        assert_eq!(
            splitter.split(b"ok,\xff\xfe").unwrap_err(),
            SplitError::NotUtf8 { at: 3 }
        );
        let record = splitter.split("µg/m³,x".as_bytes()).unwrap();
        assert_eq!(record.get(0), Some("µg/m³"));
    }
}
