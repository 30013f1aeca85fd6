//! EtlSchedule → a CronJob running `airq-etl load` on the schedule, or a Job for a one-off load or a backfill, plus a
//! Job for each `runRequest`. The database URL (and the OpenAQ API key) reach the pod from their Secrets.

use std::collections::BTreeSet;
use std::sync::Arc;

use airq_api::etl::{EtlSchedule, EtlScheduleStatus, LoadRunStatus};
use airq_api::reports::LoadReport;
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::children::{self, Child, ChildKind, Desired, Owner};
use crate::context::Context;
use crate::controllers::jobs::{self, JobState};
use crate::error::Result;
use crate::status::{condition, event, park, refused, update};
use crate::workload::{database_env, env, job_container, pod_template, secret_env, tmp_volume};

/// The label naming the EtlSchedule a load Job belongs to (also on Jobs its CronJob starts).
pub const SCHEDULE_LABEL: &str = "airq.dev/etl-schedule";

/// The CronJob of a scheduled EtlSchedule.
pub fn cron_job_name(name: &str) -> String {
    format!("etl-{name}")
}

pub use airq_api::fingerprint;

fn job_template(etl: &EtlSchedule, owner: &Owner, image: String) -> (ObjectMeta, JobSpec) {
    let spec = &etl.spec;
    let mut labels = owner.labels("airq-etl");
    labels.insert(SCHEDULE_LABEL.to_owned(), owner.name.clone());
    let mut environment = vec![
        env("AIRQ_LOG_FORMAT", "json"),
        // Named as in the namespace, like models (and like `airq up`): the ETL API lists runs by that name.
        env("AIRQ_LOAD_NAME", owner.name.clone()),
        env("AIRQ_LOAD_SPEC", spec.load_spec().to_string()),
        database_env(&spec.database),
    ];
    if let Some(openaq) = &spec.source.openaq {
        environment.push(secret_env(
            "AIRQ_OPENAQ_API_KEY",
            &openaq.api_key_secret.name,
            &openaq.api_key_secret.key,
        ));
    }
    let container = job_container("load", image, vec!["load".to_owned()], environment, &spec.pod);
    let template = pod_template(
        labels.clone(),
        vec![container],
        &spec.pod,
        Some("Never"),
        vec![tmp_volume()],
        true,
    );
    let meta = ObjectMeta {
        labels: Some(labels),
        ..ObjectMeta::default()
    };
    let job = JobSpec {
        backoff_limit: Some(2),
        template,
        ..JobSpec::default()
    };
    (meta, job)
}

/// The objects an EtlSchedule wants, given its Jobs: pure.
pub fn build(etl: &EtlSchedule, owner: &Owner, image: String, own_jobs: &[Arc<Job>]) -> Desired {
    let spec = &etl.spec;
    let (template_meta, job_spec) = job_template(etl, owner, image);
    let mut children = Vec::new();
    let job = |name: String| {
        let mut metadata = owner.meta(&name, template_meta.labels.clone().unwrap_or_default());
        metadata.annotations = None;
        Child::Job(Job {
            metadata,
            spec: Some(job_spec.clone()),
            status: None,
        })
    };
    match &spec.schedule {
        Some(schedule) => children.push(Child::CronJob(CronJob {
            metadata: owner.meta(&cron_job_name(&owner.name), owner.labels("airq-etl")),
            spec: CronJobSpec {
                schedule: schedule.clone(),
                time_zone: spec.time_zone.clone(),
                suspend: Some(spec.suspend),
                concurrency_policy: Some(spec.concurrency_policy.as_str().to_owned()),
                successful_jobs_history_limit: Some(spec.successful_jobs_history_limit),
                failed_jobs_history_limit: Some(spec.failed_jobs_history_limit),
                job_template: JobTemplateSpec {
                    metadata: Some(template_meta.clone()),
                    spec: Some(job_spec.clone()),
                },
                ..CronJobSpec::default()
            },
            status: None,
        })),
        // Run once: one Job per distinct load (a changed source or range is a new load).
        None if !spec.suspend => children.push(job(format!("etl-{}-{}", owner.name, fingerprint(&spec.load_spec())))),
        None => {}
    }
    if let Some(request) = &spec.run_request {
        children.push(job(airq_api::etl::run_job_name(&owner.name, request)));
    }
    let keep: BTreeSet<(ChildKind, String)> = jobs::history(
        own_jobs,
        usize::try_from(spec.successful_jobs_history_limit).unwrap_or(0),
        usize::try_from(spec.failed_jobs_history_limit).unwrap_or(0),
    )
    .into_iter()
    .map(|name| (ChildKind::Job, name))
    .collect();
    Desired { children, keep }
}

/// What the EtlSchedule reconciler observed besides the resource, for [`derive_status`].
#[derive(Debug, Clone, Default)]
pub struct EtlObserved<'a> {
    /// The last finished run (from its Job and report), or the one the status already has.
    pub last_run: Option<LoadRunStatus>,
    /// How far the loads have read.
    pub watermark: Option<String>,
    /// The schedule's CronJob.
    pub cron_job: Option<&'a CronJob>,
    /// For a one-off load (no schedule), where its Job is.
    pub one_off: Option<JobState>,
}

/// The status of a valid `etl`, pure: `Ready` says whether the schedule runs (or the one-off load finished) and
/// why not — a failed last run of a schedule is `LoadFailed` while the schedule goes on; the times come from the
/// CronJob and the runs, or stay as `previous` had them.
pub fn derive_status(etl: &EtlSchedule, previous: &EtlScheduleStatus, observed: EtlObserved) -> EtlScheduleStatus {
    let generation = etl.metadata.generation;
    let last_run = observed.last_run;
    let last_schedule_time = observed
        .cron_job
        .and_then(|c| c.status.as_ref())
        .and_then(|s| s.last_schedule_time.clone())
        .or(previous.last_schedule_time.clone());
    let failed_last = last_run.as_ref().is_some_and(|r| !r.succeeded);
    let (ready, reason, message) = match (&etl.spec.schedule, observed.one_off) {
        (Some(schedule), _) if failed_last => (
            false,
            "LoadFailed",
            format!(
                "the last run failed: {}; the schedule {schedule} goes on",
                last_run.as_ref().and_then(|r| r.message.clone()).unwrap_or_default()
            ),
        ),
        (Some(_), _) if etl.spec.suspend => (true, "Suspended", "the schedule is suspended".to_owned()),
        (Some(schedule), _) => (true, "Scheduled", format!("loads run on the schedule {schedule}")),
        (None, _) if etl.spec.suspend => (false, "Suspended", "the one-off load is suspended".to_owned()),
        (None, Some(JobState::Succeeded { .. })) => (true, "Succeeded", "the load finished".to_owned()),
        (None, Some(JobState::Failed { message, .. })) => (false, "LoadFailed", message),
        (None, _) => (false, "Running", "the load runs".to_owned()),
    };
    let last_success_time = last_run
        .as_ref()
        .filter(|r| r.succeeded)
        .and_then(|r| r.completion_time.clone())
        .or(previous.last_success_time.clone());
    EtlScheduleStatus {
        observed_generation: generation,
        conditions: vec![condition(
            &previous.conditions,
            "Ready",
            ready,
            reason,
            message,
            generation,
        )],
        source: Some(etl.spec.source.kind().to_owned()),
        last_schedule_time,
        last_success_time,
        last_run,
        watermark: observed.watermark,
    }
}

/// Reconciles one EtlSchedule.
pub async fn reconcile(etl: Arc<EtlSchedule>, ctx: Arc<Context>) -> Result<Action> {
    let owner = Owner::of(etl.as_ref())?;
    let previous = etl.status.clone().unwrap_or_default();
    let source = Some(etl.spec.source.kind().to_owned());

    let mut blocked = airq_api::validation::etl_schedule(&etl.spec)
        .err()
        .map(|problems| ("InvalidSpec", problems.to_string()));
    if blocked.is_none() {
        let mut secrets = vec![etl.spec.database.secret_name.clone()];
        if let Some(openaq) = &etl.spec.source.openaq {
            secrets.push(openaq.api_key_secret.name.clone());
        }
        let missing: Vec<String> = secrets
            .into_iter()
            .filter(|s| !ctx.stores.secret_exists(&owner.namespace, s))
            .collect();
        if !missing.is_empty() {
            blocked = Some((
                "SecretNotFound",
                format!(
                    "Secret {} not found in namespace {}",
                    missing.join(", "),
                    owner.namespace
                ),
            ));
        }
    }
    if let Some((reason, message)) = blocked {
        park(
            &ctx,
            etl.as_ref(),
            reason,
            message,
            serde_json::json!({ "source": source }),
        )
        .await?;
        return Ok(Action::await_change());
    }

    let all_jobs: Vec<Arc<Job>> = ctx.stores.jobs.state_filter(|job| {
        job.namespace().as_deref() == Some(owner.namespace.as_str())
            && job.labels().get(SCHEDULE_LABEL) == Some(&owner.name)
    });
    let own_jobs: Vec<Arc<Job>> = all_jobs
        .iter()
        .filter(|job| job.owner_references().iter().any(|r| r.uid == owner.uid))
        .cloned()
        .collect();
    let image = etl.spec.image.clone().unwrap_or_else(|| ctx.args.image("etl"));
    let mut desired = build(&etl, &owner, image, &own_jobs);
    if etl.spec.image.is_none() {
        crate::workload::set_pull_policy(&mut desired.children, &ctx.args.image_pull_policy);
    }
    let one_off = desired
        .children
        .iter()
        .find(|c| matches!(c, Child::Job(_)) && !c.name().contains("-run-"))
        .map(|c| c.name().to_owned());
    let changes = match children::apply(&ctx, &owner, desired).await {
        Ok(changes) => changes,
        Err(error) => return Err(refused(&ctx, etl.as_ref(), error).await),
    };
    if !changes.is_empty() {
        event(&ctx, etl.as_ref(), false, "Applied", "Apply", changes.describe());
    }

    // The last finished run, whoever started it (this operator or the CronJob).
    let mut last_run = previous.last_run.clone();
    let mut watermark = previous.watermark.clone();
    if let Some(job) = jobs::last_finished(&all_jobs)
        && previous.last_run.as_ref().map(|r| r.job.as_str()) != Some(job.name_any().as_str())
    {
        let job_name = job.name_any();
        let start_time = job.status.as_ref().and_then(|s| s.start_time.clone());
        let mut anomalies = Vec::new();
        let run = match jobs::state(&job) {
            JobState::Succeeded { at } => match jobs::report::<LoadReport>(&ctx, &owner.namespace, &job_name).await? {
                Ok(report) => {
                    watermark = report.watermark.clone().or(watermark);
                    anomalies.clone_from(&report.anomalies);
                    LoadRunStatus {
                        job: job_name.clone(),
                        succeeded: true,
                        start_time,
                        completion_time: at,
                        rows_inserted: report.rows_inserted,
                        rows_updated: report.rows_updated,
                        rows_rejected: report.rows_rejected,
                        message: None,
                    }
                }
                Err(problem) => LoadRunStatus {
                    job: job_name.clone(),
                    succeeded: true,
                    start_time,
                    completion_time: at,
                    message: Some(problem),
                    ..LoadRunStatus::default()
                },
            },
            JobState::Failed { at, message } => {
                let detail = jobs::report::<serde_json::Value>(&ctx, &owner.namespace, &job_name)
                    .await?
                    .err()
                    .unwrap_or_default();
                LoadRunStatus {
                    job: job_name.clone(),
                    succeeded: false,
                    start_time,
                    completion_time: at,
                    message: Some(if detail.is_empty() {
                        message
                    } else {
                        format!("{message}: {detail}")
                    }),
                    ..LoadRunStatus::default()
                }
            }
            JobState::Running => LoadRunStatus::default(),
        };
        let (warning, reason) = if run.succeeded {
            (false, "LoadSucceeded")
        } else {
            (true, "LoadFailed")
        };
        let note = match &run.message {
            Some(message) => format!("Job {job_name}: {message}"),
            None => format!(
                "Job {job_name}: {} rows inserted, {} updated, {} rejected",
                run.rows_inserted, run.rows_updated, run.rows_rejected
            ),
        };
        event(&ctx, etl.as_ref(), warning, reason, "Load", note);
        if !anomalies.is_empty() {
            let note = format!("Job {job_name}: {}", anomalies.join("; "));
            event(&ctx, etl.as_ref(), true, "LoadUnusual", "Load", note);
        }
        last_run = Some(run);
    }

    let cron_job = ctx
        .stores
        .cron_jobs
        .get(&ObjectRef::new(&cron_job_name(&owner.name)).within(&owner.namespace));
    let one_off = one_off
        .as_ref()
        .and_then(|name| all_jobs.iter().find(|j| &j.name_any() == name))
        .map(|job| jobs::state(job));
    let observed = EtlObserved {
        last_run,
        watermark,
        cron_job: cron_job.as_deref(),
        one_off,
    };
    let status = derive_status(&etl, &previous, observed);
    update(&ctx, etl.as_ref(), etl.status.as_ref(), status).await?;
    Ok(Action::await_change())
}

/// The EtlSchedule a Job belongs to, from its label.
pub fn schedule_of_job(job: &Job) -> Option<ObjectRef<EtlSchedule>> {
    let name = job.labels().get(SCHEDULE_LABEL)?;
    Some(ObjectRef::new(name).within(&job.namespace()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn owner() -> Owner {
        Owner {
            kind: "EtlSchedule",
            api_version: "airq.dev/v1alpha1".to_owned(),
            name: "beijing".to_owned(),
            namespace: "airq".to_owned(),
            uid: "uid-e".to_owned(),
        }
    }

    fn etl(spec: &str) -> EtlSchedule {
        serde_saphyr::from_str(&format!(
            "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: {{ name: beijing, namespace: airq, uid: uid-e }}\nspec:\n{spec}"
        ))
        .unwrap()
    }

    #[test]
    fn a_schedule_becomes_a_cron_job_honouring_suspend_concurrency_and_history() {
        let etl = etl(
            "  source: { openaq: { locations: [2178], apiKeySecret: { name: openaq, key: key } } }\n  schedule: \"15 * * * *\"\n  suspend: true\n  concurrencyPolicy: Replace\n  successfulJobsHistoryLimit: 5\n",
        );
        let desired = build(&etl, &owner(), "img/etl:1".to_owned(), &[]);
        let [Child::CronJob(cron)] = desired.children.as_slice() else {
            panic!("{:?}", desired.children)
        };
        assert_eq!(cron.metadata.name.as_deref(), Some("etl-beijing"));
        let spec = &cron.spec;
        assert_eq!(spec.schedule, "15 * * * *");
        assert_eq!(spec.suspend, Some(true));
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Replace"));
        assert_eq!(spec.successful_jobs_history_limit, Some(5));
        assert_eq!(spec.failed_jobs_history_limit, Some(1));
        let template = spec.job_template.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let env = template.containers[0].env.as_ref().unwrap();
        let secret_of = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
                .map(|s| (s.name.clone(), s.key.clone()))
        };
        assert_eq!(
            secret_of("AIRQ_DATABASE_URL"),
            Some(("airq-database".to_owned(), "url".to_owned()))
        );
        assert_eq!(
            secret_of("AIRQ_OPENAQ_API_KEY"),
            Some(("openaq".to_owned(), "key".to_owned()))
        );
        assert_eq!(template.restart_policy.as_deref(), Some("Never"));
        let labels = spec.job_template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels.get(SCHEDULE_LABEL).map(String::as_str), Some("beijing"));
    }

    #[test]
    fn a_one_off_load_is_a_job_named_after_what_it_loads() {
        let first = etl(
            "  source: { csv: { url: /data/beijing } }\n  mode: backfill\n  backfill: { from: 2013-03-01, to: 2017-03-01 }\n",
        );
        let again = build(&first, &owner(), "img".to_owned(), &[]);
        let desired = build(&first, &owner(), "img".to_owned(), &[]);
        assert_eq!(desired.children.len(), 1);
        assert_eq!(desired.children[0].name(), again.children[0].name());
        assert!(matches!(desired.children[0], Child::Job(_)));
        let other = etl(
            "  source: { csv: { url: /data/beijing } }\n  mode: backfill\n  backfill: { from: 2014-03-01, to: 2017-03-01 }\n",
        );
        let changed = build(&other, &owner(), "img".to_owned(), &[]);
        assert_ne!(changed.children[0].name(), desired.children[0].name());
        let requested = etl("  source: { csv: { url: /data/beijing } }\n  schedule: \"@daily\"\n  runRequest: now\n");
        let with_run = build(&requested, &owner(), "img".to_owned(), &[]);
        assert_eq!(with_run.children.len(), 2);
        assert!(with_run.children[1].name().starts_with("etl-beijing-run-"));
    }

    const SCHEDULED: &str = "  source: { openaq: { locations: [2178], apiKeySecret: { name: openaq, key: key } } }\n  schedule: \"15 * * * *\"\n";
    const ONE_OFF: &str = "  source: { csv: { url: \"file:///data/PRSA_Data_Dongsi_20130301-20170228.csv\" } }\n";

    fn ready(status: &EtlScheduleStatus) -> (String, String, String) {
        let c = airq_api::common::condition(&status.conditions, "Ready").unwrap_or_else(|| panic!("no Ready"));
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn run(succeeded: bool, at: &str, message: Option<&str>) -> LoadRunStatus {
        LoadRunStatus {
            job: "etl-beijing-29000000".to_owned(),
            succeeded,
            completion_time: Some(Time(at.parse().unwrap_or_else(|e| panic!("{at}: {e}")))),
            rows_inserted: 12,
            message: message.map(str::to_owned),
            ..LoadRunStatus::default()
        }
    }

    #[test]
    fn a_schedule_is_ready_until_a_run_fails_and_its_times_come_from_the_cron_job_and_the_runs() {
        let etl = etl(SCHEDULED);
        let cron = CronJob {
            status: Some(k8s_openapi::api::batch::v1::CronJobStatus {
                last_schedule_time: Some(Time("2026-12-06T08:15:00Z".parse().unwrap_or_else(|e| panic!("{e}")))),
                ..Default::default()
            }),
            ..CronJob::default()
        };
        let fresh = derive_status(&etl, &EtlScheduleStatus::default(), EtlObserved::default());
        assert_eq!(
            ready(&fresh),
            (
                "True".to_owned(),
                "Scheduled".to_owned(),
                "loads run on the schedule 15 * * * *".to_owned()
            )
        );
        assert_eq!(fresh.source.as_deref(), Some("openaq"));
        let ok = derive_status(
            &etl,
            &fresh,
            EtlObserved {
                last_run: Some(run(true, "2026-12-06T08:16:00Z", None)),
                watermark: Some("2026-12-06T08:00:00Z".to_owned()),
                cron_job: Some(&cron),
                one_off: None,
            },
        );
        assert_eq!(ready(&ok).1, "Scheduled");
        assert_eq!(
            ok.last_schedule_time.as_ref().map(|t| t.0.to_string()).as_deref(),
            Some("2026-12-06T08:15:00Z")
        );
        let success = ok.last_success_time.clone();
        assert!(success.is_some());
        // A failed run: not ready, the reason says so, the last success and the watermark stay.
        let failed = derive_status(
            &etl,
            &ok,
            EtlObserved {
                last_run: Some(run(false, "2026-12-06T09:16:00Z", Some("OpenAQ answered 401"))),
                watermark: ok.watermark.clone(),
                cron_job: None,
                one_off: None,
            },
        );
        assert_eq!(
            ready(&failed),
            (
                "False".to_owned(),
                "LoadFailed".to_owned(),
                "the last run failed: OpenAQ answered 401; the schedule 15 * * * * goes on".to_owned()
            )
        );
        assert_eq!(failed.last_success_time, success);
        assert_eq!(failed.last_schedule_time, ok.last_schedule_time);
        assert_eq!(failed.watermark.as_deref(), Some("2026-12-06T08:00:00Z"));
    }

    #[test]
    fn a_one_off_load_is_ready_once_its_job_succeeded() {
        let etl = etl(ONE_OFF);
        let observed = |one_off| EtlObserved {
            one_off,
            ..EtlObserved::default()
        };
        let none = EtlScheduleStatus::default();
        assert_eq!(ready(&derive_status(&etl, &none, observed(None))).1, "Running");
        assert_eq!(
            ready(&derive_status(&etl, &none, observed(Some(JobState::Running)))).1,
            "Running"
        );
        let done = derive_status(&etl, &none, observed(Some(JobState::Succeeded { at: None })));
        assert_eq!(ready(&done).0, "True");
        let failed = JobState::Failed {
            at: None,
            message: "Job has reached the specified backoff limit".to_owned(),
        };
        let failed = derive_status(&etl, &none, observed(Some(failed)));
        assert_eq!(
            ready(&failed),
            (
                "False".to_owned(),
                "LoadFailed".to_owned(),
                "Job has reached the specified backoff limit".to_owned()
            )
        );
        let suspended = self::etl(&format!("{ONE_OFF}  suspend: true\n"));
        assert_eq!(ready(&derive_status(&suspended, &none, observed(None))).1, "Suspended");
    }
}
