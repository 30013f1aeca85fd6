//! airq's five container images for the test node, made from the binaries this test run compiled, by
//! `images/build.sh --prebuilt` itself (the same layout as the released images: the binary, the libraries it links,
//! CA certificates, user 65532), as OCI archives imported into the node's containerd. No registry is involved: the
//! images are named under [`LOCAL_REGISTRY`], and pods that ask for them find them on the node.
//!
//! The first test process that needs them makes them, under a lock in the runner's folder; the others wait and
//! read what it published.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io};
use crate::node::{LOCAL_REGISTRY, NodeInfo, import_image};
use crate::process::run_to_completion;

/// airq's deployables: the operator and the four services.
pub const SERVICES: [&str; 5] = ["operator", "gateway", "etl", "front", "predictive"];

/// The imported images: `<registry>/airq-<service>:<tag>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Images {
    pub registry: String,
    pub tag: String,
    /// Where the archives are (to import them again under another tag).
    archives: PathBuf,
}

impl Images {
    /// The name of `service`'s image.
    pub fn image(&self, service: &str) -> String {
        format!("{}/airq-{service}:{}", self.registry, self.tag)
    }

    /// The same images under `tag` too (a new version to roll out, for instance), imported into the node.
    pub async fn tagged(&self, tag: &str) -> Result<Self> {
        let node = crate::node().await?;
        let tagged = Self {
            tag: tag.to_owned(),
            ..self.clone()
        };
        let names: Vec<(String, String)> = SERVICES
            .iter()
            .map(|service| (self.image(service), tagged.image(service)))
            .collect();
        let log = self.archives.join(format!("tag-{tag}.log"));
        tokio::task::spawn_blocking(move || {
            for (from, to) in names {
                let mut ctr = Command::new("ctr");
                ctr.arg("--address").arg(&node.containerd).args([
                    "--namespace",
                    "k8s.io",
                    "images",
                    "tag",
                    "--force",
                    &from,
                    &to,
                ]);
                run_to_completion(ctr, &log)?;
            }
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| Error::Setup(format!("tagging the images panicked: {e}")))??;
        Ok(tagged)
    }
}

impl crate::Published for Images {
    const NAME: &'static str = "images";
}

/// airq's images on the test node, made once per test run from this run's binaries.
pub async fn images() -> Result<Images> {
    let node = crate::node().await?;
    let dir = crate::runner_dir()
        .ok_or_else(|| Error::Setup("the images are made for the test runner's node only".to_owned()))?;
    tokio::task::spawn_blocking(move || make_once(&dir, &node))
        .await
        .map_err(|e| Error::Setup(format!("making the images panicked: {e}")))?
}

fn make_once(dir: &Path, node: &NodeInfo) -> Result<Images> {
    let published = dir.join(format!("{}.json", <Images as crate::Published>::NAME));
    let lock_path = dir.join("images.lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(format!("cannot create {}", lock_path.display())))?;
    lock.lock()
        .map_err(io(format!("cannot lock {}", lock_path.display())))?;
    if let Ok(text) = std::fs::read_to_string(&published) {
        return Ok(serde_json::from_str(&text)?);
    }
    let images = make(dir, node)?;
    crate::publish(dir, &Ok(images.clone()))?;
    Ok(images)
}

/// The folder of the binaries this test process was compiled with (`target/debug`): the test executable is in its
/// `deps/` folder, and `cargo test` builds every workspace package's binaries there before it runs a test.
fn binaries_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(io("cannot find the test executable"))?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| Error::Setup(format!("{} is not in a Cargo target folder", exe.display())))?
        .to_owned();
    for service in SERVICES {
        let binary = dir.join(format!("airq-{service}"));
        if !binary.is_file() {
            return Err(Error::Setup(format!(
                "{} is missing: the images are made from the binaries `cargo test --workspace` builds",
                binary.display()
            )));
        }
    }
    Ok(dir)
}

/// A binary of the workspace this test process was compiled with (e.g. `kubectl-airq`).
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = binaries_dir()?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Setup(format!(
            "{} is missing: `cargo test --workspace` builds it",
            path.display()
        )))
    }
}

fn make(dir: &Path, node: &NodeInfo) -> Result<Images> {
    let started = Instant::now();
    let binaries = binaries_dir()?;
    let archives = dir.join("images");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/build.sh");
    let tag = env!("CARGO_PKG_VERSION").to_owned();
    let mut build = Command::new("bash");
    build
        .arg(&script)
        .args([
            "--prebuilt",
            "--engine",
            "umoci",
            "--registry",
            LOCAL_REGISTRY,
            "--tag",
            &tag,
        ])
        .arg("--binaries")
        .arg(&binaries)
        .arg("--output")
        .arg(&archives);
    std::fs::create_dir_all(&archives).map_err(io(format!("cannot create {}", archives.display())))?;
    run_to_completion(build, &archives.join("build.log"))?;
    let images = Images {
        registry: LOCAL_REGISTRY.to_owned(),
        tag,
        archives: archives.clone(),
    };
    for service in SERVICES {
        let archive = archives.join(format!("airq-{service}.tar"));
        import_image(
            &node.containerd,
            &archive,
            &images.image(service),
            &archives.join(format!("import-{service}.log")),
        )?;
    }
    eprintln!(
        "airq-testenv: images {} made from {} and imported in {:.1?}",
        images.image("<service>"),
        binaries.display(),
        started.elapsed()
    );
    Ok(images)
}
