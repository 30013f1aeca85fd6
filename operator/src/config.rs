//! The operator's configuration, from flags or `AIRQ_*` environment variables. The cluster connection comes from
//! the in-cluster service account, or from `KUBECONFIG` / `~/.kube/config` outside a cluster.

use airq_core::config::ServeArgs;
use clap::{Args, Parser, Subcommand};

/// The airq Kubernetes operator.
#[derive(Debug, Clone, Parser)]
#[command(name = "airq-operator", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

/// What the binary does.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Reconcile airq resources (the default).
    Run,
    /// Print the CustomResourceDefinitions as YAML, or write one file per resource into a folder.
    Crds {
        /// Write `<plural>.airq.dev.yaml` files into this folder instead of printing.
        #[arg(long)]
        output_dir: Option<std::path::PathBuf>,
    },
}

/// How the operator runs.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub operator: OperatorArgs,
}

/// What the reconcilers need to know.
#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    /// Watch only this namespace; every namespace when absent.
    #[arg(long, env = "AIRQ_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Registry and repository prefix of airq's images (`<registry>/airq-<service>:<version>`), for the ETL and
    /// training Jobs and the model servers of resources that name no image.
    #[arg(long, env = "AIRQ_IMAGE_REGISTRY", default_value = "ghcr.io/airq-dev")]
    pub image_registry: String,
    /// Tag of airq's images.
    #[arg(long, env = "AIRQ_IMAGE_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub image_version: String,
    /// When the kubelet pulls airq's images for the Jobs and model servers (Always, IfNotPresent or Never).
    #[arg(long, env = "AIRQ_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,
    /// Reconciles run at the same time, per resource kind.
    #[arg(long, env = "AIRQ_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Take a Lease before reconciling, so that only one of several replicas acts.
    #[arg(long, env = "AIRQ_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "AIRQ_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, env = "AIRQ_LEASE_NAME", default_value = "airq-operator")]
    pub lease_name: String,
    /// This replica's name in the Lease (the pod name in a cluster).
    #[arg(long, env = "AIRQ_POD_NAME")]
    pub identity: Option<String>,
    /// Seconds between two checks of whether the cluster serves the Prometheus Operator's ServiceMonitor and
    /// PrometheusRule (they are created once it does).
    #[arg(long, env = "AIRQ_MONITORING_RECHECK_SECONDS", default_value_t = 60)]
    pub monitoring_recheck_seconds: u64,
}

impl OperatorArgs {
    /// The image of one of airq's services.
    pub fn image(&self, service: &str) -> String {
        format!("{}/airq-{service}:{}", self.image_registry, self.image_version)
    }
}
