//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager on loopback, started
//! the way controller-runtime's envtest does it — a private CA, serving and client certificates, a service-account
//! key pair, RBAC authorization and an admin kubeconfig (group `system:masters`). kube-controller-manager makes it a
//! cluster rather than a bare API: Deployments get ReplicaSets, CronJobs get Jobs, owners' deletion is cascaded.
//! There is no kubelet or scheduler, so Pods are created but never run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use nix::sys::signal::Signal;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use serde_json::json;

use crate::error::{Error, Result, io};
use crate::process::{ServerProcess, free_port};

/// The network the API server hands Service cluster IPs out of.
const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/12";
/// The first address of that range, which the `kubernetes` Service gets and the serving certificate names.
const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// The admin kubeconfig (a client certificate in group `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    etcd: ServerProcess,
    apiserver: ServerProcess,
    controller_manager: ServerProcess,
}

/// The files of the control plane's PKI.
struct Pki {
    ca_cert: PathBuf,
    ca_pem: String,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin: (String, String),
    controller_manager: (String, String),
    service_account_key: PathBuf,
    service_account_public_key: PathBuf,
}

impl ControlPlane {
    /// Builds the binaries if needed, then starts etcd, kube-apiserver and kube-controller-manager under `dir`, and
    /// returns once the API server is ready and the controller manager is acting on it.
    pub async fn start(dir: &Path) -> Result<Self> {
        let bin = tokio::task::spawn_blocking(crate::tools::kubernetes_binaries)
            .await
            .map_err(|e| Error::Setup(format!("building the control plane panicked: {e}")))??;
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let pki = Pki::create(&dir.join("pki"))?;

        let mut etcd = start_etcd(&bin, dir).await?;
        let etcd_url = etcd.1.clone();
        let (mut apiserver, port) = match start_apiserver(&bin, dir, &pki, &etcd_url).await {
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
        let mut plane = Self {
            kubeconfig,
            server,
            etcd: etcd.0,
            apiserver: {
                apiserver.check_running()?;
                apiserver
            },
            controller_manager,
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

    /// Stops the controller manager, the API server and etcd, in that order.
    pub fn stop(&mut self) {
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

async fn start_apiserver(bin: &Path, dir: &Path, pki: &Pki, etcd_url: &str) -> Result<(ServerProcess, u16)> {
    let log = dir.join("kube-apiserver.log");
    let mut last_error = None;
    for _attempt in 0..3 {
        let port = free_port()?;
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--advertise-address=127.0.0.1")
            .arg("--bind-address=127.0.0.1")
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
            .arg(format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"))
            .arg("--authorization-mode=RBAC")
            .arg("--allow-privileged=true")
            // The `kubernetes` Service cannot point at a loopback address; nothing in the tests needs it to.
            .arg("--endpoint-reconciler-type=none");
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
    fn create(dir: &Path) -> Result<Self> {
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
        Ok(Self {
            ca_cert,
            ca_pem,
            serving_cert,
            serving_key,
            admin,
            controller_manager,
            service_account_key: sa_key,
            service_account_public_key: sa_public_key,
        })
    }
}
