//! Errors of a reconcile that are worth retrying: the API server refused or failed a write. A resource that is
//! wrong is not an error here: it gets `Ready=False` with the reason and waits for a change.

/// A failed step of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status: {0}")]
    Status(#[source] kube::Error),
    #[error("reading the pods of Job {job}: {source}")]
    ReadPods {
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("serialising {0}: {1}")]
    Serialize(&'static str, #[source] serde_json::Error),
    #[error("the object has no {0}")]
    MissingMetadata(&'static str),
    #[error("writing the gateway's route table: {0}")]
    RouteTable(String),
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::Status(_) => "status",
            Self::ReadPods { .. } => "read_pods",
            Self::Serialize(..) => "serialize",
            Self::MissingMetadata(_) => "missing_metadata",
            Self::RouteTable(_) => "route_table",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
