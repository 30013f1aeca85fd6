//! Long-running server processes (PostgreSQL, etcd, kube-apiserver, kube-controller-manager) started for tests.
//! Each writes to its own log file, whose end is quoted when something goes wrong, and each is killed by the kernel
//! when the process that started it exits, however it exits.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{Error, Result, io};

/// A running server process and where its output goes.
#[derive(Debug)]
pub struct ServerProcess {
    pub name: String,
    pub binary: PathBuf,
    pub log: PathBuf,
    child: Child,
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Servers are spawned from one thread that lives as long as the process: the kernel's parent-death signal fires when
/// the spawning *thread* ends, and test threads end long before the test binary does.
fn spawner() -> Result<&'static Mutex<mpsc::Sender<SpawnRequest>>> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<SpawnRequest>>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (requests, incoming) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("airq-testenv-spawner".to_owned())
                .spawn(move || {
                    for (mut command, reply) in incoming {
                        let _ = reply.send(command.spawn());
                    }
                })
                .ok()
                .map(|_| Mutex::new(requests))
        })
        .as_ref()
        .ok_or_else(|| Error::Setup("cannot start the process-spawning thread".to_owned()))
}

impl ServerProcess {
    /// Starts `command` as the server `name`, its stdout and stderr appended to `log`. The server receives
    /// `death_signal` when this process exits.
    #[allow(unsafe_code)]
    pub fn spawn(name: &str, mut command: Command, log: &Path, death_signal: Signal) -> Result<Self> {
        let binary = PathBuf::from(command.get_program());
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("cannot open the log file {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("cannot open the log file {}", log.display())))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it is the only call made between
        // fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                nix::sys::prctl::set_pdeathsig(death_signal).map_err(std::io::Error::from)
            });
        }
        let (reply, answer) = mpsc::channel();
        spawner()?
            .lock()
            .map_err(|_| Error::Setup("the process-spawning thread is gone".to_owned()))?
            .send((command, reply))
            .map_err(|_| Error::Setup("the process-spawning thread is gone".to_owned()))?;
        let child = answer
            .recv()
            .map_err(|_| Error::Setup("the process-spawning thread is gone".to_owned()))?
            .map_err(io(format!("cannot start {name} ({})", binary.display())))?;
        Ok(Self {
            name: name.to_owned(),
            binary,
            log: log.to_owned(),
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error for this server that quotes the end of its log.
    pub fn error(&self, problem: impl Into<String>) -> Error {
        Error::Server {
            server: self.name.clone(),
            binary: self.binary.clone(),
            problem: problem.into(),
            log: self.log.clone(),
            tail: log_tail(&self.log, 30),
        }
    }

    /// `Ok` while the server runs; an error quoting its log once it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.error(format!("exited ({status})"))),
            Err(err) => Err(self.error(format!("cannot be watched: {err}"))),
        }
    }

    /// Whether the server failed because another process took its port first: ports are picked free, but another
    /// process can take one before the server binds it. Only then is a new attempt on another port worth making.
    pub fn failed_on_taken_port(&self) -> bool {
        log_tail(&self.log, 50)
            .to_lowercase()
            .contains("address already in use")
    }

    /// Sends `signal`, waits up to `grace` for the process to exit, then kills it.
    pub fn stop(&mut self, signal: Signal, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id().cast_signed());
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a log file (at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_ok() {
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Servers that then fail to bind it are retried by the caller.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(io("cannot find a free port on 127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(io("cannot find a free port on 127.0.0.1"))?
        .port();
    Ok(port)
}

/// Runs a short command to completion, its output in `log`; an error quoting the log if it fails.
pub fn run_to_completion(mut command: Command, log: &Path) -> Result<()> {
    let shown = format!("{command:?}");
    let out = File::create(log).map_err(io(format!("cannot create {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io(format!("cannot create {}", log.display())))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(io(format!("cannot run {shown}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: shown,
            status: status.to_string(),
            log: log.to_owned(),
            tail: log_tail(log, 40),
        })
    }
}
