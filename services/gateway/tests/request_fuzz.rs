//! Property tests (a fuzzer run with every test) of the gateway's request-line and header handling, against the
//! real binary, a real upstream and PostgreSQL: raw HTTP/1.1 requests made of the pieces attacks are made of
//! (duplicated credentials and hosts, absolute-form targets, identity headers with `_` and case variants, hop-by-hop
//! headers and the names `Connection` lists, upgrades, conflicting body lengths, forged `X-Forwarded-*`) and
//! random names and values. Whatever is sent:
//!
//! - an answer comes, and it is never a 500 (the upstream is healthy: any 5xx would be the gateway's own failure);
//! - CONNECT and TRACE are refused (405) and never forwarded;
//! - a request with two `Authorization`, two `X-Api-Key` or two `Host` headers, or an absolute-form target naming
//!   another host, is answered 400 and never forwarded;
//! - a request reaching the private route carries the valid key, and nothing without it does;
//! - what the upstream receives has no credential, no hop-by-hop header nor any header `Connection` named, the
//!   upstream's own `Host`, and identity headers (in any spelling) only as the gateway set them.
//!
//! The requests of `tests/corpus/requests.txt` are replayed first, on every run.
//!
//! `PROPTEST_CASES=20000 cargo test -p airq-gateway --test request_fuzz` runs it longer (docs/benchmarks.md says how
//! long it ran without a finding).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Gateway, Upstream};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A header naming each case, so that what an upstream saw is matched to the request that caused it.
const CASE_HEADER: &str = "x-fuzz-case";

/// A header, with a placeholder for the valid key (`{key}`) or the gateway's own address (`{addr}`).
type Header = (String, String);

fn header() -> impl Strategy<Value = Header> {
    let fixed = prop_oneof![
        Just(("Host", "{addr}")),
        Just(("Host", "admin.internal")),
        Just(("host", "{addr}:80")),
        Just(("Authorization", "Bearer {key}")),
        Just(("Authorization", "bearer {key}")),
        Just(("Authorization", "Basic {key}")),
        Just(("Authorization", "Bearer airq_nobody00_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")),
        Just(("X-Api-Key", "{key}")),
        Just(("x-api-key", "{key}, {key}")),
        Just(("X-Api-Key", "")),
        Just(("X-Airq-User", "root")),
        Just(("X_Airq_User", "root")),
        Just(("x-airq_groups", "admin")),
        Just(("X-AIRQ-KEY-ID", "someone")),
        Just(("X-Airq-Anything", "1")),
        Just(("Connection", "keep-alive, x-secret-hop")),
        Just(("Connection", "Upgrade")),
        Just(("Connection", "x-api-key")),
        Just(("x-secret-hop", "leak")),
        Just(("Upgrade", "h2c")),
        Just(("Upgrade", "websocket")),
        Just(("Keep-Alive", "timeout=5")),
        Just(("TE", "trailers")),
        Just(("Proxy-Authorization", "Basic c2VjcmV0")),
        Just(("Proxy-Connection", "keep-alive")),
        Just(("Transfer-Encoding", "chunked")),
        Just(("Transfer-Encoding", "gzip, chunked")),
        Just(("Content-Length", "0")),
        Just(("Content-Length", "3")),
        Just(("Content-Length", "3, 3")),
        Just(("Content-Length", "-1")),
        Just(("Content-Length", "99999999999999999999")),
        Just(("X-Forwarded-For", "1.2.3.4, not-an-address")),
        Just(("X-Forwarded-Proto", "gopher")),
        Just(("X-Forwarded-Host", "evil.example")),
        Just(("Origin", "https://evil.example")),
        Just(("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
        Just(("traceparent", "zz-garbage")),
        Just(("X-Request-Id", "caller-id")),
        Just(("Expect", "100-continue")),
    ]
    .prop_map(|(name, value)| (name.to_owned(), value.to_owned()));
    // Any token as a name, any visible text (and tabs) as a value.
    let random = ("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}", "[ -~\t]{0,40}");
    prop_oneof![4 => fixed, 1 => random]
}

fn target() -> impl Strategy<Value = String> {
    let base = prop_oneof![
        Just("/echo".to_owned()),
        Just("/private/echo".to_owned()),
        Just("/private/../echo".to_owned()),
        Just("/PRIVATE/echo".to_owned()),
        Just("//private/echo".to_owned()),
        Just("/private%2fecho".to_owned()),
        Just("http://{addr}/private/echo".to_owned()),
        Just("http://admin.internal/echo".to_owned()),
        Just("*".to_owned()),
        Just("/admin/users".to_owned()),
        Just("/metrics".to_owned()),
        "/[a-z/%.]{0,20}",
    ];
    (base, proptest::option::of("[a-z=&%]{0,12}")).prop_map(|(path, query)| match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    })
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    target: String,
    headers: Vec<Header>,
    body: Vec<u8>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("HEAD"),
            Just("DELETE"),
            Just("OPTIONS"),
            Just("PUT"),
            Just("get"),
            Just("CONNECT"),
            Just("TRACE"),
        ],
        target(),
        proptest::collection::vec(header(), 0..10),
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(method, target, headers, body)| Case {
            method,
            target,
            headers,
            body,
        })
}

/// What came back: the status (0 when the connection closed without an answer) and the whole answer.
async fn send(addr: &str, bytes: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "no answer within 10 s to {:?}",
        String::from_utf8_lossy(bytes)
    );
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

struct World {
    runtime: tokio::runtime::Runtime,
    /// The public route's upstream, and the private route's (so that what reached the private route is known).
    upstream: Upstream,
    private: Upstream,
    gateway: Gateway,
    key: String,
    key_id: String,
    /// A client address per case (the failed-authentication limit is per address).
    next_client: AtomicU32,
}

impl World {
    fn start() -> Arc<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let (upstream, private, gateway, key) = runtime.block_on(async {
            let upstream = Upstream::start("up").await;
            let private = Upstream::start("private").await;
            let routes = format!(
                "routes:
- {{ id: up, pathPrefix: /, upstream: '{0}', timeoutSeconds: 5, access: {{ public: true }} }}
- {{ id: private, pathPrefix: /private/, upstream: '{1}', stripPrefix: true, timeoutSeconds: 5, access: {{ groups: [fuzzers] }} }}
",
                upstream.url, private.url
            );
            let gateway = Gateway::start(&routes, &[("AIRQ_TRUST_FORWARDED_FOR", "true")]).await;
            let key = gateway.user_with_key("fuzz", &["fuzzers"], json!({})).await;
            (upstream, private, gateway, key)
        });
        // `airq_<id>_<secret>`: the id is what the upstream gets in X-Airq-Key-Id.
        let key_id = key.split('_').nth(1).unwrap().to_owned();
        Arc::new(Self {
            runtime,
            upstream,
            private,
            gateway,
            key,
            key_id,
            next_client: AtomicU32::new(1),
        })
    }

    fn check(&self, case: &Case) -> Result<(), TestCaseError> {
        let addr = self.gateway.addr();
        let fill = |text: &str| text.replace("{key}", &self.key).replace("{addr}", &addr);
        let target = fill(&case.target);
        let headers: Vec<(String, String)> = case.headers.iter().map(|(n, v)| (n.clone(), fill(v))).collect();
        let mut head = format!("{} {target} HTTP/1.1\r\n", case.method);
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        for (name, value) in &headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        head.push_str(&format!(
            "X-Forwarded-For: 10.{}.{}.{}\r\n{CASE_HEADER}: {client}\r\nConnection: close\r\n\r\n",
            (client >> 16) & 0xff,
            (client >> 8) & 0xff,
            client & 0xff
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&case.body);

        let (status, answer) = self.runtime.block_on(send(&addr, &bytes));
        // The upstream answers before the gateway does: what it saw is recorded by now. (An earlier case whose body
        // never came may be recorded only now, when the gateway gave up on it: the case header tells them apart.)
        let this_case = |seen: &common::Seen| seen.headers.get(CASE_HEADER) == Some(&client.to_string());
        let public_hits: Vec<common::Seen> = self.upstream.hits().into_iter().filter(this_case).collect();
        let private_hits: Vec<common::Seen> = self.private.hits().into_iter().filter(this_case).collect();
        let request = String::from_utf8_lossy(&bytes).to_string();
        prop_assert!(status != 500, "500 for {request:?}:\n{answer}");
        let new = public_hits.len() + private_hits.len();
        prop_assert!(new <= 1, "one request reached the upstreams {new} times: {request:?}");
        let count = |name: &str| headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count();
        let two_ways = count("authorization") > 1 || count("x-api-key") > 1 || count("host") > 1;
        if matches!(case.method, "CONNECT" | "TRACE") {
            prop_assert!(
                status == 405 || status == 400 || status == 0,
                "{status} for {request:?}:\n{answer}"
            );
        }
        if two_ways && !matches!(case.method, "CONNECT" | "TRACE") {
            prop_assert!(status == 400 || status == 0, "{status} for {request:?}:\n{answer}");
        }
        let (seen, upstream, private) = match (public_hits.first(), private_hits.first()) {
            (Some(seen), _) => (seen, &self.upstream, false),
            (None, Some(seen)) => (seen, &self.private, true),
            (None, None) => return Ok(()),
        };
        prop_assert!(!two_ways, "an ambiguous request was forwarded: {request:?}\n{seen:?}");
        prop_assert!(
            !matches!(case.method, "CONNECT" | "TRACE"),
            "{} was forwarded: {request:?}",
            case.method
        );
        let context = || format!("{request:?}\nupstream saw {seen:?}");
        prop_assert!(!seen.headers.contains_key("x-api-key"), "{}", context());
        prop_assert!(
            seen.headers.values().all(|value| !value.contains(&self.key)),
            "the key reached the upstream: {}",
            context()
        );
        // Hop-by-hop headers, and every header a `Connection` header names, are the connection's, not the message's.
        let named: Vec<String> = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, value)| value.split(',').map(|n| n.trim().to_ascii_lowercase()))
            // The gateway's own identity headers are set after the caller's are gone: checked below.
            .filter(|name| !name.replace('_', "-").starts_with("x-airq-"))
            .collect();
        let fixed = [
            "keep-alive",
            "te",
            "proxy-authorization",
            "proxy-connection",
            "upgrade",
            "connection",
        ];
        for hop in fixed.iter().copied().chain(named.iter().map(String::as_str)) {
            prop_assert!(!seen.headers.contains_key(hop), "{hop} forwarded: {}", context());
        }
        let upstream_host = upstream.addr.to_string();
        prop_assert_eq!(
            seen.headers.get("host").map(String::as_str),
            Some(upstream_host.as_str()),
            "{}",
            context()
        );
        let identity: Vec<(&String, &String)> = seen
            .headers
            .iter()
            .filter(|(name, _)| name.replace('_', "-").starts_with("x-airq-"))
            .collect();
        let authenticated = seen.headers.contains_key("x-airq-user");
        if authenticated {
            prop_assert_eq!(identity.len(), 3, "{}", context());
            prop_assert_eq!(seen.headers["x-airq-user"].as_str(), "fuzz", "{}", context());
            prop_assert_eq!(seen.headers["x-airq-groups"].as_str(), "fuzzers", "{}", context());
            prop_assert_eq!(
                seen.headers["x-airq-key-id"].as_str(),
                self.key_id.as_str(),
                "{}",
                context()
            );
        } else {
            prop_assert!(identity.is_empty(), "forged identity headers passed: {}", context());
        }
        if private {
            prop_assert!(authenticated, "the private route without the key: {}", context());
        }
        Ok(())
    }
}

/// The requests of `tests/corpus/requests.txt`.
fn corpus() -> Vec<Case> {
    let text = include_str!("corpus/requests.txt");
    let methods = ["GET", "POST", "HEAD", "DELETE", "OPTIONS", "PUT", "CONNECT", "TRACE"];
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut parts = line.split(" | ");
            let (method, target) = parts.next().unwrap().split_once(' ').unwrap();
            let method = methods.into_iter().find(|m| *m == method).unwrap();
            let headers = parts
                .map(|header| {
                    let (name, value) = header.split_once(": ").unwrap();
                    (name.to_owned(), value.to_owned())
                })
                .collect();
            Case {
                method,
                target: target.to_owned(),
                headers,
                body: b"abc".to_vec(),
            }
        })
        .collect()
}

#[test]
fn whatever_a_stranger_sends_the_gateway_answers_and_forwards_nothing_it_must_not() {
    let world = World::start();
    let corpus = corpus();
    assert!(corpus.len() >= 20, "the corpus lost its requests");
    for case in &corpus {
        if let Err(failure) = world.check(case) {
            panic!(
                "corpus request {case:?}: {failure}\n\ngateway log (tail):\n{}",
                tail(&world.gateway.log(), 40)
            );
        }
    }
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let started = std::time::Instant::now();
    let result = runner.run(&case(), |case| world.check(&case));
    if let Err(failure) = result {
        panic!("{failure}\n\ngateway log (tail):\n{}", tail(&world.gateway.log(), 40));
    }
    eprintln!("{cases} requests checked in {:.1} s", started.elapsed().as_secs_f64());
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
