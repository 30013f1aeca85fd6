//! A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
//! started the way controller-runtime's envtest does it — a private CA, serving and client certificates, a
//! service-account key pair, Node and RBAC authorization and an admin kubeconfig (group `system:masters`).
//! kube-controller-manager makes it a cluster rather than a bare API: Deployments get ReplicaSets, CronJobs get Jobs,
//! owners' deletion is cascaded; the scheduler binds pods to a node. The API server listens on every address and
//! advertises this machine's own address, so that pods on the test node ([`crate::node`]) reach it through the
//! `kubernetes` Service; the certificates the node's parts use are made here with the cluster's CA.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use nix::sys::signal::Signal;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use serde_json::json;

use crate::error::{Error, Result, io};
use crate::process::{ServerProcess, free_port};

/// The network the API server hands Service cluster IPs out of: part of 198.18.0.0/15, which is reserved for
/// benchmarking and routed nowhere, so test traffic to it never leaves this machine.
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// The first address of that range, which the `kubernetes` Service gets and the serving certificate names.
pub const KUBERNETES_SERVICE_IP: &str = "198.19.0.1";
/// The test node's name, as its kubelet registers it.
pub const NODE_NAME: &str = "airq-node";

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// The admin kubeconfig (a client certificate in group `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// This machine's address, which the API server advertises (the `kubernetes` Service's endpoint) and the node
    /// registers with; `None` where the machine has no address but loopback (then no node can join).
    pub address: Option<Ipv4Addr>,
    /// Kubeconfigs and certificates for the node's parts, signed by the cluster's CA.
    pub node_identities: NodeIdentities,
    etcd: ServerProcess,
    apiserver: ServerProcess,
    controller_manager: ServerProcess,
    scheduler: ServerProcess,
}

/// What the test node's parts authenticate with, in the control plane's folder.
#[derive(Debug, Clone)]
pub struct NodeIdentities {
    /// The cluster's CA certificate (clients' certificates are checked against it).
    pub ca_cert: PathBuf,
    /// The kubelet's kubeconfig: user `system:node:<NODE_NAME>` in group `system:nodes`.
    pub kubelet: PathBuf,
    /// The kubelet's serving certificate and key (the node's address and name).
    pub kubelet_serving: (PathBuf, PathBuf),
    /// kube-proxy's kubeconfig: user `system:kube-proxy`, bound to `system:node-proxier` by the bootstrap RBAC.
    pub kube_proxy: PathBuf,
    /// The cluster DNS server's kubeconfig: user [`DNS_USER`], allowed to watch what it answers for.
    pub dns: PathBuf,
}

/// The user the cluster DNS server acts as.
pub const DNS_USER: &str = "airq-test:dns";

/// The control plane's PKI.
struct Pki {
    ca_cert: PathBuf,
    ca_pem: String,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    /// The API server's client certificate towards kubelets (logs, exec, port-forward).
    kubelet_client: (PathBuf, PathBuf),
    admin: (String, String),
    controller_manager: (String, String),
    scheduler: (String, String),
    kubelet: (String, String),
    kubelet_serving: (PathBuf, PathBuf),
    kube_proxy: (String, String),
    dns: (String, String),
    service_account_key: PathBuf,
    service_account_public_key: PathBuf,
}

/// This machine's IPv4 address on the interface of its default route, if it has one. A connected UDP socket
/// only asks the kernel for a route: nothing is sent.
pub fn host_address() -> Option<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    // An address of TEST-NET-3 (documentation only): any address outside this machine picks the default route.
    socket.connect(("203.0.113.1", 9)).ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(address) if !address.is_loopback() && !address.is_unspecified() => Some(address),
        _ => None,
    }
}

impl ControlPlane {
    /// Builds the binaries if needed, then starts etcd, kube-apiserver and kube-controller-manager under `dir`, and
    /// returns once the API server is ready and the controller manager is acting on it.
    pub async fn start(dir: &Path) -> Result<Self> {
        let bin = tokio::task::spawn_blocking(crate::tools::kubernetes_binaries)
            .await
            .map_err(|e| Error::Setup(format!("building the control plane panicked: {e}")))??;
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let address = host_address();
        let pki = Pki::create(&dir.join("pki"), address)?;

        let mut etcd = start_etcd(&bin, dir).await?;
        let etcd_url = etcd.1.clone();
        let (mut apiserver, port) = match start_apiserver(&bin, dir, &pki, &etcd_url, address).await {
            Ok(started) => started,
            Err(err) => {
                etcd.0.stop(Signal::SIGTERM, Duration::from_secs(5));
                return Err(err);
            }
        };
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki.ca_pem, &pki.admin, "airq-test-admin")?;
        let kcm_kubeconfig = dir.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &server,
            &pki.ca_pem,
            &pki.controller_manager,
            "system:kube-controller-manager",
        )?;

        let mut kcm = Command::new(bin.join("kube-controller-manager"));
        kcm.arg(format!("--kubeconfig={}", kcm_kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", kcm_kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", kcm_kubeconfig.display()))
            .arg("--secure-port=0")
            .arg("--leader-elect=false")
            // Each controller acts as its own service account, under the RBAC roles Kubernetes bootstraps for it.
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.service_account_key.display()
            ))
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg("--cluster-name=airq-test")
            .arg("--controllers=*");
        let controller_manager = ServerProcess::spawn(
            "kube-controller-manager",
            kcm,
            &dir.join("kube-controller-manager.log"),
            Signal::SIGKILL,
        )?;
        let scheduler_kubeconfig = dir.join("scheduler.kubeconfig");
        write_kubeconfig(
            &scheduler_kubeconfig,
            &server,
            &pki.ca_pem,
            &pki.scheduler,
            "system:kube-scheduler",
        )?;
        let mut scheduler = Command::new(bin.join("kube-scheduler"));
        scheduler
            .arg(format!("--kubeconfig={}", scheduler_kubeconfig.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                scheduler_kubeconfig.display()
            ))
            .arg(format!("--authorization-kubeconfig={}", scheduler_kubeconfig.display()))
            .arg("--secure-port=0")
            .arg("--leader-elect=false");
        let scheduler = ServerProcess::spawn(
            "kube-scheduler",
            scheduler,
            &dir.join("kube-scheduler.log"),
            Signal::SIGKILL,
        )?;
        let node_identities = pki.node_identities(dir, &server)?;
        let mut plane = Self {
            kubeconfig,
            server,
            address,
            node_identities,
            etcd: etcd.0,
            apiserver: {
                apiserver.check_running()?;
                apiserver
            },
            controller_manager,
            scheduler,
        };
        if let Err(err) = plane.wait_controllers_acting(Duration::from_secs(90)).await {
            plane.stop();
            return Err(err);
        }
        Ok(plane)
    }

    /// Waits until the service-account controller has created `default/default`: the controller manager is
    /// connected, authorised and running its controllers.
    async fn wait_controllers_acting(&mut self, timeout: Duration) -> Result<()> {
        let client = client_from(&self.kubeconfig).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        let started = Instant::now();
        loop {
            self.controller_manager.check_running()?;
            self.scheduler.check_running()?;
            self.apiserver.check_running()?;
            if accounts.get_opt("default").await?.is_some() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(self.controller_manager.error(format!(
                    "did not create the default ServiceAccount within {}s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the scheduler, the controller manager, the API server and etcd, in that order.
    pub fn stop(&mut self) {
        self.scheduler.stop(Signal::SIGTERM, Duration::from_secs(5));
        self.controller_manager.stop(Signal::SIGTERM, Duration::from_secs(5));
        self.apiserver.stop(Signal::SIGTERM, Duration::from_secs(10));
        self.etcd.stop(Signal::SIGTERM, Duration::from_secs(5));
    }
}

/// A client for the cluster `kubeconfig` describes.
pub async fn client_from(kubeconfig: &Path) -> Result<kube::Client> {
    let config = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn start_etcd(bin: &Path, dir: &Path) -> Result<(ServerProcess, String)> {
    let log = dir.join("etcd.log");
    let http = crate::http_client();
    let mut last_error = None;
    for _attempt in 0..3 {
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data = dir.join("etcd-data");
        let _ = std::fs::remove_dir_all(&data);
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.arg("--name=airq-test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=airq-test={peer_url}"))
            // A throw-away store: skipping fsync makes every write of the tests much faster.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let mut process = ServerProcess::spawn("etcd", etcd, &log, Signal::SIGTERM)?;
        let started = Instant::now();
        let outcome = loop {
            if let Err(err) = process.check_running() {
                break Err(err);
            }
            let healthy = match http.get(format!("{client_url}/health")).send().await {
                Ok(response) => response
                    .text()
                    .await
                    .is_ok_and(|body| body.contains("\"health\":\"true\"")),
                Err(_) => false,
            };
            if healthy {
                break Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                break Err(process.error(format!("is not healthy at {client_url}/health after 30s")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match outcome {
            Ok(()) => return Ok((process, client_url)),
            Err(err) => {
                process.stop(Signal::SIGTERM, Duration::from_secs(2));
                if !process.failed_on_taken_port() {
                    return Err(err);
                }
                last_error = Some(err);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| Error::Setup("etcd did not start".to_owned())))
}

async fn start_apiserver(
    bin: &Path,
    dir: &Path,
    pki: &Pki,
    etcd_url: &str,
    address: Option<Ipv4Addr>,
) -> Result<(ServerProcess, u16)> {
    let log = dir.join("kube-apiserver.log");
    let mut last_error = None;
    for _attempt in 0..3 {
        let port = free_port()?;
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", dir.join("apiserver-certs").display()))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!("--tls-private-key-file={}", pki.serving_key.display()))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.service_account_public_key.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.service_account_key.display()
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            // Node: kubelets read only what their pods need; NodeRestriction: they change only their own objects.
            .arg("--authorization-mode=Node,RBAC")
            .arg("--enable-admission-plugins=NodeRestriction")
            .arg(format!(
                "--kubelet-client-certificate={}",
                pki.kubelet_client.0.display()
            ))
            .arg(format!("--kubelet-client-key={}", pki.kubelet_client.1.display()))
            // The node's name resolves nowhere: logs and exec go to its address.
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg("--allow-privileged=true");
        match address {
            // Pods reach the API server through the `kubernetes` Service, whose endpoint is the advertised address.
            Some(address) => apiserver
                .arg("--bind-address=0.0.0.0")
                .arg(format!("--advertise-address={address}")),
            // The `kubernetes` Service cannot point at a loopback address, and without an address no node joins.
            None => apiserver
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg("--endpoint-reconciler-type=none"),
        };
        // SIGKILL when the test process dies: on SIGTERM kube-apiserver shuts down gracefully, which can wait forever
        // for an etcd that died with the same process.
        let mut process = ServerProcess::spawn("kube-apiserver", apiserver, &log, Signal::SIGKILL)?;
        match wait_apiserver_ready(&mut process, port, pki, Duration::from_secs(90)).await {
            Ok(()) => return Ok((process, port)),
            Err(err) => {
                process.stop(Signal::SIGTERM, Duration::from_secs(5));
                if !process.failed_on_taken_port() {
                    return Err(err);
                }
                last_error = Some(err);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| Error::Setup("kube-apiserver did not start".to_owned())))
}

async fn wait_apiserver_ready(process: &mut ServerProcess, port: u16, pki: &Pki, timeout: Duration) -> Result<()> {
    let probe_config = process.log.with_extension("probe.kubeconfig");
    write_kubeconfig(
        &probe_config,
        &format!("https://127.0.0.1:{port}"),
        &pki.ca_pem,
        &pki.admin,
        "probe",
    )?;
    let client = client_from(&probe_config).await?;
    let started = Instant::now();
    loop {
        process.check_running()?;
        let last = match client.request_text(http_get("/readyz?verbose")?).await {
            Ok(_) => return Ok(()),
            Err(err) => err.to_string(),
        };
        if started.elapsed() > timeout {
            return Err(process.error(format!(
                "is not ready on 127.0.0.1:{port} after {}s (last answer: {last})",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn http_get(path: &str) -> Result<http::Request<Vec<u8>>> {
    http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| Error::Setup(format!("cannot build a request for {path}: {e}")))
}

fn write_kubeconfig(path: &Path, server: &str, ca_pem: &str, identity: &(String, String), user: &str) -> Result<()> {
    let (cert_pem, key_pem) = identity;
    // JSON is YAML, and every kubeconfig reader accepts it.
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "airq-test", "cluster": {
            "server": server,
            "certificate-authority-data": BASE64.encode(ca_pem),
        }}],
        "users": [{ "name": user, "user": {
            "client-certificate-data": BASE64.encode(cert_pem),
            "client-key-data": BASE64.encode(key_pem),
        }}],
        "contexts": [{ "name": "airq-test", "context": { "cluster": "airq-test", "user": user, "namespace": "default" }}],
        "current-context": "airq-test",
    });
    write_private(path, &serde_json::to_string_pretty(&config)?)
}

/// Writes a file only its owner can read (keys and kubeconfigs).
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot write {}", path.display())))?;
    file.write_all(contents.as_bytes())
        .map_err(io(format!("cannot write {}", path.display())))
}

impl Pki {
    fn create(dir: &Path, address: Option<Ipv4Addr>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name.push(DnType::CommonName, "airq-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca_params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |common_name: &str,
                    organization: Option<&str>,
                    usage: ExtendedKeyUsagePurpose,
                    sans: Vec<SanType>|
         -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, common_name);
            if let Some(organization) = organization {
                params.distinguished_name.push(DnType::OrganizationName, organization);
            }
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            params.extended_key_usages = vec![usage];
            params.subject_alt_names = sans;
            Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
        };
        let dns = |name: &str| -> Result<SanType> { Ok(SanType::DnsName(name.try_into()?)) };
        let mut serving_sans = vec![
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            SanType::IpAddress(
                KUBERNETES_SERVICE_IP
                    .parse()
                    .map_err(|e| Error::Setup(format!("bad service IP: {e}")))?,
            ),
        ];
        if let Some(address) = address {
            serving_sans.push(SanType::IpAddress(address.into()));
        }
        for name in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            serving_sans.push(dns(name)?);
        }
        let serving = leaf(
            "kube-apiserver",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
            serving_sans,
        )?;
        let admin = leaf(
            "airq-test-admin",
            Some("system:masters"),
            ExtendedKeyUsagePurpose::ClientAuth,
            vec![],
        )?;
        let controller_manager = leaf(
            "system:kube-controller-manager",
            None,
            ExtendedKeyUsagePurpose::ClientAuth,
            vec![],
        )?;
        let scheduler = leaf(
            "system:kube-scheduler",
            None,
            ExtendedKeyUsagePurpose::ClientAuth,
            vec![],
        )?;
        // The API server talks to kubelets as a cluster administrator (kubelets authorise it with the API server).
        let kubelet_client = leaf(
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            ExtendedKeyUsagePurpose::ClientAuth,
            vec![],
        )?;
        let kubelet = leaf(
            &format!("system:node:{NODE_NAME}"),
            Some("system:nodes"),
            ExtendedKeyUsagePurpose::ClientAuth,
            vec![],
        )?;
        let mut kubelet_sans = vec![
            dns(NODE_NAME)?,
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        ];
        if let Some(address) = address {
            kubelet_sans.push(SanType::IpAddress(address.into()));
        }
        let kubelet_serving = leaf(NODE_NAME, None, ExtendedKeyUsagePurpose::ServerAuth, kubelet_sans)?;
        let kube_proxy = leaf("system:kube-proxy", None, ExtendedKeyUsagePurpose::ClientAuth, vec![])?;
        let dns_identity = leaf(DNS_USER, None, ExtendedKeyUsagePurpose::ClientAuth, vec![])?;
        let service_account = KeyPair::generate()?;

        let ca_cert = dir.join("ca.crt");
        let serving_cert = dir.join("apiserver.crt");
        let serving_key = dir.join("apiserver.key");
        let sa_key = dir.join("service-account.key");
        let sa_public_key = dir.join("service-account.pub");
        write_private(&ca_cert, &ca_pem)?;
        write_private(&serving_cert, &serving.0)?;
        write_private(&serving_key, &serving.1)?;
        write_private(&sa_key, &service_account.serialize_pem())?;
        write_private(&sa_public_key, &service_account.public_key_pem())?;
        let write_pair = |name: &str, (cert, key): (String, String)| -> Result<(PathBuf, PathBuf)> {
            let paths = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
            write_private(&paths.0, &cert)?;
            write_private(&paths.1, &key)?;
            Ok(paths)
        };
        Ok(Self {
            ca_cert,
            ca_pem,
            serving_cert,
            serving_key,
            kubelet_client: write_pair("apiserver-kubelet-client", kubelet_client)?,
            admin,
            controller_manager,
            scheduler,
            kubelet,
            kubelet_serving: write_pair("kubelet-serving", kubelet_serving)?,
            kube_proxy,
            dns: dns_identity,
            service_account_key: sa_key,
            service_account_public_key: sa_public_key,
        })
    }

    /// Writes the node parts' kubeconfigs into `dir`.
    fn node_identities(&self, dir: &Path, server: &str) -> Result<NodeIdentities> {
        let kubeconfig = |name: &str, identity: &(String, String), user: &str| -> Result<PathBuf> {
            let path = dir.join(format!("{name}.kubeconfig"));
            write_kubeconfig(&path, server, &self.ca_pem, identity, user)?;
            Ok(path)
        };
        Ok(NodeIdentities {
            ca_cert: self.ca_cert.clone(),
            kubelet: kubeconfig("kubelet", &self.kubelet, &format!("system:node:{NODE_NAME}"))?,
            kubelet_serving: self.kubelet_serving.clone(),
            kube_proxy: kubeconfig("kube-proxy", &self.kube_proxy, "system:kube-proxy")?,
            dns: kubeconfig("dns", &self.dns, DNS_USER)?,
        })
    }
}

/// Applies `crds` (once per test process) and waits until each is Established and so served.
pub async fn install_crds(
    client: &kube::Client,
    crds: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::runtime::wait::{await_condition, conditions};
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_try_init(|| async {
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            for crd in crds {
                let name = crd.name_any();
                api.patch(&name, &PatchParams::apply("airq-tests").force(), &Patch::Apply(&crd))
                    .await?;
                tokio::time::timeout(
                    Duration::from_secs(30),
                    await_condition(api.clone(), &name, conditions::is_crd_established()),
                )
                .await??;
            }
            anyhow::Ok(())
        })
        .await?;
    Ok(())
}

/// A namespaced Kubernetes resource with a static type, readable from YAML: what the tests create.
pub trait Namespaced:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
{
}

/// Creates the namespaced object described by `yaml` in `namespace`.
pub async fn create<K: Namespaced>(client: &kube::Client, namespace: &str, yaml: &str) -> anyhow::Result<K> {
    let object: K = serde_saphyr::from_str(yaml)?;
    Ok(Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await?)
}
