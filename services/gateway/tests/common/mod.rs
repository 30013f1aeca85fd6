//! Shared set-up: real upstream HTTP servers (axum, on loopback) that record what reaches them, the gateway binary
//! started against a fresh PostgreSQL database with a route table file, and a raw HTTP/1.1 client for paths that an
//! ordinary client would clean up before sending.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airq_testenv::service::RunningService;
use axum::Router;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ADMIN_KEY: &str = "airq_bootstrap01_Xy9vQ3kP0sLm2Nw8Rt5Zb7Hc4Jd6Fg1A";
pub const HASH_SECRET: &str = "test-hash-secret-0123456789abcdef";

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HashMap<String, String>,
    pub body_len: usize,
}

/// An upstream HTTP server that echoes what it received and remembers it.
#[derive(Clone)]
pub struct Upstream {
    pub url: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub name: &'static str,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorder = seen.clone();
        let echo = move |request: Request| {
            let recorder = recorder.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
                let headers: HashMap<String, String> = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                let seen = Seen {
                    method: parts.method.to_string(),
                    path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                    headers: headers.clone(),
                    body_len: body.len(),
                };
                recorder.lock().unwrap().push(seen.clone());
                axum::Json(serde_json::json!({
                    "upstream": name,
                    "method": seen.method,
                    "pathAndQuery": seen.path_and_query,
                    "headers": headers,
                    "bodyLen": seen.body_len,
                }))
                .into_response()
            }
        };
        let app = Router::new()
            .route("/slow/{seconds}", get(slow))
            .route("/status/{code}", any(status))
            .route("/sse", get(sse))
            .route("/ws", get(websocket))
            .fallback(echo);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}"),
            addr,
            seen,
            name,
        }
    }

    pub fn hits(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn slow(Path(seconds): Path<f64>) -> &'static str {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    "slow answer"
}

async fn status(Path(code): Path<u16>) -> Response {
    (StatusCode::from_u16(code).unwrap(), format!("status {code}")).into_response()
}

/// Three events, 300 ms apart.
async fn sse() -> impl IntoResponse {
    let events = futures::stream::iter(0..3).then(|i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok::<_, std::convert::Infallible>(Event::default().data(format!("event {i}")))
    });
    Sse::new(events)
}

async fn websocket(upgrade: WebSocketUpgrade, headers: HeaderMap) -> Response {
    let user = headers
        .get("x-airq-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody")
        .to_owned();
    upgrade.on_upgrade(move |mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Text(text) = message {
                let _ = socket.send(Message::Text(format!("{user} said {text}").into())).await;
            }
        }
    })
}

/// A route table with one public route, `up`, sending everything to `upstream`.
pub fn one_public_route(upstream: &Upstream) -> String {
    format!(
        "routes:\n- {{ id: up, pathPrefix: /, upstream: '{}', timeoutSeconds: 5, access: {{ public: true }} }}\n",
        upstream.url
    )
}

/// A running gateway with its route file, database and bootstrap admin key.
pub struct Gateway {
    pub service: RunningService,
    pub routes_file: PathBuf,
    pub db: airq_testenv::TestDatabase,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway on a fresh database with `routes` (YAML) as its route table.
    pub async fn start(routes: &str, env: &[(&str, &str)]) -> Self {
        let db = airq_testenv::database().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let routes_file = dir.path().join("routes.yaml");
        std::fs::write(&routes_file, routes).unwrap();
        let service = Self::spawn(&db.url, &routes_file, env).await;
        Self {
            service,
            routes_file,
            db,
            http: airq_testenv::http_client(),
            _dir: dir,
        }
    }

    /// Another replica on the same database and route table.
    pub async fn replica(&self, env: &[(&str, &str)]) -> RunningService {
        Self::spawn(&self.db.url, &self.routes_file, env).await
    }

    async fn spawn(db_url: &str, routes_file: &std::path::Path, env: &[(&str, &str)]) -> RunningService {
        let routes = routes_file.display().to_string();
        let mut all = vec![
            ("AIRQ_OPS_LISTEN", airq_testenv::service::FREE_ADDRESS),
            ("AIRQ_DATABASE_URL", db_url),
            ("AIRQ_ROUTES_FILE", routes.as_str()),
            ("AIRQ_ROUTES_POLL_MS", "100"),
            ("AIRQ_ADMIN_KEY", ADMIN_KEY),
            ("AIRQ_KEY_HASH_SECRET", HASH_SECRET),
            ("AIRQ_USAGE_FLUSH_SECONDS", "1"),
            ("AIRQ_LOG_LEVEL", "debug,hyper=info,sqlx=info,h2=info,tower=info"),
        ];
        all.extend_from_slice(env);
        RunningService::start(std::path::Path::new(env!("CARGO_BIN_EXE_airq-gateway")), &[], &all)
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.service.base_url)
    }

    /// The URL of `path` on the operational endpoints' port (`/readyz`, `/metrics`).
    pub fn ops_url(&self, path: &str) -> String {
        format!("{}{path}", self.service.ops_url)
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.ops_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn addr(&self) -> String {
        self.service.base_url.trim_start_matches("http://").to_owned()
    }

    /// An admin API call with the bootstrap key; returns status and JSON body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Creates `group` (if needed) and `user` in it, and issues a key with `options`; returns the key.
    pub async fn user_with_key(&self, user: &str, groups: &[&str], options: serde_json::Value) -> String {
        for group in groups {
            let (status, body) = self
                .admin(
                    reqwest::Method::POST,
                    "/admin/groups",
                    Some(serde_json::json!({ "name": group })),
                )
                .await;
            assert!(
                status == 201 || status == 409,
                "creating group {group}: {status} {body}"
            );
        }
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/admin/users",
                Some(serde_json::json!({ "name": user, "groups": groups })),
            )
            .await;
        assert_eq!(status, 201, "creating user {user}: {body}");
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/admin/users/{user}/keys"),
                Some(options),
            )
            .await;
        assert_eq!(status, 201, "issuing a key: {body}");
        body["key"].as_str().unwrap().to_owned()
    }

    /// GET with an optional key; returns status, headers and JSON (or text) body.
    pub async fn get(&self, path: &str, key: Option<&str>) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let mut request = self.http.get(self.url(path));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Waits (at most 5 s) until `path` is answered by the upstream named `upstream`.
    pub async fn wait_served_by(&self, path: &str, upstream: &str) {
        airq_testenv::eventually(
            &format!("{path} served by {upstream}"),
            Duration::from_secs(5),
            || async {
                let (_, _, body) = self.get(path, None).await;
                if body["upstream"] == upstream {
                    Ok(())
                } else {
                    Err(body.to_string())
                }
            },
        )
        .await
        .unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.service.log).unwrap_or_default()
    }

    pub fn write_routes(&self, routes: &str) {
        // Written beside and renamed, as a ConfigMap volume swaps its files.
        let fresh = self.routes_file.with_extension("new");
        std::fs::write(&fresh, routes).unwrap();
        std::fs::rename(&fresh, &self.routes_file).unwrap();
    }
}

/// The error code of a JSON error answer.
pub fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<not a JSON error>")
}

/// Sends `request_head` (request line and headers, without the final blank line) as raw bytes and returns the
/// status and the body text: paths go out exactly as written.
pub async fn raw(addr: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Fails when any of `secrets` appears in the gateway's log.
pub fn assert_no_secrets(log: &str, secrets: &[&str]) {
    assert!(!log.is_empty(), "the gateway wrote no log");
    for secret in secrets {
        // The secret part alone is what must never leak; the id before it is the key's public name. (The secret
        // itself may contain '_'.)
        let hidden = match secret.strip_prefix("airq_").and_then(|rest| rest.split_once('_')) {
            Some((_, hidden)) => hidden,
            None => secret,
        };
        assert!(hidden.len() >= 20, "not a secret worth looking for: {hidden:?}");
        assert!(
            !log.contains(hidden),
            "a secret appears in the gateway's log:\n{}",
            log.lines()
                .filter(|l| l.contains(hidden))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
