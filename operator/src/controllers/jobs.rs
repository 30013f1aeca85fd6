//! Jobs the ETL and training reconcilers start: whether one has finished, what it reported through its pod's
//! termination message, and which finished Jobs are kept as history.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::error::{Error, Result};

/// Where a Job is.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Succeeded { at: Option<Time> },
    Failed { at: Option<Time>, message: String },
}

/// The state of `job`, from its conditions.
pub fn state(job: &Job) -> JobState {
    let status = job.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let holds = |type_: &str| conditions.iter().find(|c| c.type_ == type_ && c.status == "True");
    if let Some(failed) = holds("Failed") {
        return JobState::Failed {
            at: failed.last_transition_time.clone(),
            message: failed
                .message
                .clone()
                .unwrap_or_else(|| failed.reason.clone().unwrap_or_default()),
        };
    }
    if holds("Complete").is_some() {
        return JobState::Succeeded {
            at: status.and_then(|s| s.completion_time.clone()),
        };
    }
    JobState::Running
}

/// When `job` finished; `None` while it runs.
pub fn finished_at(job: &Job) -> Option<Time> {
    match state(job) {
        JobState::Running => None,
        JobState::Succeeded { at } | JobState::Failed { at, .. } => {
            at.or_else(|| job.metadata.creation_timestamp.clone())
        }
    }
}

/// The finished Job among `jobs` that finished last.
pub fn last_finished(jobs: &[Arc<Job>]) -> Option<Arc<Job>> {
    jobs.iter()
        .filter_map(|job| finished_at(job).map(|at| (at.0, job.name_any(), job)))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)))
        .map(|(_, _, job)| job.clone())
}

/// The names of the finished Jobs kept as history: the newest `successful` that succeeded and the newest `failed`
/// that failed. Running Jobs are not history.
pub fn history(jobs: &[Arc<Job>], successful: usize, failed: usize) -> BTreeSet<String> {
    let mut finished: Vec<(Time, String, bool)> = jobs
        .iter()
        .filter_map(|job| {
            let succeeded = matches!(state(job), JobState::Succeeded { .. });
            finished_at(job).map(|at| (at, job.name_any(), succeeded))
        })
        .collect();
    finished.sort_by(|a, b| b.0.0.cmp(&a.0.0).then_with(|| a.1.cmp(&b.1)));
    let kept_ok = finished.iter().filter(|j| j.2).take(successful);
    let kept_failed = finished.iter().filter(|j| !j.2).take(failed);
    kept_ok.chain(kept_failed).map(|j| j.1.clone()).collect()
}

/// What the finished Job `job`'s pod wrote to its termination log (the succeeded pod's, else any pod's).
pub async fn termination_message(ctx: &Context, namespace: &str, job: &str) -> Result<Option<String>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .map_err(|source| Error::ReadPods {
            job: job.to_owned(),
            source,
        })?;
    let messages: Vec<(bool, String)> = list
        .items
        .iter()
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let message = status
                .container_statuses
                .as_ref()?
                .iter()
                .find_map(|s| s.state.as_ref()?.terminated.as_ref()?.message.clone())?;
            Some((status.phase.as_deref() == Some("Succeeded"), message.trim().to_owned()))
        })
        .collect();
    Ok(messages
        .iter()
        .find(|(succeeded, _)| *succeeded)
        .or_else(|| messages.first())
        .map(|(_, message)| message.clone()))
}

/// The line that says why a pod failed, from its termination message (its log's end when it wrote none): the
/// first line of an `Error: …` block, else the last line; at most 300 characters.
pub fn last_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines
        .iter()
        .find(|l| l.starts_with("Error: "))
        .map(|l| l.trim_start_matches("Error: "))
        .or_else(|| lines.last().copied())
        .unwrap_or_default();
    line.chars().take(300).collect()
}

/// The report the finished Job `job` wrote to its termination log, parsed as `T`; the reason when there is none or
/// it cannot be read.
pub async fn report<T: DeserializeOwned>(ctx: &Context, namespace: &str, job: &str) -> Result<Result<T, String>> {
    Ok(match termination_message(ctx, namespace, job).await? {
        None => Err(format!("Job {job} left no termination message")),
        Some(message) => serde_json::from_str(&message)
            .map_err(|e| format!("Job {job} left a report that cannot be read ({e}): {message}")),
    })
}

#[cfg(test)]
mod tests {
    use super::last_line;

    #[test]
    fn the_line_that_says_why_a_pod_failed() {
        let error = "Error: unknown station \"Atlantis\"\n\nCaused by:\n    no such row\n";
        assert_eq!(last_line(error), "unknown station \"Atlantis\"");
        let log_end =
            "{\"level\":\"INFO\",\"message\":\"reading\"}\n{\"level\":\"ERROR\",\"message\":\"out of memory\"}\n";
        assert_eq!(
            last_line(log_end),
            "{\"level\":\"ERROR\",\"message\":\"out of memory\"}"
        );
        assert_eq!(last_line(""), "");
        assert_eq!(last_line(&"x".repeat(1000)).len(), 300);
    }
}
