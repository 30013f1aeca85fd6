//! The gateway as a stranger attacks it: callers that try to take a route down, tunnel past authentication, forge
//! identities, send requests that can be read two ways, or wear out memory. Each test runs the real binary against
//! real upstreams and PostgreSQL.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Gateway, Upstream, code};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JWT_SECRET: &str = "jwt-shared-secret-for-abuse-tests-0123456789";

/// Sends `bytes` on a fresh connection, then (when `half_close`) closes the sending side, or waits `pause` with the
/// connection open; returns the status and the whole answer.
async fn send_raw(addr: &str, bytes: &[u8], half_close: bool, pause: Duration) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    } else {
        tokio::time::sleep(pause).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A route table: `up` public (timeout 1 s), `ws` accepting WebSocket upgrades, `private` for operators.
fn routes(upstream: &Upstream) -> String {
    format!(
        "routes:
- {{ id: up, pathPrefix: /, upstream: '{0}', timeoutSeconds: 1, access: {{ public: true }} }}
- {{ id: ws, pathPrefix: /sockets/, upstream: '{0}', stripPrefix: true, timeoutSeconds: 5, access: {{ public: true }}, websocket: true }}
- {{ id: private, pathPrefix: /private/, upstream: '{0}', stripPrefix: true, timeoutSeconds: 5, access: {{ groups: [operators] }} }}
",
        upstream.url
    )
}

async fn start(upstream: &Upstream, env: &[(&str, &str)]) -> Gateway {
    let mut all = vec![
        ("AIRQ_JWT_ISSUER", "https://idp.example.org"),
        ("AIRQ_JWT_AUDIENCE", "airq"),
        ("AIRQ_JWT_SECRET", JWT_SECRET),
    ];
    all.extend_from_slice(env);
    Gateway::start(&routes(upstream), &all).await
}

fn token(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn claims(sub: &str, groups: serde_json::Value) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    json!({ "iss": "https://idp.example.org", "aud": "airq", "sub": sub, "exp": now + 600, "iat": now, "groups": groups })
}

async fn call(gateway: &Gateway, path: &str, authorization: &str) -> (u16, serde_json::Value) {
    let response = gateway
        .http
        .get(gateway.url(path))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(json!(null)))
}

#[tokio::test]
async fn callers_breaking_their_own_requests_never_open_the_routes_circuit() {
    let upstream = Upstream::start("up").await;
    let gateway = start(&upstream, &[]).await;
    let addr = gateway.addr();

    // Broken chunked bodies: 400, the caller's fault.
    for _ in 0..6 {
        let request = format!(
            "POST /echo HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ-not-a-size\r\n\r\n"
        );
        let (status, answer) = send_raw(&addr, request.as_bytes(), false, Duration::from_millis(300)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains("invalid_body"), "{answer}");
    }
    // A Content-Length larger than what is sent, then the sending side closed.
    for _ in 0..3 {
        let request = format!("POST /echo HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100\r\n\r\nonly ten b");
        let (status, answer) = send_raw(&addr, request.as_bytes(), true, Duration::ZERO).await;
        assert!(status == 400 || status == 0, "{answer}");
    }
    // A body slower than the route's timeout (1 s): 408.
    for _ in 0..5 {
        let request = format!("POST /echo HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 10\r\n\r\nab");
        let (status, answer) = send_raw(&addr, request.as_bytes(), false, Duration::from_millis(1500)).await;
        assert_eq!(status, 408, "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
    }
    // The upstream is healthy, and the route is still open to everyone.
    let (status, _, body) = gateway.get("/echo", None).await;
    assert_eq!(status, 200, "{body}");
    let metrics = gateway.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("airq_gateway_circuit_open_total") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // The upstream's own failures still open it: 5 timeouts in a row, then 503 without calling it.
    for _ in 0..5 {
        assert_eq!(gateway.get("/slow/2", None).await.0, 504);
    }
    let (status, headers, body) = gateway.get("/echo", None).await;
    assert_eq!((status, code(&body)), (503, "upstream_unavailable"), "{body}");
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn only_websocket_upgrades_on_routes_that_accept_them_become_tunnels() {
    let upstream = Upstream::start("up").await;
    let gateway = start(&upstream, &[]).await;
    let addr = gateway.addr();

    // h2c (or any other protocol) is not passed: the request goes on as plain HTTP/1.1, without the upgrade.
    let h2c = format!(
        "GET /echo HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    );
    let (status, answer) = send_raw(&addr, h2c.as_bytes(), false, Duration::from_millis(500)).await;
    assert_eq!(status, 200, "{answer}");
    let seen = upstream.hits().pop().unwrap();
    assert!(
        !seen.headers.contains_key("upgrade") && !seen.headers.contains_key("http2-settings"),
        "{seen:?}"
    );

    // A WebSocket upgrade on a route that does not say websocket: true.
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("the upgrade was not refused: {other:?}"),
    }
    // Where it is allowed, it works.
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/sockets/ws"))
        .await
        .unwrap();
    futures::SinkExt::send(&mut socket, tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let answer = futures::StreamExt::next(&mut socket).await.unwrap().unwrap();
    assert_eq!(answer.to_text().unwrap(), "nobody said hi");
}

#[tokio::test]
async fn tokens_not_valid_yet_or_issued_in_the_future_are_refused_without_library_words() {
    let upstream = Upstream::start("up").await;
    let gateway = start(&upstream, &[]).await;
    let now = chrono::Utc::now().timestamp();
    let good = claims("svc-1", json!(["operators"]));
    assert_eq!(
        call(&gateway, "/private/x", &format!("Bearer {}", token(&good)))
            .await
            .0,
        200
    );
    // The scheme is case-insensitive.
    assert_eq!(
        call(&gateway, "/private/x", &format!("BEARER {}", token(&good)))
            .await
            .0,
        200
    );

    let mut later = good.clone();
    later["nbf"] = json!(now + 3600);
    let (status, body) = call(&gateway, "/private/x", &format!("Bearer {}", token(&later))).await;
    assert_eq!(status, 401, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("not valid yet (nbf)"), "{message}");

    let mut future = good.clone();
    future["iat"] = json!(now + 3600);
    let (status, body) = call(&gateway, "/private/x", &format!("Bearer {}", token(&future))).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("issued in the future (iat)"), "{body}");

    // Within the leeway (30 s) both are fine: clocks differ a little.
    let mut close = good.clone();
    close["nbf"] = json!(now + 10);
    close["iat"] = json!(now + 10);
    assert_eq!(
        call(&gateway, "/private/x", &format!("Bearer {}", token(&close)))
            .await
            .0,
        200
    );

    let mut expired = good.clone();
    expired["exp"] = json!(now - 3600);
    let (_, body) = call(&gateway, "/private/x", &format!("Bearer {}", token(&expired))).await;
    let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(message, "the bearer token is not valid: it has expired (exp)");
    assert!(!message.contains("ExpiredSignature"));
}

#[tokio::test]
async fn a_subject_with_an_at_sign_keeps_its_daily_quota_across_flushes() {
    let upstream = Upstream::start("up").await;
    let gateway = start(&upstream, &[("AIRQ_KEY_DAILY_QUOTA", "5")]).await;
    let bearer = format!("Bearer {}", token(&claims("bob@example.com", json!(["operators"]))));
    for i in 0..5 {
        assert_eq!(call(&gateway, "/private/x", &bearer).await.0, 200, "request {i}");
        // Across several usage flushes (every second here).
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (status, body) = call(&gateway, "/private/x", &bearer).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        call(&gateway, "/private/x", &bearer).await.0,
        429,
        "the quota was reset"
    );
}

#[tokio::test]
async fn identity_headers_cannot_be_forged_or_polluted() {
    let upstream = Upstream::start("up").await;
    let gateway = start(&upstream, &[]).await;
    let operator = gateway.user_with_key("olga", &["operators"], json!({})).await;

    let response = gateway
        .http
        .get(gateway.url("/private/echo"))
        .header("x-api-key", &operator)
        .header("X-Airq_Groups", "admin")
        .header("X_Airq_Groups", "admin")
        .header("x_airq_user", "root")
        .header("X-Airq-Key_Id", "someone-else")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.hits().pop().unwrap();
    let identity: Vec<(&String, &String)> = seen
        .headers
        .iter()
        .filter(|(name, _)| name.replace('_', "-").starts_with("x-airq-"))
        .collect();
    assert_eq!(identity.len(), 3, "{identity:?}");
    assert_eq!(seen.headers["x-airq-user"], "olga");
    assert_eq!(seen.headers["x-airq-groups"], "operators");

    // A group with a comma would read as two groups; a subject with CR/LF cannot be sent: both refused.
    let comma = token(&claims("svc", json!(["operators", "admin,operators"])));
    let (status, body) = call(&gateway, "/private/x", &format!("Bearer {comma}")).await;
    assert_eq!(status, 401, "{body}");
    let newline = token(&claims("svc\r\nX-Airq-Groups: admin", json!(["operators"])));
    let (status, body) = call(&gateway, "/private/x", &format!("Bearer {newline}")).await;
    assert_eq!(status, 401, "{body}");
    let before = upstream.hits().len();
    let public = token(&claims("svc\nx", json!([])));
    assert_eq!(call(&gateway, "/anything", &format!("Bearer {public}")).await.0, 401);
    assert_eq!(upstream.hits().len(), before, "a refused token reached the upstream");
}

#[tokio::test]
async fn requests_that_can_be_read_two_ways_are_refused() {
    let upstream = Upstream::start("up").await;
    let gateway = start(&upstream, &[]).await;
    let operator = gateway.user_with_key("olga", &["operators"], json!({})).await;
    let addr = gateway.addr();
    let ask = |head: String| {
        let addr = addr.clone();
        async move { send_raw(&addr, head.as_bytes(), false, Duration::from_millis(300)).await }
    };

    let two_keys = format!(
        "GET /private/echo HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {operator}\r\nAuthorization: Bearer airq_nobody00_xxxxxxxxxxxxxxxxxxxxxxxxxx\r\nConnection: close\r\n\r\n"
    );
    let (status, answer) = ask(two_keys).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("ambiguous_request"), "{answer}");
    let two_api_keys = format!(
        "GET /private/echo HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {operator}\r\nX-Api-Key: other\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(ask(two_api_keys).await.0, 400);
    let two_hosts = format!("GET /echo HTTP/1.1\r\nHost: {addr}\r\nHost: admin.internal\r\nConnection: close\r\n\r\n");
    assert_eq!(ask(two_hosts).await.0, 400);
    let absolute = format!("GET http://admin.internal/echo HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    assert_eq!(ask(absolute).await.0, 400);
    // The same host both ways is not ambiguous.
    let same = format!("GET http://{addr}/echo HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    assert_eq!(ask(same).await.0, 200);
    assert!(
        upstream.hits().iter().all(|seen| seen.path_and_query == "/echo"),
        "{:?}",
        upstream.hits()
    );
}

#[tokio::test]
async fn the_usage_of_a_deleted_user_is_dropped_not_retried_forever() {
    let upstream = Upstream::start("up").await;
    let gateway = start(&upstream, &[]).await;
    let key = gateway.user_with_key("dora", &["operators"], json!({})).await;
    assert_eq!(gateway.get("/private/echo", Some(&key)).await.0, 200);
    // Deleted before the next usage flush (every second).
    let (status, body) = gateway.admin(Method::DELETE, "/admin/users/dora", None).await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = gateway.log();
    assert!(
        !log.contains("cannot store a key's usage"),
        "{}",
        log.lines()
            .filter(|l| l.contains("usage"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Another user's usage is still counted.
    let other = gateway.user_with_key("emil", &["operators"], json!({})).await;
    assert_eq!(gateway.get("/private/echo", Some(&other)).await.0, 200);
    airq_testenv::eventually("emil's usage stored", Duration::from_secs(5), || async {
        let (_, body) = gateway.admin(Method::GET, "/admin/usage", None).await;
        let text = body.to_string();
        if text.contains("emil") { Ok(()) } else { Err(text) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn guessing_keys_from_one_address_is_slowed_down() {
    let upstream = Upstream::start("up").await;
    let gateway = start(&upstream, &[]).await;
    let key = gateway.user_with_key("olga", &["operators"], json!({})).await;
    let mut refused = 0;
    for i in 0..40 {
        let guess = format!("airq_guess{i:03}_abcdefghijklmnopqrstuvwxyz0123");
        let (status, _, body) = gateway.get("/private/echo", Some(&guess)).await;
        match status {
            401 => {}
            429 => {
                assert!(body.to_string().contains("too many failed authentications"), "{body}");
                refused += 1;
            }
            other => panic!("guess {i}: {other} {body}"),
        }
    }
    assert!(refused >= 15, "only {refused} of 40 guesses were slowed down");
    // Requests without credentials are not affected; after a wait the right key works again.
    assert_eq!(gateway.get("/echo", None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gateway.get("/private/echo", Some(&key)).await.0, 200);
}

#[tokio::test]
async fn the_rate_limit_message_and_retry_after_say_the_same() {
    let upstream = Upstream::start("up").await;
    let gateway = start(&upstream, &[]).await;
    let key = gateway
        .user_with_key("rita", &["operators"], json!({ "ratePerSecond": 0.5, "burst": 1 }))
        .await;
    assert_eq!(gateway.get("/private/echo", Some(&key)).await.0, 200);
    let (status, headers, body) = gateway.get("/private/echo", Some(&key)).await;
    assert_eq!(status, 429, "{body}");
    let retry_after = headers["retry-after"].to_str().unwrap().to_owned();
    let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.ends_with(&format!("retry after {retry_after} s")),
        "{message} / Retry-After {retry_after}"
    );
    assert_ne!(retry_after, "0");
}

#[tokio::test]
async fn a_revoke_racing_a_key_load_wins_at_once() {
    let upstream = Upstream::start("up").await;
    // Each round from its own address (behind a trusted proxy): the requests refused after the revoke are failed
    // authentications, which would otherwise limit the one loopback address.
    let gateway = start(&upstream, &[("AIRQ_TRUST_FORWARDED_FOR", "true")]).await;
    for round in 0..15 {
        let key = gateway
            .user_with_key(&format!("racer{round}"), &["operators"], json!({}))
            .await;
        let id = key.split('_').nth(1).unwrap().to_owned();
        let address = format!("198.18.7.{round}");
        let get = || {
            gateway
                .http
                .get(gateway.url("/private/echo"))
                .header("x-api-key", &key)
                .header("x-forwarded-for", &address)
                .send()
        };
        // Requests that read the key from the database (nobody used it yet) while it is revoked.
        let requests = futures::future::join_all((0..8).map(|_| get()));
        let path = format!("/admin/keys/{id}");
        let revoke = gateway.admin(Method::DELETE, &path, None);
        let (_, (status, body)) = tokio::join!(requests, revoke);
        assert!((200..300).contains(&status), "{status} {body}");
        // From the revoke on it is refused: not after the cache's 30 s.
        let after = get().await.unwrap();
        let status = after.status().as_u16();
        let body = after.text().await.unwrap_or_default();
        assert_eq!(status, 401, "round {round}: the revoked key still passed: {body}");
    }
    // Behind the trusted proxy, X-Forwarded-For gains the proxy's address (the connection's peer), not the caller's
    // again.
    let forwarded: Vec<String> = upstream
        .hits()
        .iter()
        .filter_map(|seen| seen.headers.get("x-forwarded-for").cloned())
        .collect();
    assert!(
        forwarded
            .iter()
            .all(|f| f.ends_with(", 127.0.0.1") && f.starts_with("198.18.7.")),
        "{forwarded:?}"
    );
}
