//! What tests share when airq's own pods run on the test node: a database the pods reach (the test PostgreSQL, as a
//! database outside the cluster), and files served to them over HTTP (what a load reads).

use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::error::{Error, Result};
use crate::{TestDatabase, node, postgres};

/// The name of the Service, and of the Secret, through which a test namespace's pods reach their database: the
/// Secret airq's resources read by default.
pub const DATABASE: &str = "airq-database";

/// A fresh database for the pods of a test namespace.
#[derive(Debug)]
pub struct PodDatabase {
    /// The database, as the test reaches it (loopback, no password).
    pub test: TestDatabase,
    /// Its URL as pods reach it: `airq-database.<namespace>.svc:5432`, with the password.
    pub url: String,
}

/// Creates a database for the pods of namespace `ns`: a fresh database on the test server; the Service
/// `airq-database` without a selector and its EndpointSlice, which lead to the server on this machine's address (as
/// docs/cluster.md shows for a database outside the cluster); and the Secret `airq-database` with its `url` and a
/// `keyHashSecret` for the gateway.
pub async fn pod_database(client: &kube::Client, ns: &str) -> Result<PodDatabase> {
    node().await?;
    let server = postgres().await?;
    let address = server.pod_address.ok_or_else(|| {
        Error::Setup("the test PostgreSQL does not listen on this machine's address: pods cannot reach it".to_owned())
    })?;
    let test = crate::database().await?;
    let params = PostParams::default();
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": DATABASE },
        "spec": { "ports": [{ "name": "postgres", "port": 5432, "targetPort": server.port, "protocol": "TCP" }] },
    }))?;
    let service = Api::<Service>::namespaced(client.clone(), ns)
        .create(&params, &service)
        .await?;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {
            "name": DATABASE,
            "labels": {
                "kubernetes.io/service-name": DATABASE,
                "endpointslice.kubernetes.io/managed-by": "airq-testenv",
            },
        },
        "addressType": "IPv4",
        "ports": [{ "name": "postgres", "port": server.port, "protocol": "TCP" }],
        "endpoints": [{ "addresses": [address.to_string()], "conditions": { "ready": true } }],
    }))?;
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&params, &slice)
        .await?;
    // kube-proxy writes the Service's rules a moment after it appears; until then a pod's connection to it finds no
    // route. Pods are started only once it answers.
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    crate::eventually(
        &format!("the Service {DATABASE} at {cluster_ip}:5432 answers"),
        std::time::Duration::from_secs(30),
        || async {
            tokio::net::TcpStream::connect((cluster_ip.as_str(), 5432))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await?;
    let url = server.pod_url_for(&format!("{DATABASE}.{ns}.svc"), 5432, &test.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": DATABASE },
        "stringData": { "url": url, "keyHashSecret": uuid::Uuid::new_v4().simple().to_string() },
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&params, &secret)
        .await?;
    Ok(PodDatabase { test, url })
}

/// Serves the files `names` of `folder` over HTTP on this machine's address, where pods reach it, with an index at
/// `/` written as a web server's directory listing; returns the folder's URL (ending in `/`). The server lives as
/// long as the test's runtime.
pub async fn serve_files(folder: PathBuf, names: Vec<String>) -> Result<String> {
    use axum::extract::Path as UrlPath;
    use axum::http::StatusCode;
    use axum::response::{Html, IntoResponse};
    let address = node().await?.address;
    let links: String = names
        .iter()
        .map(|name| format!("<li><a href=\"{name}\">{name}</a></li>\n"))
        .collect();
    let listing =
        format!("<html><body><h1>Index of /</h1><ul>\n<li><a href=\"../\">../</a></li>\n{links}</ul></body></html>");
    let app = axum::Router::new()
        .route("/", axum::routing::get(move || async move { Html(listing.clone()) }))
        .route(
            "/{file}",
            axum::routing::get(move |UrlPath(file): UrlPath<String>| {
                let path = names.contains(&file).then(|| folder.join(&file));
                async move {
                    match path {
                        Some(path) => match tokio::fs::read(path).await {
                            Ok(bytes) => bytes.into_response(),
                            Err(_) => StatusCode::NOT_FOUND.into_response(),
                        },
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((address, 0)))
        .await
        .map_err(crate::error::io(format!("cannot listen on {address}")))?;
    let local = listener
        .local_addr()
        .map_err(crate::error::io(format!("cannot listen on {address}")))?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{local}/"))
}

/// The Beijing files of `stations`, served to pods over HTTP (see [`serve_files`]); the folder's URL.
pub async fn serve_beijing(stations: &[&str]) -> Result<String> {
    let folder = crate::shared_data("beijing-multisite")?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&folder).map_err(crate::error::io(format!("cannot read {}", folder.display())))? {
        let name = entry
            .map_err(crate::error::io(format!("cannot read {}", folder.display())))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if stations.iter().any(|s| name.starts_with(&format!("PRSA_Data_{s}_"))) {
            names.push(name);
        }
    }
    if names.len() != stations.len() {
        return Err(Error::Setup(format!(
            "{} holds {names:?} for the stations {stations:?}",
            folder.display()
        )));
    }
    names.sort();
    serve_files(folder, names).await
}
