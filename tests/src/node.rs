//! A real Kubernetes node beside the test control plane, so that airq's pods really run: containerd, runc and the
//! CNI plugins from Debian, the kubelet and kube-proxy built with the control plane, and CoreDNS answering for
//! Services and pods. The recipe, and why each setting is there, is in docs/testing.md.
//!
//! A node is host-wide — port 10250, the kubelet's cgroups, the pods' bridge, iptables chains — so there is one per
//! machine: the test runner starts it once per run and every test process shares it. Its state lives under the run's
//! folder (containerd's root and state, the kubelet's root, the pods' logs, the network namespaces, the IP
//! allocations); what cannot (the bridge, the chains, the cgroups, the sysctls it sets) is recorded in
//! [`HOST_STATE`] before it is made, so that stopping the node, or the next run after one that died, puts the
//! machine back as it was.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Api;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result, io};
use crate::kubernetes::{ControlPlane, DNS_USER, NODE_NAME};
use crate::process::{ServerProcess, run_to_completion};

/// The range pods get their addresses from: part of 198.18.0.0/15, which is reserved for benchmarking and routed
/// nowhere, so test traffic to pods never leaves this machine.
pub const POD_CIDR: &str = "198.18.0.0/16";
/// The Linux bridge the pods are attached to (the pod range's first address is the bridge's, the pods' gateway).
pub const BRIDGE: &str = "airq0";
/// The registry part of the names of the images made on this machine. Names under `.test` never resolve, so an
/// image missing from containerd fails to pull at once instead of being fetched from somewhere.
pub const LOCAL_REGISTRY: &str = "airq.test";
/// The image of every pod's sandbox, made here from `tests/tools/pause/pause.c`.
pub const PAUSE_IMAGE: &str = "airq.test/pause:1";
/// Where the node's host-wide state is recorded: a lock held while a node runs, and what it changed.
pub const HOST_STATE: &str = "/run/airq-testenv-node";
/// Both ranges (pods' and Services'), routed to the pods' bridge: a packet to an address of them that no pod has and
/// kube-proxy has not (yet) translated stays on this machine ("no route to host" once nobody answers on the bridge)
/// instead of going to the default gateway. (An `unreachable` route would refuse this machine's own connections to
/// Services before kube-proxy could translate them.)
pub const NODE_RANGES: &str = "198.18.0.0/15";
/// The chain-name prefixes of the iptables rules the node makes: kube-proxy's and the kubelet's, and the CNI
/// plugins'.
const CHAIN_PREFIXES: [&str; 2] = ["KUBE-", "CNI-"];
/// The sysctls the node needs: forwarding between the pods' bridge and the machine, and bridged traffic through
/// iptables (for Services whose endpoint is on the same bridge).
const SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/ip_forward", "1"),
    ("net/bridge/bridge-nf-call-iptables", "1"),
];

/// The Debian packages the node uses, each by a file it installs.
const PACKAGES: [(&str, &str); 9] = [
    ("/usr/bin/containerd", "containerd"),
    ("/usr/sbin/runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/sbin/iptables", "iptables"),
    ("/usr/sbin/conntrack", "conntrack"),
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/bin/umoci", "umoci"),
    ("/usr/bin/socat", "socat"),
    ("/usr/sbin/ethtool", "ethtool"),
];

/// What tests need to know of the running node, published by the runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The Node's name.
    pub name: String,
    /// This machine's address: the node's, where pods reach the machine's own servers (PostgreSQL, test HTTP
    /// servers), and the cluster DNS server's.
    pub address: Ipv4Addr,
    /// containerd's socket (`ctr --address`).
    pub containerd: PathBuf,
    /// The node's folder: containerd's, the kubelet's and the pods' logs.
    pub dir: PathBuf,
}

/// What a running node changed on the machine outside its folder, recorded before it is changed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HostRecord {
    /// The node's folder (under it: every mount the node makes).
    dir: PathBuf,
    /// The sysctls' values before the node set them.
    sysctls: Vec<(String, String)>,
    /// Whether `/run/containerd` was there before: containerd's shims put their sockets under it, whatever
    /// containerd's own state folder.
    shim_root_existed: bool,
}

/// Where containerd 1.6's shims make their sockets.
const SHIM_ROOT: &str = "/run/containerd";

/// A running node.
#[derive(Debug)]
pub struct Node {
    pub info: NodeInfo,
    processes: Vec<(ServerProcess, Signal)>,
    /// Held while the node runs: one node per machine.
    _lock: File,
}

impl Node {
    /// Starts a node under `dir` that joins `plane`, and returns once the Node is Ready. The machine must let this
    /// process act as root (containerd, the kubelet and kube-proxy do); the packages are installed when missing.
    pub async fn start(dir: &Path, plane: &ControlPlane) -> Result<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(Error::Setup(
                "the test node runs containerd, a kubelet and kube-proxy, which need root: run the tests as root"
                    .to_owned(),
            ));
        }
        let address = plane.address.ok_or_else(|| {
            Error::Setup("this machine has no address but loopback: pods could not reach the API server".to_owned())
        })?;
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let log_dir = dir.to_owned();
        tokio::task::spawn_blocking(move || install_packages(&log_dir.join("apt.log")))
            .await
            .map_err(|e| Error::Setup(format!("installing the node's packages panicked: {e}")))??;
        let lock = tokio::task::spawn_blocking(take_host_lock)
            .await
            .map_err(|e| Error::Setup(format!("locking the node panicked: {e}")))??;
        // Whatever an earlier run left behind goes first, then this run's changes are recorded before they are made.
        let leftovers = clean_host();
        if !leftovers.is_empty() {
            eprintln!(
                "airq-testenv: cleaned what an earlier test node left: {}",
                leftovers.join("; ")
            );
        }
        let sysctls = SYSCTLS
            .iter()
            .map(|(name, _)| Ok(((*name).to_owned(), read_sysctl(name)?)))
            .collect::<Result<Vec<_>>>()?;
        write_record(&HostRecord {
            dir: dir.to_owned(),
            sysctls,
            shim_root_existed: Path::new(SHIM_ROOT).exists(),
        })?;
        for (name, value) in SYSCTLS {
            write_sysctl(name, value)?;
        }
        // The bridge made here (the CNI plugin takes it as it is), so that both ranges stay on this machine from the
        // start.
        let mtu = pod_mtu().to_string();
        for args in [
            vec!["link", "add", BRIDGE, "type", "bridge"],
            vec!["link", "set", BRIDGE, "mtu", &mtu, "up"],
            vec!["route", "replace", NODE_RANGES, "dev", BRIDGE],
        ] {
            let mut ip = Command::new("ip");
            ip.args(&args);
            run_to_completion(ip, &dir.join("bridge.log"))?;
        }

        let bin = tokio::task::spawn_blocking(crate::tools::kubernetes_binaries)
            .await
            .map_err(|e| Error::Setup(format!("building the node panicked: {e}")))??;
        let coredns = tokio::task::spawn_blocking(crate::tools::coredns_binary)
            .await
            .map_err(|e| Error::Setup(format!("building CoreDNS panicked: {e}")))??;
        let pause_dir = dir.to_owned();
        let pause = tokio::task::spawn_blocking(move || pause_image(&pause_dir))
            .await
            .map_err(|e| Error::Setup(format!("making the pause image panicked: {e}")))??;

        let mut node = Self {
            info: NodeInfo {
                name: NODE_NAME.to_owned(),
                address,
                containerd: dir.join("containerd/containerd.sock"),
                dir: dir.to_owned(),
            },
            processes: Vec::new(),
            _lock: lock,
        };
        match node.bring_up(plane, &bin, &coredns, &pause).await {
            Ok(()) => Ok(node),
            Err(err) => {
                node.stop();
                Err(err)
            }
        }
    }

    async fn bring_up(&mut self, plane: &ControlPlane, bin: &Path, coredns: &Path, pause: &Path) -> Result<()> {
        let dir = self.info.dir.clone();
        let address = self.info.address;
        self.start_containerd(&dir)?;
        self.wait_containerd(Duration::from_secs(30)).await?;
        import_image(&self.info.containerd, pause, PAUSE_IMAGE, &dir.join("import-pause.log"))?;

        let client = crate::kubernetes::client_from(&plane.kubeconfig).await?;
        allow_dns_server(&client).await?;
        self.start_dns(&dir, plane, coredns, address)?;
        self.start_kubelet(&dir, plane, bin, address)?;
        self.start_kube_proxy(&dir, plane, bin, address)?;
        self.wait_ready(&client, Duration::from_secs(90)).await
    }

    fn spawn(&mut self, name: &str, command: Command, log: &Path, stop: Signal) -> Result<()> {
        let process = ServerProcess::spawn(name, command, log, stop)?;
        self.processes.push((process, stop));
        Ok(())
    }

    fn start_containerd(&mut self, dir: &Path) -> Result<()> {
        let root = dir.join("containerd");
        let cni = dir.join("cni");
        for folder in [
            root.join("root"),
            root.join("state"),
            cni.join("net.d"),
            cni.join("ipam"),
        ] {
            std::fs::create_dir_all(&folder).map_err(io(format!("cannot create {}", folder.display())))?;
        }
        // One bridge network for every pod, with the machine's MTU; pods reach the outside through masquerading.
        let network = json!({
            "cniVersion": "1.0.0",
            "name": "airq",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "mtu": pod_mtu(),
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": POD_CIDR }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": cni.join("ipam"),
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        });
        write(
            &cni.join("net.d/10-airq.conflist"),
            &serde_json::to_string_pretty(&network)?,
        )?;
        let config = format!(
            r#"# containerd for the airq test node; written by airq-testenv.
version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  # The pods' network namespaces under the node's folder, not /run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{root}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}/net.d"
"#,
            root = root.display(),
            socket = self.info.containerd.display(),
            cni = cni.display(),
        );
        let config_file = root.join("config.toml");
        write(&config_file, &config)?;
        let mut command = Command::new("containerd");
        command.arg("--config").arg(&config_file);
        self.spawn("containerd", command, &dir.join("containerd.log"), Signal::SIGTERM)
    }

    fn start_dns(&mut self, dir: &Path, plane: &ControlPlane, coredns: &Path, address: Ipv4Addr) -> Result<()> {
        // Names of Services and pods only: the machine has no upstream to forward other names to.
        let corefile = format!(
            ".:53 {{\n    bind {address}\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        \
             kubeconfig {kubeconfig} airq-test\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        \
             ttl 5\n    }}\n    cache 5\n}}\n",
            kubeconfig = plane.node_identities.dns.display()
        );
        let file = dir.join("Corefile");
        write(&file, &corefile)?;
        let mut command = Command::new(coredns);
        command.arg("-conf").arg(&file).current_dir(dir);
        self.spawn("CoreDNS", command, &dir.join("coredns.log"), Signal::SIGTERM)
    }

    fn start_kubelet(&mut self, dir: &Path, plane: &ControlPlane, bin: &Path, address: Ipv4Addr) -> Result<()> {
        let root = dir.join("kubelet");
        let pod_logs = dir.join("pod-logs");
        let plugins = dir.join("kubelet-plugins");
        for folder in [&root, &pod_logs, &plugins] {
            std::fs::create_dir_all(folder).map_err(io(format!("cannot create {}", folder.display())))?;
        }
        // Pods that ask for the node's DNS settings get none of the machine's (it has no reachable upstream).
        let resolv = dir.join("resolv.conf");
        write(&resolv, "")?;
        let ids = &plane.node_identities;
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": true },
                "x509": { "clientCAFile": ids.ca_cert },
            },
            "authorization": { "mode": "Webhook" },
            "tlsCertFile": ids.kubelet_serving.0,
            "tlsPrivateKeyFile": ids.kubelet_serving.1,
            "address": address.to_string(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "cgroupDriver": "cgroupfs",
            // This machine has cgroup v1, which kubelet 1.36 refuses unless told otherwise.
            "failCgroupV1": false,
            "failSwapOn": false,
            "containerRuntimeEndpoint": format!("unix://{}", self.info.containerd.display()),
            // The images are made here and cannot be pulled again: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "clusterDNS": [address.to_string()],
            "clusterDomain": "cluster.local",
            "resolvConf": resolv,
            "podLogsDir": pod_logs,
            "volumePluginDir": plugins,
            "maxPods": 250,
            "serializeImagePulls": false,
            "registerNode": true,
            "staticPodPath": "",
        });
        let config_file = dir.join("kubelet-config.json");
        write(&config_file, &serde_json::to_string_pretty(&config)?)?;
        let mut command = Command::new(bin.join("kubelet"));
        command
            .arg(format!("--config={}", config_file.display()))
            .arg(format!("--kubeconfig={}", ids.kubelet.display()))
            .arg(format!("--root-dir={}", root.display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={address}"))
            .arg("--v=1");
        self.spawn("kubelet", command, &dir.join("kubelet.log"), Signal::SIGTERM)
    }

    fn start_kube_proxy(&mut self, dir: &Path, plane: &ControlPlane, bin: &Path, address: Ipv4Addr) -> Result<()> {
        let config = json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": { "kubeconfig": plane.node_identities.kube_proxy },
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "bindAddress": address.to_string(),
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": [format!("{address}/32")],
            // No NodePorts on localhost: kube-proxy would set route_localnet on the whole machine for them.
            "iptables": { "localhostNodePorts": false, "masqueradeAll": false },
            // Zeros leave the machine's conntrack sysctls alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        });
        let config_file = dir.join("kube-proxy-config.json");
        write(&config_file, &serde_json::to_string_pretty(&config)?)?;
        let mut command = Command::new(bin.join("kube-proxy"));
        command.arg(format!("--config={}", config_file.display()));
        self.spawn("kube-proxy", command, &dir.join("kube-proxy.log"), Signal::SIGTERM)
    }

    async fn wait_containerd(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_running()?;
            let answered = Command::new("ctr")
                .arg("--address")
                .arg(&self.info.containerd)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if answered {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(Error::Setup(format!(
                    "containerd did not answer on {} within {}s",
                    self.info.containerd.display(),
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the Node reports Ready, failing early if one of the node's processes exits.
    async fn wait_ready(&mut self, client: &kube::Client, timeout: Duration) -> Result<()> {
        let nodes: Api<NodeObject> = Api::all(client.clone());
        let started = Instant::now();
        loop {
            self.check_running()?;
            let node = nodes.get_opt(NODE_NAME).await?;
            let ready = node
                .as_ref()
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            if ready.is_some_and(|c| c.status == "True") {
                return Ok(());
            }
            if started.elapsed() > timeout {
                let why = match ready {
                    Some(c) => format!("Ready is {}: {}", c.status, c.message.clone().unwrap_or_default()),
                    None if node.is_some() => "it has no Ready condition".to_owned(),
                    None => "the kubelet has not registered it".to_owned(),
                };
                let kubelet = self.processes.iter().find(|(p, _)| p.name == "kubelet");
                let problem = format!(
                    "did not make Node {NODE_NAME} Ready within {}s ({why})",
                    timeout.as_secs()
                );
                return Err(match kubelet {
                    Some((process, _)) => process.error(problem),
                    None => Error::Setup(problem),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `Ok` while every process of the node runs.
    pub fn check_running(&mut self) -> Result<()> {
        for (process, _) in &mut self.processes {
            process.check_running()?;
        }
        Ok(())
    }

    /// Stops the node and removes everything it made: its processes and pods, mounts, bridge, iptables chains,
    /// cgroups and folder; the sysctls get their earlier values back.
    pub fn stop(&mut self) {
        let started = Instant::now();
        // The kubelet first, so that it does not restart what is being removed; containerd last.
        for (process, signal) in self.processes.iter_mut().rev() {
            process.stop(*signal, Duration::from_secs(10));
        }
        self.processes.clear();
        let problems = clean_host();
        let unremoved: Vec<&String> = problems.iter().filter(|p| p.starts_with("could not")).collect();
        if unremoved.is_empty() {
            eprintln!("airq-testenv: test node removed in {:.1?}", started.elapsed());
        } else {
            eprintln!(
                "airq-testenv: the test node was removed in {:.1?}, except: {}",
                started.elapsed(),
                unremoved.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
            );
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.processes.is_empty() {
            self.stop();
        }
    }
}

/// The MTU of the pods' interfaces: that of the machine's interface to its default route (1400 here), so that
/// full-sized packets leaving through it are not lost; 1500 when it cannot be read.
fn pod_mtu() -> u32 {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&"00000000")).then(|| fields[0].to_owned())
        })
        .find_map(|device| std::fs::read_to_string(format!("/sys/class/net/{device}/mtu")).ok())
        .and_then(|mtu| mtu.trim().parse().ok())
        .unwrap_or(1500)
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(io(format!("cannot write {}", path.display())))
}

fn install_packages(log: &Path) -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    crate::debian::install(&missing, "the test node needs a container runtime and CNI plugins", log)
}

/// Takes the machine's node lock, waiting for another run's node to stop.
fn take_host_lock() -> Result<File> {
    let state = Path::new(HOST_STATE);
    std::fs::create_dir_all(state).map_err(io(format!("cannot create {HOST_STATE}")))?;
    let path = state.join("lock");
    let lock = File::create(&path).map_err(io(format!("cannot create {}", path.display())))?;
    let started = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < Duration::from_secs(600) => {
                if started.elapsed() < Duration::from_secs(1) {
                    eprintln!("airq-testenv: another test run has the machine's node; waiting for it to stop");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Setup(format!(
                    "another test run held the machine's node ({}) for 10 minutes; one node per machine",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::Io {
                    what: format!("cannot lock {}", path.display()),
                    source: e,
                });
            }
        }
    }
}

fn record_path() -> PathBuf {
    Path::new(HOST_STATE).join("record.json")
}

fn write_record(record: &HostRecord) -> Result<()> {
    let path = record_path();
    let staging = path.with_extension("tmp");
    write(&staging, &serde_json::to_string_pretty(record)?)?;
    std::fs::rename(&staging, &path).map_err(io(format!("cannot write {}", path.display())))
}

fn read_sysctl(name: &str) -> Result<String> {
    let path = Path::new("/proc/sys").join(name);
    Ok(std::fs::read_to_string(&path)
        .map_err(io(format!("cannot read {}", path.display())))?
        .trim()
        .to_owned())
}

fn write_sysctl(name: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(name);
    std::fs::write(&path, value).map_err(io(format!("cannot set {} to {value}", path.display())))
}

/// The pause image's OCI archive, made once per run from `tests/tools/pause/pause.c`.
fn pause_image(dir: &Path) -> Result<PathBuf> {
    let work = dir.join("pause");
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io(format!("cannot create {}", rootfs.display())))?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/pause/pause.c");
    let log = work.join("build.log");
    let mut gcc = Command::new("gcc");
    gcc.args(["-static", "-O2", "-o"])
        .arg(rootfs.join("pause"))
        .arg(&source);
    run_to_completion(gcc, &log)?;
    let layout = work.join("oci");
    let image = format!("{}:1", layout.display());
    let steps: [&[&str]; 4] = [
        &["init", "--layout", &layout.to_string_lossy()],
        &["new", "--image", &image],
        &["insert", "--image", &image, &rootfs.to_string_lossy(), "/"],
        &[
            "config",
            "--image",
            &image,
            "--config.entrypoint",
            "/pause",
            "--config.user",
            "65535:65535",
        ],
    ];
    for args in steps {
        let mut umoci = Command::new("umoci");
        umoci.args(args);
        run_to_completion(umoci, &work.join(format!("umoci-{}.log", args[0])))?;
    }
    let archive = work.join("pause.tar");
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(&layout).arg("-cf").arg(&archive).arg(".");
    run_to_completion(tar, &work.join("tar.log"))?;
    Ok(archive)
}

/// Imports the OCI archive `archive`, whose one image is tagged with `name`'s tag, as `name` into containerd's
/// Kubernetes namespace.
pub fn import_image(containerd: &Path, archive: &Path, name: &str, log: &Path) -> Result<()> {
    let base = name.rsplit_once(':').map_or(name, |(base, _)| base);
    let mut ctr = Command::new("ctr");
    ctr.arg("--address")
        .arg(containerd)
        .args(["--namespace", "k8s.io", "images", "import", "--base-name", base])
        .arg(archive);
    run_to_completion(ctr, log)
}

/// Lets the DNS server's user read what it answers for, as CoreDNS's own ClusterRole does in a cluster.
async fn allow_dns_server(client: &kube::Client) -> Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::{Patch, PatchParams};
    let params = PatchParams::apply("airq-testenv").force();
    let role: ClusterRole = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": DNS_USER },
        "rules": [
            { "apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"] },
            { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"] },
        ],
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .patch(DNS_USER, &params, &Patch::Apply(&role))
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": { "name": DNS_USER },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": DNS_USER },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": DNS_USER }],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(DNS_USER, &params, &Patch::Apply(&binding))
        .await?;
    Ok(())
}

/// Removes what a node left on this machine — the recorded one's processes, pods, mounts and folder, and any
/// node's bridge, chains and cgroups — and restores the recorded sysctls. Returns what it found and removed, and
/// what it could not remove (those start with "could not").
pub fn clean_host() -> Vec<String> {
    let record: HostRecord = std::fs::read_to_string(record_path())
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let mut report = Vec::new();
    let cgroups = kubepods_cgroups();
    // Every container first (they are in the kubelet's cgroups), then the node's own processes and the shims.
    let killed = kill_cgroup_processes(&cgroups);
    if killed > 0 {
        report.push(format!("{killed} container processes"));
    }
    if !record.dir.as_os_str().is_empty() {
        let killed = kill_processes_naming(&record.dir);
        if killed > 0 {
            report.push(format!("{killed} node processes"));
        }
        match unmount_under(&record.dir) {
            Ok(0) => {}
            Ok(count) => report.push(format!("{count} mounts")),
            Err(e) => report.push(format!(
                "could not unmount everything under {}: {e}",
                record.dir.display()
            )),
        }
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        match Command::new("ip").args(["link", "delete", BRIDGE]).output() {
            Ok(out) if out.status.success() => report.push(format!("the bridge {BRIDGE}")),
            Ok(out) => report.push(format!(
                "could not delete the bridge {BRIDGE}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => report.push(format!("could not delete the bridge {BRIDGE}: {e}")),
        }
    }
    for tool in ["iptables", "ip6tables"] {
        match remove_chains(tool) {
            Ok(0) => {}
            Ok(count) => report.push(format!("{count} {tool} chains")),
            Err(e) => report.push(format!("could not remove the {tool} chains: {e}")),
        }
    }
    let removed = remove_cgroups(&cgroups);
    match removed {
        Ok(0) => {}
        Ok(count) => report.push(format!("{count} cgroups")),
        Err(e) => report.push(format!("could not remove the kubelet's cgroups: {e}")),
    }
    match remove_dead_shim_sockets(record.shim_root_existed) {
        Ok(0) => {}
        Ok(count) => report.push(format!("{count} shim sockets")),
        Err(e) => report.push(format!("could not remove the shims' sockets: {e}")),
    }
    for (name, value) in &record.sysctls {
        if read_sysctl(name).ok().as_deref() != Some(value.as_str()) {
            match write_sysctl(name, value) {
                Ok(()) => report.push(format!("{name} back to {value}")),
                Err(e) => report.push(format!("could not restore {name}: {e}")),
            }
        }
    }
    if !record.dir.as_os_str().is_empty() && record.dir.exists() {
        // Only a folder with nothing mounted under it is removed: a removal must never reach into a mount.
        match mounts_under(&record.dir) {
            Ok(mounts) if mounts.is_empty() => {
                if let Err(e) = std::fs::remove_dir_all(&record.dir) {
                    report.push(format!("could not remove {}: {e}", record.dir.display()));
                }
            }
            Ok(mounts) => report.push(format!(
                "could not remove {}: {} mounts remain under it",
                record.dir.display(),
                mounts.len()
            )),
            Err(e) => report.push(format!("could not remove {}: {e}", record.dir.display())),
        }
    }
    let _ = std::fs::remove_file(record_path());
    report
}

/// Every cgroup folder named `kubepods` at the top of a cgroup hierarchy (the kubelet's, with the cgroupfs driver).
fn kubepods_cgroups() -> Vec<PathBuf> {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    hierarchies
        .flatten()
        .map(|h| h.path().join("kubepods"))
        .filter(|p| p.is_dir())
        .collect()
}

/// The cgroup folders under `root`, deepest first.
fn cgroup_tree(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        found.push(dir);
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Kills every process in the given cgroup trees, until none is left (or 10 s passed); returns how many.
fn kill_cgroup_processes(roots: &[PathBuf]) -> usize {
    let mut killed = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = 0;
        for root in roots {
            for dir in cgroup_tree(root) {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    left += 1;
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                    killed.insert(pid);
                }
            }
        }
        if left == 0 || Instant::now() > deadline {
            return killed.len();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills every process whose command line names `dir` (the node's daemons and containerd's shims); returns how
/// many.
fn kill_processes_naming(dir: &Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    let own = std::process::id();
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == own {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            let pid = nix::unistd::Pid::from_raw(pid.cast_signed());
            if nix::sys::signal::kill(pid, Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
    }
    if killed > 0 {
        // Give the kernel a moment to reap them before their mounts are taken away.
        std::thread::sleep(Duration::from_millis(300));
    }
    killed
}

/// The mount points under `dir`, from this process's mount table.
fn mounts_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let prefix = dir.to_string_lossy().into_owned();
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|point| point == &prefix || point.starts_with(&format!("{prefix}/")))
        .map(PathBuf::from)
        .collect())
}

/// The kernel writes spaces, tabs, newlines and backslashes of mount points as octal escapes.
fn unescape_mount_path(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Unmounts everything under `dir`, deepest first (lazily: a mount still busy goes once its users are gone);
/// returns how many.
fn unmount_under(dir: &Path) -> std::result::Result<usize, String> {
    let mut count = 0;
    for _round in 0..5 {
        let mut mounts = mounts_under(dir).map_err(|e| e.to_string())?;
        if mounts.is_empty() {
            return Ok(count);
        }
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in mounts {
            if nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH).is_ok() {
                count += 1;
            }
        }
    }
    let left = mounts_under(dir).map_err(|e| e.to_string())?;
    if left.is_empty() {
        Ok(count)
    } else {
        Err(format!("{} remain, e.g. {}", left.len(), left[0].display()))
    }
}

/// Removes the node's iptables chains (names starting with [`CHAIN_PREFIXES`]) from every table, with the rules
/// of other chains that jump to them; returns how many chains.
fn remove_chains(tool: &str) -> std::result::Result<usize, String> {
    let ours = |chain: &str| CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p));
    let mut removed = 0;
    for table in ["filter", "nat", "mangle", "raw"] {
        let listing = Command::new(tool)
            .args(["-w", "-t", table, "-S"])
            .output()
            .map_err(|e| format!("cannot run {tool}: {e}"))?;
        if !listing.status.success() {
            // A table this kernel or this tool does not have.
            continue;
        }
        let text = String::from_utf8_lossy(&listing.stdout).into_owned();
        let mut chains = Vec::new();
        for line in text.lines() {
            let Some(words) = shlex::split(line) else {
                continue;
            };
            match words.first().map(String::as_str) {
                Some("-N") if words.get(1).is_some_and(|c| ours(c)) => chains.push(words[1].clone()),
                Some("-A") => {
                    let chain = words.get(1).map(String::as_str).unwrap_or_default();
                    let target = words
                        .iter()
                        .position(|w| w == "-j" || w == "-g")
                        .and_then(|i| words.get(i + 1));
                    if !ours(chain) && target.is_some_and(|t| ours(t)) {
                        let status = Command::new(tool)
                            .args(["-w", "-t", table, "-D"])
                            .args(&words[1..])
                            .status()
                            .map_err(|e| format!("cannot run {tool}: {e}"))?;
                        if !status.success() {
                            return Err(format!("{tool} -t {table} -D {} failed", words[1..].join(" ")));
                        }
                    }
                }
                _ => {}
            }
        }
        // Every chain emptied first: then none is referenced and each can go.
        for chain in &chains {
            let _ = Command::new(tool).args(["-w", "-t", table, "-F", chain]).status();
        }
        for chain in &chains {
            let status = Command::new(tool)
                .args(["-w", "-t", table, "-X", chain])
                .status()
                .map_err(|e| format!("cannot run {tool}: {e}"))?;
            if !status.success() {
                return Err(format!("{tool} -t {table} -X {chain} failed"));
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes the sockets under [`SHIM_ROOT`]`/s` that no process listens on any more (the shims were killed), and
/// the folders if the node made them; returns how many sockets.
fn remove_dead_shim_sockets(root_existed: bool) -> std::result::Result<usize, String> {
    let sockets = Path::new(SHIM_ROOT).join("s");
    let Ok(entries) = std::fs::read_dir(&sockets) else {
        return Ok(0);
    };
    // Bound sockets, by path: the last column of /proc/net/unix.
    let bound: std::collections::HashSet<String> = std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(7).map(str::to_owned))
        .collect();
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if !bound.contains(path.to_string_lossy().as_ref()) {
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            removed += 1;
        }
    }
    if !root_existed {
        // Only empty folders go; anything another containerd keeps there stays.
        let _ = std::fs::remove_dir(&sockets);
        let _ = std::fs::remove_dir(SHIM_ROOT);
    }
    Ok(removed)
}

/// Removes the kubelet's cgroup folders, deepest first; returns how many.
fn remove_cgroups(roots: &[PathBuf]) -> std::result::Result<usize, String> {
    let mut removed = 0;
    let mut failed = Vec::new();
    for root in roots {
        for dir in cgroup_tree(root) {
            match std::fs::remove_dir(&dir) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failed.push(format!("{}: {e}", dir.display())),
            }
        }
    }
    if failed.is_empty() {
        Ok(removed)
    } else {
        Err(failed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped_as_the_kernel_escapes_them() {
        assert_eq!(unescape_mount_path("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/plain/path"), "/plain/path");
        assert_eq!(unescape_mount_path("/odd\\x"), "/odd\\x");
    }
}
