//! The gateway's route table for a namespace: the platform's own routes and one per AdhocService. Two
//! AdhocServices asking for the same host and prefix conflict: the older one keeps the route.

use std::collections::BTreeMap;
use std::sync::Arc;

use airq_api::common::Access;
use airq_api::gateway::{Route, RouteTable};
use airq_api::{AdhocService, Platform};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

/// Base URL of a Service in the cluster.
pub fn service_url(service: &str, namespace: &str) -> String {
    format!("http://{service}.{namespace}.svc:80")
}

/// The key two routes conflict on: host and path prefix without its trailing slash. Borrowed, so comparing keys
/// allocates nothing (the route table is rebuilt from every AdhocService of a namespace).
pub fn route_key(adhoc: &AdhocService) -> (Option<&str>, &str) {
    (
        adhoc.spec.route.host.as_deref(),
        adhoc.spec.route.path_prefix.trim_end_matches('/'),
    )
}

/// The order in which AdhocServices claim routes: oldest first, then by name.
fn claim_order(adhoc: &AdhocService) -> (Option<&Time>, &str) {
    (
        adhoc.metadata.creation_timestamp.as_ref(),
        adhoc.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The AdhocService among `peers` that holds the route `adhoc` asks for, when it is not `adhoc` itself. Services
/// being deleted take part in nothing.
pub fn conflict_winner<'a>(adhoc: &AdhocService, peers: &'a [Arc<AdhocService>]) -> Option<&'a AdhocService> {
    let key = route_key(adhoc);
    let mine = claim_order(adhoc);
    peers
        .iter()
        .map(AsRef::as_ref)
        .filter(|peer| peer.metadata.deletion_timestamp.is_none() && route_key(peer) == key)
        .filter(|peer| claim_order(peer) < mine)
        .min_by(|a, b| claim_order(a).cmp(&claim_order(b)))
}

/// For every AdhocService that loses its route to an older one, the winner's name.
pub fn conflicts(adhoc_services: &[Arc<AdhocService>]) -> BTreeMap<String, String> {
    let mut live: Vec<&AdhocService> = adhoc_services
        .iter()
        .map(AsRef::as_ref)
        .filter(|a| a.metadata.deletion_timestamp.is_none())
        .collect();
    live.sort_by(|a, b| claim_order(a).cmp(&claim_order(b)));
    let mut owners: BTreeMap<(Option<&str>, &str), String> = BTreeMap::new();
    let mut losers = BTreeMap::new();
    for adhoc in live {
        let name = adhoc.name_any();
        match owners.get(&route_key(adhoc)) {
            Some(winner) => {
                losers.insert(name, winner.clone());
            }
            None => {
                owners.insert(route_key(adhoc), name);
            }
        }
    }
    losers
}

/// The route table of `platform`'s namespace, given the AdhocServices of that namespace.
pub fn table(platform: &Platform, adhoc_services: &[Arc<AdhocService>]) -> RouteTable {
    let namespace = platform.namespace().unwrap_or_default();
    let spec = &platform.spec;
    let mut routes = vec![
        Route {
            id: "front".to_owned(),
            path_prefix: "/".to_owned(),
            host: None,
            upstream: service_url("airq-front", &namespace),
            strip_prefix: false,
            timeout_seconds: 30,
            retries: 1,
            access: spec.front.access.clone().unwrap_or_else(Access::public),
            rate_limit: None,
            cors: None,
        },
        Route {
            id: "predictive".to_owned(),
            path_prefix: airq_api::paths::PREDICTIVE.to_owned(),
            host: None,
            upstream: service_url("airq-predictive", &namespace),
            strip_prefix: true,
            timeout_seconds: 60,
            retries: 1,
            access: spec
                .predictive
                .access
                .clone()
                .unwrap_or_else(|| Access::groups(&["developers"])),
            rate_limit: None,
            cors: None,
        },
        Route {
            id: "etl".to_owned(),
            path_prefix: airq_api::paths::ETL.to_owned(),
            host: None,
            upstream: service_url("airq-etl", &namespace),
            strip_prefix: true,
            timeout_seconds: 60,
            retries: 0,
            access: spec
                .etl
                .access
                .clone()
                .unwrap_or_else(|| Access::groups(&["operators"])),
            rate_limit: None,
            cors: None,
        },
    ];
    let losers = conflicts(adhoc_services);
    for adhoc in adhoc_services {
        let name = adhoc.name_any();
        if adhoc.metadata.deletion_timestamp.is_some()
            || losers.contains_key(&name)
            || airq_api::validation::adhoc_service(&adhoc.spec).is_err()
        {
            continue;
        }
        routes.push(Route {
            id: format!("adhoc/{name}"),
            path_prefix: adhoc.spec.route.path_prefix.clone(),
            host: adhoc.spec.route.host.clone(),
            upstream: service_url(&format!("adhoc-{name}"), &namespace),
            strip_prefix: adhoc.spec.route.strip_prefix,
            timeout_seconds: adhoc.spec.route.timeout_seconds,
            retries: 1,
            access: adhoc.spec.access.clone(),
            rate_limit: adhoc.spec.route.rate_limit.clone(),
            cors: adhoc.spec.route.cors.clone(),
        });
    }
    let mut table = RouteTable { routes };
    table.sort();
    table
}
