//! The Go-built tools of the test environment: the Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler), the node's kubelet and kube-proxy, the cluster's DNS server (CoreDNS)
//! and helm. Their versions are pinned by the Go modules under `tests/tools/`; the binaries
//! are built from those modules on first use and cached outside the repository, keyed by the module files and the Go
//! version, so a version bump rebuilds and nothing else does.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result, io};
use crate::process::run_to_completion;

/// A Go module under `tests/tools/` and the binaries it builds.
struct GoTool {
    /// Folder under `tests/tools/`.
    module: &'static str,
    /// Import paths of the main packages to build.
    packages: &'static [&'static str],
    /// Renames of built binaries (Go names a binary after the last element of its import path).
    renames: &'static [(&'static str, &'static str)],
    /// Binaries expected in the output folder once built.
    binaries: &'static [&'static str],
}

const KUBERNETES: GoTool = GoTool {
    module: "kubernetes",
    packages: &[
        "go.etcd.io/etcd/server/v3",
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-scheduler",
        "k8s.io/kubernetes/cmd/kubelet",
        "k8s.io/kubernetes/cmd/kube-proxy",
        "k8s.io/kubernetes/cmd/kubectl",
    ],
    renames: &[("server", "etcd")],
    binaries: &[
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "kubectl",
    ],
};

const COREDNS: GoTool = GoTool {
    module: "coredns",
    packages: &["github.com/coredns/coredns"],
    renames: &[],
    binaries: &["coredns"],
};

const HELM: GoTool = GoTool {
    module: "helm",
    packages: &["helm.sh/helm/v3/cmd/helm"],
    renames: &[],
    binaries: &["helm"],
};

/// The folder holding `etcd`, `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`, `kubelet`,
/// `kube-proxy` and `kubectl`, built first if needed.
pub fn kubernetes_binaries() -> Result<PathBuf> {
    KUBERNETES.ensure_built()
}

/// The `coredns` binary, built first if needed.
pub fn coredns_binary() -> Result<PathBuf> {
    Ok(COREDNS.ensure_built()?.join("coredns"))
}

/// The `helm` binary, built first if needed.
pub fn helm_binary() -> Result<PathBuf> {
    Ok(HELM.ensure_built()?.join("helm"))
}

/// The Kubernetes version the test control plane runs, as pinned in `tests/tools/kubernetes/go.mod`.
pub fn kubernetes_version() -> Result<String> {
    required_version(&tools_dir().join("kubernetes"), "k8s.io/kubernetes")
}

/// The CoreDNS version pinned in `tests/tools/coredns/go.mod`.
pub fn coredns_version() -> Result<String> {
    required_version(&tools_dir().join("coredns"), "github.com/coredns/coredns")
}

/// The helm version pinned in `tests/tools/helm/go.mod`.
pub fn helm_version() -> Result<String> {
    required_version(&tools_dir().join("helm"), "helm.sh/helm/v3")
}

/// The Prometheus Operator release whose CustomResourceDefinitions the monitoring tests install.
pub const PROMETHEUS_OPERATOR_VERSION: &str = "v0.85.0";

/// The Prometheus Operator's ServiceMonitor and PrometheusRule CRD manifests, as released: read from its Go module,
/// which `go mod download` fetches once through the module proxy into the Go module cache.
pub fn prometheus_operator_crds() -> Result<Vec<PathBuf>> {
    let module = format!("github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}");
    let dir = cache_dir()?;
    std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let output = Command::new("go")
        .args(["mod", "download", "-json", &module])
        .current_dir(&dir)
        .output()
        .map_err(io("cannot run `go mod download`: is Go installed and on PATH?"))?;
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        Error::Setup(format!(
            "`go mod download -json {module}` did not answer JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    })?;
    let Some(folder) = answer["Dir"].as_str() else {
        return Err(Error::Setup(format!(
            "`go mod download -json {module}` failed: {answer}"
        )));
    };
    let crds = Path::new(folder).join("example/prometheus-operator-crd");
    Ok(["servicemonitors", "prometheusrules"]
        .iter()
        .map(|plural| crds.join(format!("monitoring.coreos.com_{plural}.yaml")))
        .collect())
}

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools")
}

/// Where built tools are kept between runs: `$AIRQ_CACHE_DIR`, else `$XDG_CACHE_HOME/airq`, else `~/.cache/airq`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("AIRQ_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("airq"));
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache").join("airq"))
        .ok_or_else(|| {
            Error::Setup("cannot choose a cache folder: set AIRQ_CACHE_DIR, XDG_CACHE_HOME or HOME".to_owned())
        })
}

/// The version `module_dir/go.mod` requires of `module`.
fn required_version(module_dir: &Path, module: &str) -> Result<String> {
    let go_mod = module_dir.join("go.mod");
    let text = std::fs::read_to_string(&go_mod).map_err(io(format!("cannot read {}", go_mod.display())))?;
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let first = words.next()?;
            let (name, version) = if first == "require" {
                (words.next()?, words.next()?)
            } else {
                (first, words.next()?)
            };
            (name == module).then(|| version.to_owned())
        })
        .next()
        .ok_or_else(|| Error::Setup(format!("{} does not require {module}", go_mod.display())))
}

fn go_version() -> Result<String> {
    let output = Command::new("go").arg("version").output().map_err(io(
        "cannot run `go version`: the test environment builds its control plane with Go, is it installed and on PATH?",
    ))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl GoTool {
    fn module_dir(&self) -> PathBuf {
        tools_dir().join(self.module)
    }

    /// `-ldflags` for the build: stripped binaries, with the version each reports (`/version`, `helm version`)
    /// stamped in as their own release builds do.
    fn ldflags(&self) -> Result<String> {
        let mut flags = "-s -w".to_owned();
        if self.module == "helm" {
            flags.push_str(&format!(
                " -X helm.sh/helm/v3/internal/version.version={}",
                helm_version()?
            ));
        }
        if self.module == "kubernetes" {
            let version = kubernetes_version()?;
            let mut parts = version.trim_start_matches('v').split('.');
            let major = parts.next().unwrap_or("1");
            let minor = parts.next().unwrap_or("0");
            for (name, value) in [
                ("gitVersion", version.as_str()),
                ("gitMajor", major),
                ("gitMinor", minor),
            ] {
                flags.push_str(&format!(" -X k8s.io/component-base/version.{name}={value}"));
            }
        }
        Ok(flags)
    }

    /// The cache folder for this exact build: the module files, the Go version and the flags.
    fn output_dir(&self) -> Result<PathBuf> {
        let dir = self.module_dir();
        let mut hash = Sha256::new();
        for file in ["go.mod", "go.sum"] {
            let path = dir.join(file);
            hash.update(std::fs::read(&path).map_err(io(format!("cannot read {}", path.display())))?);
        }
        hash.update(go_version()?);
        hash.update(self.ldflags()?);
        let digest = hash.finalize();
        let key: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Ok(cache_dir()?.join(format!("{}-{key}", self.module)))
    }

    fn is_complete(&self, dir: &Path) -> bool {
        self.binaries.iter().all(|b| dir.join(b).is_file())
    }

    fn ensure_built(&self) -> Result<PathBuf> {
        let out = self.output_dir()?;
        if self.is_complete(&out) {
            return Ok(out);
        }
        let cache = cache_dir()?;
        std::fs::create_dir_all(&cache).map_err(io(format!("cannot create the cache folder {}", cache.display())))?;
        // Several test processes may ask at once: one builds, the others wait for it.
        let lock_path = cache.join(format!("{}.lock", self.module));
        let lock = File::create(&lock_path).map_err(io(format!("cannot create {}", lock_path.display())))?;
        lock.lock()
            .map_err(io(format!("cannot lock {}", lock_path.display())))?;
        if self.is_complete(&out) {
            return Ok(out);
        }
        let staging = cache.join(format!("{}.building-{}", self.module, std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io(format!("cannot create {}", staging.display())))?;
        let log = cache.join(format!("{}-build.log", self.module));
        eprintln!(
            "airq-testenv: building {} from the Go module in {} (minutes when cold; log: {})",
            self.binaries.join(", "),
            self.module_dir().display(),
            log.display()
        );
        let started = Instant::now();
        let mut command = Command::new("go");
        command
            .current_dir(self.module_dir())
            .args(["build", "-trimpath", "-buildvcs=false", "-ldflags"])
            .arg(self.ldflags()?)
            .arg("-o")
            .arg(format!("{}/", staging.display()))
            .args(self.packages);
        run_to_completion(command, &log)?;
        for (from, to) in self.renames {
            std::fs::rename(staging.join(from), staging.join(to)).map_err(io(format!(
                "cannot rename the built {from} to {to} in {}",
                staging.display()
            )))?;
        }
        if !self.is_complete(&staging) {
            return Err(Error::Setup(format!(
                "go build finished but {} lacks one of {:?}",
                staging.display(),
                self.binaries
            )));
        }
        let _ = std::fs::remove_dir_all(&out);
        std::fs::rename(&staging, &out).map_err(io(format!(
            "cannot move {} to {}",
            staging.display(),
            out.display()
        )))?;
        eprintln!(
            "airq-testenv: built {} in {:.0?} into {}",
            self.binaries.join(", "),
            started.elapsed(),
            out.display()
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_versions_are_read_from_the_go_modules() -> Result<()> {
        let k8s = kubernetes_version()?;
        assert!(k8s.starts_with("v1."), "{k8s}");
        let helm = helm_version()?;
        assert!(helm.starts_with("v3."), "{helm}");
        let coredns = coredns_version()?;
        assert!(coredns.starts_with("v1."), "{coredns}");
        Ok(())
    }
}
