//! Log lines written to stdout in batches by a thread of their own.
//!
//! A service on a request path measured in microseconds (the gateway) must not make a system call per log line,
//! nor wake a thread per line: measured on the gateway, `tracing-appender`'s non-blocking writer (a channel message
//! and a `write` per line, its worker spinning on the channel) took a fifth of the process's CPU at 15,000 lines a
//! second. Here lines are appended to a buffer under a lock; the writer thread wakes when the first line arrives,
//! lingers [`LINGER`] for more, and writes everything pending in one call. Lines are never dropped: past
//! [`MAX_PENDING`] bytes a producer waits for the writer (a slow stdout slows logging down, as a full pipe would).

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer waits after the first line of a batch for more lines.
pub const LINGER: Duration = Duration::from_millis(10);
/// Pending bytes at which the writer stops lingering.
const HIGH_WATER: usize = 256 * 1024;
/// Pending bytes past which producers wait.
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer sleeps until a line arrives: the next producer wakes it.
    writer_idle: bool,
    /// The writer lingers for more lines: only a batch past the high water mark wakes it.
    lingering: bool,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where log lines go; cheap to clone. Each `write` must be whole lines (as `tracing-subscriber` writes one event
/// per call), so that lines from several threads never interleave.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written every pending line.
pub struct SinkGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl LogSink {
    /// A sink writing to `out` from a new thread named `thread_name`.
    pub fn start<W: Write + Send + 'static>(out: W, thread_name: &str) -> std::io::Result<(Self, SinkGuard)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            room: Condvar::new(),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(thread_name.to_owned())
                .spawn(move || write_batches(&shared, out))?
        };
        Ok((
            Self { shared: shared.clone() },
            SinkGuard {
                shared,
                writer: Some(writer),
            },
        ))
    }

    /// Queues `lines` (whole lines, each ending in `\n`).
    pub fn write_lines(&self, lines: &[u8]) {
        let mut pending = self.shared.lock();
        while pending.bytes.len() >= MAX_PENDING && !pending.closed {
            pending = self
                .shared
                .room
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if pending.closed {
            // The writer is gone (the process is ending): the line goes straight out.
            drop(pending);
            let _ = std::io::stdout().write_all(lines);
            return;
        }
        pending.bytes.extend_from_slice(lines);
        if pending.writer_idle {
            pending.writer_idle = false;
            self.shared.wake.notify_one();
        } else if pending.lingering && pending.bytes.len() >= HIGH_WATER {
            pending.lingering = false;
            self.shared.wake.notify_one();
        }
    }
}

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let mut spare = Vec::new();
    loop {
        let mut batch = {
            let mut pending = shared.lock();
            while pending.bytes.is_empty() && !pending.closed {
                pending.writer_idle = true;
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            pending.writer_idle = false;
            if pending.bytes.is_empty() {
                // Closed, and everything written.
                return;
            }
            if !pending.closed && pending.bytes.len() < HIGH_WATER {
                pending.lingering = true;
                pending = shared
                    .wake
                    .wait_timeout(pending, LINGER)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
                pending.lingering = false;
            }
            std::mem::replace(&mut pending.bytes, std::mem::take(&mut spare))
        };
        shared.room.notify_all();
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            // Nowhere else to say it: stderr, once per failed batch.
            eprintln!("airq: cannot write {} bytes of log lines: {e}", batch.len());
        }
        batch.clear();
        spare = batch;
    }
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        self.shared.room.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_lines(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogSink;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back, counting the calls.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Collected {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
            c.0.extend_from_slice(buf);
            c.1 += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_every_thread_is_written_whole_in_few_writes() {
        let out = Collected::default();
        let (sink, guard) = LogSink::start(out.clone(), "test-log-writer").expect("thread");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        sink.write_lines(format!("{{\"thread\":{t},\"line\":{i}}}\n").as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("producer");
        }
        drop(guard);
        let (bytes, writes) = out.0.lock().map(|c| c.clone()).expect("lock");
        let text = String::from_utf8(bytes).expect("utf-8");
        let mut next = [0; 4];
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("a whole line");
            let (t, i) = (
                value["thread"].as_u64().expect("t") as usize,
                value["line"].as_u64().expect("i"),
            );
            assert_eq!(i, next[t], "thread {t}'s lines in order");
            next[t] += 1;
        }
        assert_eq!(next, [10_000; 4]);
        assert!(
            writes < 4_000,
            "40,000 lines took {writes} writes: they are not batched"
        );
    }

    #[test]
    fn a_line_is_written_soon_without_more_lines_behind_it() {
        let out = Collected::default();
        let (sink, _guard) = LogSink::start(out.clone(), "test-log-writer").expect("thread");
        sink.write_lines(b"alone\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while out.0.lock().map(|c| c.0.is_empty()).unwrap_or(true) {
            assert!(
                std::time::Instant::now() < deadline,
                "a lone line was not written within 2 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out.0.lock().map(|c| c.0.clone()).unwrap_or_default(), b"alone\n");
    }
}
