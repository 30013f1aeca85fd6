//! The gateway's route table for a namespace: the platform's own routes and one per AdhocService. Two
//! AdhocServices asking for the same host and prefix conflict: the older one keeps the route.
//!
//! Where each route leads is the caller's: the operator passes the Services of the namespace, the one-machine mode
//! (`airq up`) the local addresses of its processes.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::common::Access;
use crate::gateway::{Route, RouteTable};
use crate::{AdhocService, Platform};

/// Base URL of a Service in the cluster.
pub fn service_url(service: &str, namespace: &str) -> String {
    format!("http://{service}.{namespace}.svc:80")
}

/// What a route leads to, for the caller to turn into a URL.
#[derive(Debug, Clone, Copy)]
pub enum Upstream<'a> {
    /// One of the platform's services, by its Service name (`airq-front`, `airq-predictive`, `airq-etl`).
    Core(&'static str),
    /// An AdhocService (its Service is `adhoc-<name>`).
    Adhoc(&'a AdhocService),
}

impl Upstream<'_> {
    /// The name of the Service behind it in a cluster.
    pub fn service(&self) -> String {
        match self {
            Self::Core(name) => (*name).to_owned(),
            Self::Adhoc(adhoc) => format!("adhoc-{}", adhoc.name_any()),
        }
    }

    /// Its URL in the cluster, in `namespace`.
    pub fn in_cluster(&self, namespace: &str) -> String {
        service_url(&self.service(), namespace)
    }
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

/// The route table of `platform`'s namespace, given the AdhocServices of that namespace; `upstream` says where each
/// route leads (a route it has no URL for is left out).
pub fn table<'a>(
    platform: &Platform,
    adhoc_services: &'a [Arc<AdhocService>],
    mut upstream: impl FnMut(Upstream<'a>) -> Option<String>,
) -> RouteTable {
    let spec = &platform.spec;
    let core = [
        Route {
            id: "front".to_owned(),
            path_prefix: "/".to_owned(),
            host: None,
            upstream: "airq-front".to_owned(),
            strip_prefix: false,
            timeout_seconds: 30,
            retries: 1,
            access: spec.front.access.clone().unwrap_or_else(Access::public),
            rate_limit: None,
            cors: None,
            websocket: false,
        },
        Route {
            id: "predictive".to_owned(),
            path_prefix: crate::paths::PREDICTIVE.to_owned(),
            host: None,
            upstream: "airq-predictive".to_owned(),
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
            websocket: false,
        },
        Route {
            id: "etl".to_owned(),
            path_prefix: crate::paths::ETL.to_owned(),
            host: None,
            upstream: "airq-etl".to_owned(),
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
            websocket: false,
        },
    ];
    let mut routes = Vec::with_capacity(core.len() + adhoc_services.len());
    for (service, mut route) in ["airq-front", "airq-predictive", "airq-etl"].into_iter().zip(core) {
        if let Some(url) = upstream(Upstream::Core(service)) {
            route.upstream = url;
            routes.push(route);
        }
    }
    let losers = conflicts(adhoc_services);
    for adhoc in adhoc_services {
        let name = adhoc.name_any();
        if adhoc.metadata.deletion_timestamp.is_some()
            || losers.contains_key(&name)
            || crate::validation::adhoc_service(&adhoc.spec).is_err()
        {
            continue;
        }
        let Some(url) = upstream(Upstream::Adhoc(adhoc)) else {
            continue;
        };
        routes.push(Route {
            id: format!("adhoc/{name}"),
            path_prefix: adhoc.spec.route.path_prefix.clone(),
            host: adhoc.spec.route.host.clone(),
            upstream: url,
            strip_prefix: adhoc.spec.route.strip_prefix,
            timeout_seconds: adhoc.spec.route.timeout_seconds,
            retries: 1,
            access: adhoc.spec.access.clone(),
            rate_limit: adhoc.spec.route.rate_limit.clone(),
            cors: adhoc.spec.route.cors.clone(),
            websocket: adhoc.spec.route.websocket,
        });
    }
    let mut table = RouteTable { routes };
    table.sort();
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> Platform {
        serde_saphyr::from_str(
            "apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: { name: airq, namespace: air }\nspec: {}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// An AdhocService created `second` seconds into the day, asking for `prefix`.
    fn adhoc(name: &str, prefix: &str, second: u32) -> Arc<AdhocService> {
        let yaml = format!(
            "apiVersion: airq.dev/v1alpha1\nkind: AdhocService\nmetadata: {{ name: {name}, namespace: air, creationTimestamp: '2026-12-06T00:00:{second:02}Z' }}\n\
             spec: {{ image: example/reports:1, route: {{ pathPrefix: '{prefix}' }}, access: {{ groups: [analysts] }} }}\n"
        );
        Arc::new(serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}")))
    }

    fn ids(table: &RouteTable) -> Vec<(&str, &str)> {
        table
            .routes
            .iter()
            .map(|r| (r.id.as_str(), r.upstream.as_str()))
            .collect()
    }

    #[test]
    fn the_core_routes_lead_where_the_caller_says() {
        let core = table(&platform(), &[], |upstream| Some(upstream.in_cluster("air")));
        let mut found = ids(&core);
        found.sort_unstable();
        assert_eq!(
            found,
            [
                ("etl", "http://airq-etl.air.svc:80"),
                ("front", "http://airq-front.air.svc:80"),
                ("predictive", "http://airq-predictive.air.svc:80"),
            ]
        );
        let local = table_without_etl();
        assert!(
            local
                .routes
                .iter()
                .all(|r| r.id != "etl" && r.upstream.starts_with("http://127.0.0.1"))
        );
    }

    fn table_without_etl() -> RouteTable {
        table(&platform(), &[], |upstream| match upstream {
            Upstream::Core("airq-etl") => None,
            other => Some(format!("http://127.0.0.1:1/{}", other.service())),
        })
    }

    #[test]
    fn the_older_of_two_adhoc_services_keeps_a_contested_route_and_invalid_ones_get_none() {
        let services = [
            adhoc("newer", "/reports/", 30),
            adhoc("older", "/reports", 10),
            adhoc("other", "/maps", 20),
            adhoc("bad", "/api/compare", 5),
        ];
        let found = table(&platform(), &services, |upstream| Some(upstream.in_cluster("air")));
        let adhoc: Vec<_> = ids(&found)
            .into_iter()
            .filter(|(id, _)| id.starts_with("adhoc/"))
            .collect();
        assert_eq!(adhoc.len(), 2, "{adhoc:?}");
        assert!(
            adhoc.contains(&("adhoc/older", "http://adhoc-older.air.svc:80")),
            "{adhoc:?}"
        );
        assert!(
            adhoc.contains(&("adhoc/other", "http://adhoc-other.air.svc:80")),
            "{adhoc:?}"
        );
        assert_eq!(
            conflicts(&services),
            BTreeMap::from([("newer".to_owned(), "older".to_owned())])
        );
        assert_eq!(
            conflict_winner(&services[0], &services).map(|w| w.name_any()),
            Some("older".to_owned())
        );
        assert!(conflict_winner(&services[1], &services).is_none());
        // A caller with no address for one of them leaves only that one out.
        let some = table(&platform(), &services, |upstream| match upstream {
            Upstream::Adhoc(a) if a.name_any() == "other" => None,
            other => Some(other.in_cluster("air")),
        });
        assert!(some.routes.iter().any(|r| r.id == "adhoc/older"));
        assert!(some.routes.iter().all(|r| r.id != "adhoc/other"));
    }
}
