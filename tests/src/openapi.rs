//! Checks an OpenAPI document against the server that serves it: every reference resolves, and every documented
//! operation reaches a handler (the router knows the path and the method), called with made-up path parameters.

use serde_json::Value;

/// What went wrong with a document, one line per problem; empty when it is right.
pub async fn problems(http: &reqwest::Client, base: &str, key: Option<&str>, document: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let text = document.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().unwrap_or_default();
        match target.strip_prefix("#/components/schemas/") {
            Some(name) if document["components"]["schemas"][name].is_object() => {}
            _ => problems.push(format!("the reference {target} points at nothing")),
        }
    }
    let Some(paths) = document["paths"].as_object() else {
        problems.push("the document has no paths".to_owned());
        return problems;
    };
    for (path, item) in paths {
        // Made-up values: a handler answers for them (usually "no such …"); only the router's own refusals count.
        let url = path
            .split('/')
            .map(|part| {
                if part.starts_with('{') && part.ends_with('}') {
                    "0-no-such-thing"
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "put", "post", "patch", "delete"] {
            if !item[method].is_object() {
                continue;
            }
            let mut request = http.request(
                method.to_uppercase().parse().unwrap_or(reqwest::Method::GET),
                format!("{base}{url}"),
            );
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            if method != "get" && method != "delete" {
                request = request.header("content-type", "application/json").body("{}");
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    problems.push(format!("{} {path}: {e}", method.to_uppercase()));
                    continue;
                }
            };
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            // A router that does not know the path answers 404 without a JSON error (axum), or says so (the
            // dashboard's fallback for `/api/…`, the gateway's own); one that does not know the method answers 405.
            let unrouted = status == 405
                || (status == 404
                    && (!body.contains("\"error\"")
                        || body.contains("no API endpoint")
                        || body.contains("\"no_route\"")));
            if unrouted {
                problems.push(format!(
                    "{} {path} ({url}) is documented but not served: {status} {body}",
                    method.to_uppercase()
                ));
            }
        }
    }
    problems
}
