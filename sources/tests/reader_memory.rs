//! The CSV reader's memory stays flat whatever the input: a 256 MB line (a station name without end), then lines of
//! 100 KB fields, read as a stream, never hold more than a few megabytes at once. Measured as the growth of the
//! process's resident high-water mark (`VmHWM`, reset through `/proc/self/clear_refs`); the only test in its binary,
//! so nothing else grows it meanwhile.

// A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
#![allow(clippy::unwrap_used)]

use std::io::Read;

use airq_api::etl::CsvFormat;
use airq_sources::TimeRange;
use airq_sources::csv;
use tokio::sync::mpsc;

/// A line of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A generated input, part after part: bytes, or one byte repeated.
enum Part {
    Bytes(Vec<u8>),
    Repeat(u8, usize),
}

struct Generated(std::collections::VecDeque<Part>);

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.front_mut() {
                None => return Ok(0),
                Some(Part::Bytes(bytes)) if bytes.is_empty() => {}
                Some(Part::Repeat(_, 0)) => {}
                Some(Part::Bytes(bytes)) => {
                    let n = buf.len().min(bytes.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    bytes.drain(..n);
                    return Ok(n);
                }
                Some(Part::Repeat(byte, left)) => {
                    let n = buf.len().min(*left);
                    buf[..n].fill(*byte);
                    *left -= n;
                    return Ok(n);
                }
            }
            self.0.pop_front();
        }
    }
}

#[test]
fn memory_stays_flat_on_endless_lines_and_fields() {
    const ENDLESS: usize = 256 << 20;
    let header = b"station,parameter,time,value,unit\n".to_vec();
    let mut row = b"\"".to_vec();
    row.extend(std::iter::repeat_n(b'S', 100_000));
    row.extend_from_slice(b"\",pm25,2016-03-01T13:00:00Z,10,ug/m3\n");
    let input = Generated(
        [
            Part::Bytes(header),
            Part::Repeat(b'x', ENDLESS),
            Part::Bytes(b"\n".to_vec()),
            Part::Bytes(row.repeat(200)),
            Part::Bytes(b"s1,pm25,2016-03-01T13:00:00Z,10,ug/m3\n".to_vec()),
        ]
        .into(),
    );
    let (tx, mut rx) = mpsc::channel(1000);
    // The resident set's high-water mark, reset to what is resident now.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_bytes("VmRSS:");
    csv::read("endless.csv", input, CsvFormat::Long, TimeRange::default(), &tx).unwrap();
    let peak = status_bytes("VmHWM:").saturating_sub(before);
    drop(tx);
    let mut refused = 0;
    let mut kept = 0;
    while let Ok(chunk) = rx.try_recv() {
        refused += chunk.rejected.len();
        kept += chunk.observations.len();
    }
    // The endless line and the 200 long-named rows are refused, the last row kept.
    assert_eq!((refused, kept), (201, 1));
    assert!(
        peak < 16 << 20,
        "reading 276 MB of overlong lines held {:.1} MB at once",
        peak as f64 / 1048576.0
    );
    eprintln!(
        "276 MB of overlong lines read holding at most {:.1} MB",
        peak as f64 / 1048576.0
    );
}
