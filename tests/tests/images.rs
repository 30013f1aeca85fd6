//! The container images' recipes agree with what runs them: one Dockerfile per deployable, each building that
//! package's binary and running it as the non-root user the operator's pod specs and the chart demand; the build
//! script knows every image and names them the way the operator and the chart do.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The deployables: the operator and the four services (what the operator and the chart run).
const DEPLOYABLES: [(&str, &str); 5] = [
    ("operator", "operator"),
    ("gateway", "services/gateway"),
    ("etl", "services/etl"),
    ("front", "services/front"),
    ("predictive", "services/predictive"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(root().join(path)).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

#[test]
fn each_deployable_has_a_multi_stage_non_root_dockerfile_building_its_binary() -> anyhow::Result<()> {
    // The user the operator's pods run as.
    let workload = read("operator/src/workload.rs")?;
    assert!(
        workload.contains("pub const RUN_AS_USER: i64 = 65532;"),
        "the operator's RUN_AS_USER moved"
    );
    let chart = read("helm/airq/templates/operator.yaml")?;
    assert!(
        chart.contains("runAsUser: 65532"),
        "the chart's operator pods run as another user"
    );

    for (service, package_dir) in DEPLOYABLES {
        let binary = format!("airq-{service}");
        let dockerfile = read(&format!("images/{service}/Dockerfile"))?;
        let manifest = read(&format!("{package_dir}/Cargo.toml"))?;
        assert!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "{package_dir} has no binary {binary}"
        );
        let stages: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(
            stages.len(),
            2,
            "{service}: a build stage and a runtime stage: {stages:?}"
        );
        assert!(
            dockerfile.contains(&format!("--package {binary} --bin {binary}")),
            "{service}: the build stage must compile {binary}"
        );
        assert!(dockerfile.contains("--locked"), "{service}: builds must use Cargo.lock");
        assert!(dockerfile.contains("USER 65532:65532"), "{service}: must run as 65532");
        assert!(
            dockerfile.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "{service}: the entrypoint must be the binary (Jobs pass only args)"
        );
        assert!(
            dockerfile.contains("distroless/cc"),
            "{service}: the runtime image is distroless cc"
        );
    }
    let ignore = read(".dockerignore")?;
    assert!(
        ignore.lines().any(|l| l == "target/"),
        "the build context must leave target/ out"
    );
    Ok(())
}

#[test]
fn the_build_script_knows_every_image_and_names_them_as_the_operator_does() -> anyhow::Result<()> {
    let script = read("images/build.sh")?;
    let names: Vec<&str> = DEPLOYABLES.iter().map(|(s, _)| *s).collect();
    assert!(
        script.contains(&format!("ALL=({})", names.join(" "))),
        "images/build.sh must build every deployable: {names:?}"
    );
    // <registry>/airq-<service>:<version>, as the operator's OperatorArgs::image and the Platform's spec.
    assert!(script.contains("echo \"$registry/airq-$1:$tag\""));
    let config = read("operator/src/config.rs")?;
    assert!(config.contains("format!(\"{}/airq-{service}:{}\", self.image_registry, self.image_version)"));

    let path = root().join("images/build.sh");
    let syntax = Command::new("bash").arg("-n").arg(&path).output()?;
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));
    let help = Command::new("bash").arg(&path).arg("--help").output()?;
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--prebuilt"));
    let unknown = Command::new("bash").arg(&path).arg("dashboard").output()?;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no image named dashboard"));
    Ok(())
}
