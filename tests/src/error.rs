//! What can go wrong while preparing the test environment. Every error says which server or tool, which port or
//! path, and quotes the end of the server's own log.

use std::path::PathBuf;

/// An error of the test environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{server} ({binary}) {problem}{}", log_tail_suffix(.log, .tail))]
    Server {
        server: String,
        binary: PathBuf,
        problem: String,
        log: PathBuf,
        tail: String,
    },
    #[error("`{command}` failed ({status}){}", log_tail_suffix(.log, .tail))]
    Command {
        command: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{0}")]
    Setup(String),
    #[error("timed out after {seconds}s waiting for {what}{}", .last.as_ref().map(|l| format!(" (last observation: {l})")).unwrap_or_default())]
    Timeout {
        what: String,
        seconds: u64,
        last: Option<String>,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("PostgreSQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn log_tail_suffix(log: &std::path::Path, tail: &str) -> String {
    if tail.trim().is_empty() {
        format!("; its log {} is empty", log.display())
    } else {
        format!("\n--- last lines of {} ---\n{}", log.display(), tail.trim_end())
    }
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
