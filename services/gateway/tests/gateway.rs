//! The gateway against real upstream servers and a real PostgreSQL: every status it answers, keys issued, revoked
//! and rotated through the admin API, limits, hot reload of the route table, path tricks, headers, streaming and
//! WebSocket pass-through, and logs that hold no secret.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_KEY, Gateway, HASH_SECRET, Upstream, assert_no_secrets, code, raw};
use reqwest::Method;
use serde_json::json;

fn table(public: &Upstream, private: &Upstream, extra: &str) -> String {
    format!(
        "routes:
- {{ id: public, pathPrefix: /, upstream: '{}', timeoutSeconds: 5, retries: 1, access: {{ public: true }} }}
- {{ id: private, pathPrefix: /private/, upstream: '{}', stripPrefix: true, timeoutSeconds: 1, access: {{ groups: [operators] }}, websocket: true }}
{extra}",
        public.url, private.url
    )
}

#[tokio::test]
async fn every_status_the_gateway_answers_is_reached() {
    let public = Upstream::start("public").await;
    let private = Upstream::start("private").await;
    let closed = format!("http://127.0.0.1:{}", airq_testenv::process::free_port().unwrap());
    let extra = format!(
        "- {{ id: down, pathPrefix: /down/, upstream: '{closed}', timeoutSeconds: 1, retries: 2, access: {{ public: true }} }}
- {{ id: limited, pathPrefix: /limited/, upstream: '{}', timeoutSeconds: 5, access: {{ public: true }}, rateLimit: {{ requestsPerSecond: 0.2, burst: 2 }} }}",
        public.url
    );
    let gateway = Gateway::start(
        &table(&public, &private, &extra),
        &[
            ("AIRQ_MAX_BODY_BYTES", "1000"),
            ("AIRQ_BREAKER_FAILURES", "3"),
            ("AIRQ_BREAKER_OPEN_SECONDS", "30"),
        ],
    )
    .await;
    let operator = gateway.user_with_key("olga", &["operators"], json!({})).await;
    let developer = gateway.user_with_key("dev", &["developers"], json!({})).await;

    // 200, through a public route and, with a key of the right group, a private one (prefix stripped).
    let (status, _, body) = gateway.get("/hello?x=1", None).await;
    assert_eq!(
        (status, body["upstream"].as_str(), body["pathAndQuery"].as_str()),
        (200, Some("public"), Some("/hello?x=1"))
    );
    let (status, _, body) = gateway.get("/private/loads?page=2", Some(&operator)).await;
    assert_eq!(
        (status, body["upstream"].as_str(), body["pathAndQuery"].as_str()),
        (200, Some("private"), Some("/loads?page=2"))
    );

    // 401 without a key, with a malformed one and with a wrong one; 403 with a key of another group.
    let (status, headers, body) = gateway.get("/private/loads", None).await;
    assert_eq!((status, code(&body)), (401, "unauthenticated"));
    assert!(headers.get("www-authenticate").is_some());
    let (status, _, body) = gateway.get("/private/loads", Some("not-a-key")).await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"));
    let forged = format!("{}x", &operator[..operator.len() - 1]);
    let (status, _, body) = gateway.get("/private/loads", Some(&forged)).await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"), "{body}");
    let (status, _, body) = gateway.get("/private/loads", Some(&developer)).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    assert!(
        body["error"]["message"].as_str().unwrap().contains("operators"),
        "{body}"
    );

    // 404: the gateway's own paths are never proxied, even with a catch-all route.
    let (status, body) = gateway.admin(Method::GET, "/admin/nothing-here", None).await;
    assert_eq!((status, code(&body)), (404, "no_route"), "{body}");

    // 400: a path with no plain form.
    let (status, body) = raw(&gateway.addr(), "GET", "/private%2floads", &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_path"), "{body}");

    // 413: by Content-Length at once, and for a chunked body as it streams.
    let response = gateway
        .http
        .post(gateway.url("/upload"))
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(code(&response.json().await.unwrap()), "body_too_large");
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 400])));
    let response = gateway
        .http
        .post(gateway.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    // The unread rest of the body ends the connection, and the answer says so (a pooled connection is not reused).
    assert_eq!(
        response.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let small = gateway
        .http
        .post(gateway.url("/upload"))
        .body(vec![b'x'; 900])
        .send()
        .await
        .unwrap();
    let small: serde_json::Value = small.json().await.unwrap();
    assert_eq!(small["bodyLen"], 900);

    // 431: headers beyond the limit.
    let response = gateway
        .http
        .get(gateway.url("/hello"))
        .header("x-padding", "p".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 431);

    // 429 with Retry-After, per caller on a limited route (burst 2).
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let (status, headers, _) = gateway.get("/limited/x", None).await;
        statuses.push(status);
        if status == 429 {
            retry_after = headers.get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    // Another caller (a key) has a bucket of its own on that route.
    let (status, _, _) = gateway.get("/limited/x", Some(&developer)).await;
    assert_eq!(status, 200);

    // 502 when the upstream refuses connections (after the retries of a GET), then 503 once the circuit opens.
    let started = Instant::now();
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (status, _, body) = gateway.get("/down/x", None).await;
        codes.push((status, code(&body).to_owned()));
    }
    assert_eq!(
        codes,
        [
            (502, "upstream_unreachable".to_owned()),
            (502, "upstream_unreachable".to_owned()),
            (502, "upstream_unreachable".to_owned()),
            (503, "upstream_unavailable".to_owned()),
        ]
    );
    let (_, headers, _) = gateway.get("/down/x", None).await;
    assert!(headers.get("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(5));

    // 504 when the upstream is slower than the route's timeout (1 s).
    let (status, _, body) = gateway.get("/private/slow/3", Some(&operator)).await;
    assert_eq!((status, code(&body)), (504, "upstream_timeout"));

    // Upstream answers, errors included, pass through untouched.
    let (status, _, body) = gateway.get("/status/418", None).await;
    assert_eq!((status, body.as_str()), (418, Some("status 418")));

    // Per-route metrics, on the operational port only: the public listener answers /healthz alone.
    let metrics = gateway.metrics().await;
    for path in ["/metrics", "/readyz"] {
        let (status, _, body) = gateway.get(path, None).await;
        assert_eq!(
            (status, code(&body)),
            (404, "no_route"),
            "{path} on the public listener: {body}"
        );
    }
    assert_eq!(gateway.get("/healthz", None).await.0, 200);
    let ready = gateway.http.get(gateway.ops_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    for line in [
        r#"airq_gateway_http_requests_total{route="private",status_class="2xx"} 1"#,
        r#"airq_gateway_http_requests_total{route="private",status_class="4xx"} 4"#,
        r#"airq_gateway_upstream_errors_total{route="down",kind="connect"} 3"#,
        r#"airq_gateway_upstream_errors_total{route="private",kind="timeout"} 1"#,
        r#"airq_gateway_route_rate_limited_total{route="limited"} 2"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(metrics.contains(r#"airq_gateway_http_request_duration_seconds_bucket{route="public""#));

    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gateway.log();
    assert_no_secrets(&log, &[ADMIN_KEY, HASH_SECRET, &operator, &developer]);
    // One JSON access line per request, naming the key by its id.
    let operator_id = operator.split('_').nth(1).unwrap();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["target"] == "airq_gateway::access" && l["route"] == "private" && l["status"] == 200)
        .expect("an access line for the private route");
    assert_eq!(line["key_id"].as_str(), Some(operator_id));
    assert_eq!(line["user"].as_str(), Some("olga"));
    for field in [
        "request_id",
        "trace_id",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "method",
        "path",
    ] {
        assert!(!line[field].is_null(), "access line without {field}: {line}");
    }
}

#[tokio::test]
async fn keys_are_revoked_at_once_and_rotated_with_a_grace_period() {
    let public = Upstream::start("public").await;
    let private = Upstream::start("private").await;
    let gateway = Gateway::start(&table(&public, &private, ""), &[]).await;
    let replica = gateway.replica(&[]).await;
    let key = gateway
        .user_with_key("ana", &["operators"], json!({ "description": "ci" }))
        .await;
    let id = key.split('_').nth(1).unwrap().to_owned();

    let on_replica = |key: String| {
        let http = gateway.http.clone();
        let url = format!("{}/private/x", replica.base_url);
        async move {
            http.get(url)
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(gateway.get("/private/x", Some(&key)).await.0, 200);
    assert_eq!(
        on_replica(key.clone()).await,
        200,
        "the replica accepts the key (and caches it)"
    );

    // The key is listed without its secret; its hash is not shown either.
    let (status, body) = gateway.admin(Method::GET, "/admin/users/ana", None).await;
    assert_eq!(status, 200);
    let listing = body.to_string();
    assert!(
        listing.contains(&id) && !listing.contains(key.splitn(3, '_').nth(2).unwrap()),
        "{listing}"
    );
    assert!(body["keys"][0].get("hash").is_none());

    // Revoked through the first replica: refused by both on the next request.
    let (status, _) = gateway.admin(Method::DELETE, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, _, body) = gateway.get("/private/x", Some(&key)).await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"));
    assert!(body["error"]["message"].as_str().unwrap().contains("revoked"));
    // The other replica learns it through PostgreSQL's NOTIFY; "at once" is measured, not assumed.
    let started = Instant::now();
    while on_replica(key.clone()).await != 401 {
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "the replica still accepts a revoked key"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Rotation: old and new valid together for the grace period, then only the new one.
    let old = gateway.user_with_key("ben", &["operators"], json!({})).await;
    let old_id = old.split('_').nth(1).unwrap().to_owned();
    assert_eq!(on_replica(old.clone()).await, 200);
    let (status, body) = gateway
        .admin(
            Method::POST,
            &format!("/admin/keys/{old_id}/rotate"),
            Some(json!({ "graceSeconds": 2 })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let new = body["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(
        gateway.get("/private/x", Some(&old)).await.0,
        200,
        "old key during grace"
    );
    assert_eq!(gateway.get("/private/x", Some(&new)).await.0, 200, "new key");
    assert_eq!(
        on_replica(old.clone()).await,
        200,
        "old key during grace, on the replica"
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, _, body) = gateway.get("/private/x", Some(&old)).await;
    assert_eq!(
        (status, code(&body)),
        (401, "invalid_credentials"),
        "old key after grace"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"));
    assert_eq!(
        on_replica(old.clone()).await,
        401,
        "old key after grace, on the replica"
    );
    assert_eq!(gateway.get("/private/x", Some(&new)).await.0, 200);

    // A disabled user is refused; enabled again, accepted.
    let (status, _) = gateway
        .admin(Method::PATCH, "/admin/users/ben", Some(json!({ "disabled": true })))
        .await;
    assert_eq!(status, 200);
    assert_eq!(gateway.get("/private/x", Some(&new)).await.0, 403);
    gateway
        .admin(Method::PATCH, "/admin/users/ben", Some(json!({ "disabled": false })))
        .await;
    assert_eq!(gateway.get("/private/x", Some(&new)).await.0, 200);

    // Usage is counted per key and day across replicas.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = gateway.admin(Method::GET, "/admin/usage?user=ben", None).await;
    assert_eq!(status, 200, "{body}");
    let requests: i64 = body["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["requests"].as_i64().unwrap())
        .sum();
    // Three accepted with the old key (on both replicas), three with the new one; refused requests do not count.
    assert_eq!(requests, 6, "{body}");

    // The admin API is for the admin group only, and its errors are JSON.
    let response = gateway
        .http
        .get(gateway.url("/admin/users"))
        .header("x-api-key", &new)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let response = gateway.http.get(gateway.url("/admin/users")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (status, body) = gateway
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({ "name": "x", "groups": ["nope"] })),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_request"), "{body}");
    let (status, body) = gateway
        .admin(Method::POST, "/admin/users", Some(json!({ "name": "ben" })))
        .await;
    assert_eq!((status, code(&body)), (409, "conflict"));
    let (status, body) = gateway
        .admin(Method::POST, "/admin/users", Some(json!({ "name": "bad name!" })))
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_request"));
    let (status, body) = gateway.admin(Method::DELETE, "/admin/keys/nosuchkey", None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));

    let mut log = gateway.log();
    log.push_str(&std::fs::read_to_string(&replica.log).unwrap());
    assert_no_secrets(&log, &[ADMIN_KEY, HASH_SECRET, &key, &old, &new]);
}

#[tokio::test]
async fn quotas_and_key_rate_limits_answer_429() {
    let public = Upstream::start("public").await;
    let private = Upstream::start("private").await;
    let gateway = Gateway::start(&table(&public, &private, ""), &[]).await;
    let quota = gateway
        .user_with_key("q", &["operators"], json!({ "dailyQuota": 3 }))
        .await;
    let statuses: Vec<u16> = futures::future::join_all((0..5).map(|_| gateway.get("/private/x", Some(&quota))))
        .await
        .into_iter()
        .map(|(s, _, _)| s)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    let (status, headers, body) = gateway.get("/private/x", Some(&quota)).await;
    assert_eq!(status, 429);
    assert!(body["error"]["message"].as_str().unwrap().contains("daily quota of 3"));
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait));

    let rate = gateway
        .user_with_key("r", &["operators"], json!({ "ratePerSecond": 1.0, "burst": 2 }))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(gateway.get("/private/x", Some(&rate)).await.0);
    }
    assert_eq!(statuses, [200, 200, 429]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gateway.get("/private/x", Some(&rate)).await.0,
        200,
        "a token back after a second"
    );
}

#[tokio::test]
async fn a_route_added_to_the_file_is_served_without_a_restart() {
    let public = Upstream::start("public").await;
    let private = Upstream::start("private").await;
    let reports = Upstream::start("reports").await;
    let gateway = Gateway::start(&table(&public, &private, ""), &[]).await;
    let pid = gateway.service.pid();
    let (_, _, body) = gateway.get("/reports/monthly", None).await;
    assert_eq!(body["upstream"], "public");

    // A slow request in flight while the table changes completes.
    let slow = {
        let http = gateway.http.clone();
        let url = gateway.url("/slow/1.5");
        tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra = format!(
        "- {{ id: adhoc/reports, pathPrefix: /reports/, upstream: '{}', stripPrefix: true, timeoutSeconds: 5, access: {{ public: true }} }}",
        reports.url
    );
    gateway.write_routes(&table(&public, &private, &extra));
    gateway.wait_served_by("/reports/monthly", "reports").await;
    assert_eq!(reports.hits().last().unwrap().path_and_query, "/monthly");
    assert_eq!(slow.await.unwrap(), 200, "the request in flight during the reload");
    assert_eq!(gateway.service.pid(), pid, "no restart");

    // A broken file leaves the table in use as it was, and says why in the log.
    gateway.write_routes("routes: [ { id: broken } ]");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, body) = gateway.get("/reports/monthly", None).await;
    assert_eq!(body["upstream"], "reports");
    assert!(
        gateway
            .log()
            .contains("the route table was not reloaded; the previous one stays in use")
    );
    let (status, body) = gateway.admin(Method::GET, "/admin/routes", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["routes"].as_array().unwrap().len(), 3, "{body}");

    // One invalid route is left out (and logged); the others, new ones included, are served.
    let extra = format!(
        "- {{ id: bad, pathPrefix: /admin/x/, upstream: '{0}', timeoutSeconds: 5, access: {{ public: true }} }}
- {{ id: more, pathPrefix: /more/, upstream: '{0}', stripPrefix: true, timeoutSeconds: 5, access: {{ public: true }} }}",
        reports.url
    );
    gateway.write_routes(&table(&public, &private, &extra));
    gateway.wait_served_by("/more/x", "reports").await;
    assert!(gateway.log().contains("a route was left out of the table"));
    let (_, body) = gateway.admin(Method::GET, "/admin/routes", None).await;
    let ids: Vec<&str> = body["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["route"]["id"].as_str())
        .collect();
    assert!(ids.contains(&"more") && !ids.contains(&"bad"), "{ids:?}");
}

#[tokio::test]
async fn path_tricks_never_reach_a_route_the_caller_may_not_use() {
    let public = Upstream::start("public").await;
    let private = Upstream::start("private").await;
    let gateway = Gateway::start(&table(&public, &private, ""), &[]).await;
    let developer = gateway.user_with_key("dev", &["developers"], json!({})).await;
    let addr = gateway.addr();
    let tricks = [
        "/a/../private/x",
        "//private/x",
        "/%2e%2e/private/x",
        "/x/%2e%2e/private/x",
        "/x/%2E%2E/private/x",
        "/./private/x",
        "/private%2fx",
        "/x/..%2fprivate/x",
        "/%70rivate/x",
        "/private/../private/x",
        "/x/..;/private/x",
        "/private\\x",
    ];
    for key in [None, Some(developer.as_str())] {
        for trick in tricks {
            let headers: Vec<(&str, &str)> = key.iter().map(|k| ("X-Api-Key", *k)).collect();
            let (status, body) = raw(&addr, "GET", trick, &headers).await;
            // Refused (400 no plain form, 401/403 for the private route) or served by the public route with a
            // path outside /private/.
            if status == 200 {
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["upstream"], "public", "{trick}");
                assert!(
                    !body["pathAndQuery"].as_str().unwrap().starts_with("/private/"),
                    "{trick}: {body}"
                );
            } else {
                assert!([400, 401, 403].contains(&status), "{trick}: {status} {body}");
            }
        }
    }
    // Mixed case is another path: served by the public route as is, never by the private one.
    let (status, body) = raw(&addr, "GET", "/PRIVATE/x", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"upstream\":\"public\""));
    // The admin API through tricks: still the admin API, still refused without the admin group.
    for trick in ["//admin/users", "/x/../admin/users", "/%61dmin/users"] {
        let (status, _) = raw(&addr, "GET", trick, &[("X-Api-Key", developer.as_str())]).await;
        assert_eq!(status, 403, "{trick}");
    }
    assert!(
        private.hits().is_empty(),
        "the private upstream was reached: {:?}",
        private.hits()
    );
    assert_no_secrets(&gateway.log(), &[ADMIN_KEY, HASH_SECRET, &developer]);
}

#[tokio::test]
async fn headers_streams_websockets_and_cors_pass_as_a_proxy_should() {
    let public = Upstream::start("public").await;
    let private = Upstream::start("private").await;
    let extra = "- { id: cors, pathPrefix: /cors/, upstream: 'UP', timeoutSeconds: 5, access: { public: true }, cors: { allowedOrigins: ['https://dash.example.org'], allowedMethods: [GET, PUT], allowedHeaders: [X-Api-Key], maxAgeSeconds: 600 } }"
        .replace("UP", &public.url);
    let gateway = Gateway::start(&table(&public, &private, &extra), &[]).await;
    let operator = gateway.user_with_key("olga", &["operators"], json!({})).await;

    let response = gateway
        .http
        .get(gateway.url("/private/echo"))
        .header("x-api-key", &operator)
        .header("x-airq-user", "forged-admin")
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .header("x-request-id", "req-123")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-123");
    let body: serde_json::Value = response.json().await.unwrap();
    let headers = &body["headers"];
    assert_eq!(
        headers["x-airq-user"], "olga",
        "the identity header is the gateway's, not the caller's"
    );
    assert_eq!(headers["x-airq-groups"], "operators");
    assert!(headers.get("x-api-key").is_none(), "the key is not forwarded");
    assert!(
        headers.get("x-hop").is_none(),
        "a header named in Connection is hop-by-hop"
    );
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], gateway.addr());
    assert_eq!(headers["x-request-id"], "req-123");
    // The caller's trace goes on, with the gateway's own span as the upstream's parent; the sampling flag is kept.
    let traceparent: Vec<&str> = headers["traceparent"].as_str().unwrap().split('-').collect();
    assert_eq!(traceparent.len(), 4, "{}", headers["traceparent"]);
    assert_eq!(traceparent[..2], ["00", "4bf92f3577b34da6a3ce929d0e0e4736"]);
    assert_eq!(traceparent[2].len(), 16);
    assert_ne!(
        traceparent[2], "00f067aa0ba902b7",
        "the gateway's span, not the caller's"
    );
    assert_eq!(traceparent[3], "01");
    // Without a trace context, the gateway starts one, and logs its id.
    let (status, _, body) = gateway.get("/echo", None).await;
    let traceparent = body["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "no traceparent reached the upstream: {status} {body}\n{}",
                gateway.log()
            )
        })
        .to_owned();
    let trace_id = traceparent.split('-').nth(1).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(gateway.log().contains(&format!("\"trace_id\":\"{trace_id}\"")));

    // Server-sent events stream through: the first arrives long before the last is sent.
    let started = Instant::now();
    let mut stream = gateway
        .http
        .get(gateway.url("/sse"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let first = futures::StreamExt::next(&mut stream).await.unwrap().unwrap();
    let first_after = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("event 0"));
    let mut rest = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&rest).contains("event 2"));
    assert!(
        first_after < Duration::from_millis(400),
        "the first event waited for the others: {first_after:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(550));

    // A WebSocket through a private route, with the caller's identity.
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/private/ws",
        gateway.addr()
    ))
    .unwrap();
    request.headers_mut().insert("x-api-key", operator.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    futures::SinkExt::send(&mut socket, tokio_tungstenite::tungstenite::Message::text("hello"))
        .await
        .unwrap();
    let answer = futures::StreamExt::next(&mut socket).await.unwrap().unwrap();
    assert_eq!(answer.to_text().unwrap(), "olga said hello");
    // Without a key the upgrade is refused like any request.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/private/ws", gateway.addr())).await;
    assert!(matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401));

    // CORS: a preflight answered by the gateway, headers on the answer, other origins refused.
    let preflight = gateway
        .http
        .request(Method::OPTIONS, gateway.url("/cors/data"))
        .header("origin", "https://dash.example.org")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://dash.example.org"
    );
    assert_eq!(preflight.headers()["access-control-max-age"], "600");
    let answer = gateway
        .http
        .get(gateway.url("/cors/data"))
        .header("origin", "https://dash.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "https://dash.example.org"
    );
    let other = gateway
        .http
        .get(gateway.url("/cors/data"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    assert_no_secrets(&gateway.log(), &[ADMIN_KEY, HASH_SECRET, &operator]);
}

#[tokio::test]
async fn jwt_bearer_tokens_are_checked_for_issuer_audience_expiry_and_groups() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let public = Upstream::start("public").await;
    let private = Upstream::start("private").await;
    let secret = "jwt-shared-secret-for-tests-0123456789";
    let gateway = Gateway::start(
        &table(&public, &private, ""),
        &[
            ("AIRQ_JWT_ISSUER", "https://idp.example.org"),
            ("AIRQ_JWT_AUDIENCE", "airq"),
            ("AIRQ_JWT_SECRET", secret),
        ],
    )
    .await;
    let now = chrono::Utc::now().timestamp();
    let token = |claims: serde_json::Value| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let call = |token: String| {
        let http = gateway.http.clone();
        let url = gateway.url("/private/x");
        async move {
            let response = http.get(url).bearer_auth(token).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let good = json!({ "iss": "https://idp.example.org", "aud": "airq", "sub": "svc-1", "exp": now + 600, "groups": ["operators"] });
    let (status, body) = call(token(good.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-airq-user"], "jwt:svc-1");
    let mut other_group = good.clone();
    other_group["groups"] = json!(["developers"]);
    assert_eq!(call(token(other_group)).await.0, 403);
    let mut wrong_audience = good.clone();
    wrong_audience["aud"] = json!("someone-else");
    assert_eq!(call(token(wrong_audience)).await.0, 401);
    let mut expired = good.clone();
    expired["exp"] = json!(now - 3600);
    assert_eq!(call(token(expired)).await.0, 401);
    let forged = encode(
        &Header::default(),
        &good,
        &EncodingKey::from_secret(b"another-secret-entirely"),
    )
    .unwrap();
    assert_eq!(call(forged).await.0, 401);
}

#[tokio::test]
async fn on_sqlite_keys_work_and_survive_a_restart_with_the_generated_hashing_secret() {
    use std::os::unix::fs::PermissionsExt as _;
    let public = Upstream::start("public").await;
    let private = Upstream::start("private").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, table(&public, &private, "")).unwrap();
    let database = format!("sqlite://{}", dir.path().join("airq.db").display());
    let routes = routes.display().to_string();
    let env = [
        ("AIRQ_DATABASE_URL", database.as_str()),
        ("AIRQ_ROUTES_FILE", routes.as_str()),
        ("AIRQ_ADMIN_KEY", ADMIN_KEY),
        ("AIRQ_OPS_LISTEN", "127.0.0.1:0"),
    ];
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_airq-gateway"));
    let http = airq_testenv::http_client();
    let first = airq_testenv::service::RunningService::start(binary, &[], &env)
        .await
        .unwrap();
    let secret_file = dir.path().join("airq.db.key-hash-secret");
    let mode = std::fs::metadata(&secret_file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the generated secret is readable by its owner only"
    );
    let admin = |base: String, method: Method, path: &str, body: serde_json::Value| {
        let request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(ADMIN_KEY)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let base = first.base_url.clone();
    assert_eq!(
        admin(
            base.clone(),
            Method::POST,
            "/admin/groups",
            json!({ "name": "operators" })
        )
        .await
        .0,
        201
    );
    assert_eq!(
        admin(
            base.clone(),
            Method::POST,
            "/admin/users",
            json!({ "name": "sam", "groups": ["operators"] })
        )
        .await
        .0,
        201
    );
    let (status, body) = admin(base.clone(), Method::POST, "/admin/users/sam/keys", json!({})).await;
    assert_eq!(status, 201);
    let key = body["key"].as_str().unwrap().to_owned();
    let call = |base: String, key: String| {
        let request = http.get(format!("{base}/private/x")).header("x-api-key", key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call(base.clone(), key.clone()).await, 200);
    let log = std::fs::read_to_string(&first.log).unwrap();
    assert!(first.terminate().await.unwrap().success());

    let second = airq_testenv::service::RunningService::start(binary, &[], &env)
        .await
        .unwrap();
    let base = second.base_url.clone();
    assert_eq!(
        call(base.clone(), key.clone()).await,
        200,
        "the key still verifies after a restart"
    );
    let id = key.split('_').nth(1).unwrap();
    assert_eq!(
        admin(base.clone(), Method::DELETE, &format!("/admin/keys/{id}"), json!({}))
            .await
            .0,
        204
    );
    assert_eq!(call(base.clone(), key.clone()).await, 401);
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let mut log = log;
    log.push_str(&std::fs::read_to_string(&second.log).unwrap());
    assert_no_secrets(&log, &[ADMIN_KEY, &secret, &key]);
}
