//! The operator's configuration, from flags or `AIRQ_*` environment variables. The cluster connection comes from
//! the in-cluster service account, or from `KUBECONFIG` / `~/.kube/config` outside a cluster.

use airq_core::config::ServeArgs;
use clap::Parser;

/// The airq Kubernetes operator.
#[derive(Debug, Clone, Parser)]
#[command(name = "airq-operator", version)]
pub struct Config {
    #[command(flatten)]
    pub serve: ServeArgs,
}
