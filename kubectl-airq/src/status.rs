//! `kubectl airq status`: every airq resource with its Ready condition — and when it is not Ready, the reason and
//! the operator's message saying why.

use airq_api::{AdhocService, EtlSchedule, Platform, PredictiveModel};
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One resource's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub ready: String,
    pub reason: String,
    pub detail: String,
    pub message: String,
}

/// The Ready condition of an object, or why there is none to trust: the operator has not yet seen the object's
/// current generation.
pub fn line<K: Resource<DynamicType = ()> + Serialize>(object: &K, detail: String) -> Line {
    let value = serde_json::to_value(object).unwrap_or_default();
    let status = &value["status"];
    let generation = object.meta().generation;
    let observed = status["observedGeneration"].as_i64();
    let ready = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let (ready, reason, message) = match (ready, observed == generation) {
        (_, false) => (
            "Unknown".to_owned(),
            "NotObserved".to_owned(),
            format!(
                "the operator has not reconciled generation {} yet (is it running?)",
                generation.unwrap_or_default()
            ),
        ),
        (None, true) => ("Unknown".to_owned(), "NoCondition".to_owned(), String::new()),
        (Some(c), true) => (text(&c["status"]), text(&c["reason"]), text(&c["message"])),
    };
    Line {
        namespace: object.namespace().unwrap_or_default(),
        kind: K::kind(&()).into_owned(),
        name: object.name_any(),
        ready,
        reason,
        detail,
        message,
    }
}

async fn list<K>(client: &kube::Client, namespace: Option<&str>) -> anyhow::Result<Vec<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
            "the cluster does not know {} (are airq's CRDs installed? helm install airq helm/airq)",
            K::plural(&())
        ),
        Err(e) => Err(anyhow::anyhow!("cannot list {}: {e}", K::plural(&()))),
    }
}

/// Every airq resource in `namespace` (every namespace when `None`), platform first.
pub async fn lines(client: &kube::Client, namespace: Option<&str>) -> anyhow::Result<Vec<Line>> {
    let mut lines = Vec::new();
    for p in list::<Platform>(client, namespace).await? {
        let detail = p.status.as_ref().and_then(|s| s.url.clone()).unwrap_or_default();
        lines.push(line(&p, detail));
    }
    for e in list::<EtlSchedule>(client, namespace).await? {
        let detail = match e.status.as_ref().and_then(|s| s.last_run.as_ref()) {
            Some(run) if run.succeeded => format!("last run {} (+{} rows)", run.job, run.rows_inserted),
            Some(run) => format!("last run {} failed", run.job),
            None => e
                .spec
                .schedule
                .clone()
                .map(|s| format!("schedule {s}"))
                .unwrap_or_default(),
        };
        lines.push(line(&e, detail));
    }
    for m in list::<PredictiveModel>(client, namespace).await? {
        let status = m.status.clone().unwrap_or_default();
        let phase = status.phase.map(|p| format!("{p:?}")).unwrap_or_default();
        let detail = match status.model_version {
            Some(v) => format!("{phase} {v}"),
            None => phase,
        };
        lines.push(line(&m, detail));
    }
    for a in list::<AdhocService>(client, namespace).await? {
        lines.push(line(&a, a.spec.route.path_prefix.clone()));
    }
    Ok(lines)
}

/// Prints the table; true when every resource is Ready.
pub async fn run(client: &kube::Client, namespace: Option<&str>) -> anyhow::Result<bool> {
    let lines = lines(client, namespace).await?;
    if lines.is_empty() {
        match namespace {
            Some(ns) => println!("No airq resources in namespace {ns}."),
            None => println!("No airq resources."),
        }
        return Ok(true);
    }
    let mut header = vec!["KIND", "NAME", "READY", "REASON", "DETAIL", "MESSAGE"];
    if namespace.is_none() {
        header.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            let mut row = vec![
                l.kind.clone(),
                l.name.clone(),
                l.ready.clone(),
                l.reason.clone(),
                l.detail.clone(),
                l.message.clone(),
            ];
            if namespace.is_none() {
                row.insert(0, l.namespace.clone());
            }
            row
        })
        .collect();
    crate::table::print(&header, &rows);
    let not_ready = lines.iter().filter(|l| l.ready != "True").count();
    if not_ready > 0 {
        eprintln!("{not_ready} of {} resources are not Ready.", lines.len());
    }
    Ok(not_ready == 0)
}
