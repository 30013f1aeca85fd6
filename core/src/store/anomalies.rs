//! The anomalies every part of the platform reports, in one table: the gateway's traffic, loads, forecast errors.
//! A reporter opens (or refreshes) an episode while it lasts and closes it when the signal is back in its band; the
//! dashboard's operations page and `GET /api/anomalies` read them. Services that follow live signals with
//! `airq_anomaly::watch` record through [`Store::record_watched`].

use chrono::{DateTime, Utc};
use serde::Serialize;

use airq_anomaly::watch::Anomaly;

use super::{Result, Store, sql, timestamp};
use crate::db::{Database, DbTime};
use crate::on_pool;

/// An anomaly as its reporter sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyReport {
    /// `gateway`, `etl`, `predictive`.
    pub component: String,
    /// What is measured: `error_ratio`, `load_duration_seconds`, `forecast_abs_error`…
    pub signal: String,
    /// Which instance: a route id, a load's name, `<model>/<station>`.
    pub subject: String,
    /// The replica that saw it when each replica sees its own share (a gateway pod), `""` otherwise.
    pub reporter: String,
    pub opened_at: DateTime<Utc>,
    /// The newest value, and the value expected for it.
    pub value: f64,
    pub expected: Option<f64>,
    pub score: f64,
    pub peak_score: f64,
    /// A line for people: what happened, in the signal's terms.
    pub detail: String,
    /// When the episode ends unless refreshed (reporters that sample); `None` when only a later event closes it.
    pub expires_at: Option<DateTime<Utc>>,
}

/// An anomaly as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredAnomaly {
    pub id: i64,
    pub component: String,
    pub signal: String,
    pub subject: String,
    pub reporter: String,
    pub opened_at: DateTime<Utc>,
    /// `None` while it is open. An episode whose reporter stopped refreshing it closed when it expired.
    pub closed_at: Option<DateTime<Utc>>,
    pub value: f64,
    pub expected: Option<f64>,
    pub score: f64,
    pub peak_score: f64,
    pub detail: String,
    pub updated_at: DateTime<Utc>,
}

impl StoredAnomaly {
    pub fn is_open(&self) -> bool {
        self.closed_at.is_none()
    }
}

const SELECT: &str = "select id, component, signal, subject, reporter, opened_at, closed_at, expires_at, value,
        expected, score, peak_score, detail, updated_at
    from anomalies";

/// An anomaly as stored.
#[derive(sqlx::FromRow)]
struct AnomalyRow {
    id: i64,
    component: String,
    signal: String,
    subject: String,
    reporter: String,
    opened_at: DbTime,
    closed_at: Option<DbTime>,
    expires_at: Option<DbTime>,
    value: f64,
    expected: Option<f64>,
    score: f64,
    peak_score: f64,
    detail: String,
    updated_at: DbTime,
}

impl AnomalyRow {
    /// The episode as of `now`: closed by its reporter, or by expiring.
    fn at(self, now: DateTime<Utc>) -> StoredAnomaly {
        let expired = self.expires_at.map(|t| t.0).filter(|e| *e <= now);
        StoredAnomaly {
            id: self.id,
            component: self.component,
            signal: self.signal,
            subject: self.subject,
            reporter: self.reporter,
            opened_at: self.opened_at.0,
            closed_at: self.closed_at.map(|t| t.0).or(expired),
            value: self.value,
            expected: self.expected,
            score: self.score,
            peak_score: self.peak_score,
            detail: self.detail,
            updated_at: self.updated_at.0,
        }
    }
}

impl Store {
    /// Opens the episode `report` describes, or refreshes it (newest value and score, highest peak, expiry) if
    /// its reporter already has it open. An episode of the same key that expired is closed first, so a signal that
    /// comes back after its reporter went quiet opens a new one.
    pub async fn anomaly_report(&self, report: &AnomalyReport) -> Result<()> {
        const CLOSE_EXPIRED: &str = "update anomalies set closed_at = expires_at
            where component = $2 and signal = $3 and subject = $4 and reporter = $5
                and closed_at is null and expires_at <= $1";
        const UPSERT: &str = "insert into anomalies (component, signal, subject, reporter, opened_at, expires_at,
                value, expected, score, peak_score, detail, updated_at)
            values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            on conflict (component, signal, subject, reporter) where closed_at is null do update set
                expires_at = excluded.expires_at, value = excluded.value, expected = excluded.expected,
                score = excluded.score, detail = excluded.detail, updated_at = excluded.updated_at,
                peak_score = case when excluded.peak_score > anomalies.peak_score then excluded.peak_score
                    else anomalies.peak_score end";
        let what = "recording an anomaly";
        let now = DbTime::now();
        let r = report;
        // Both statements in one transaction (on SQLite taking the write lock at once).
        macro_rules! report_in {
            ($tx:expr) => {{
                let mut tx = $tx;
                sqlx::query(CLOSE_EXPIRED)
                    .bind(now)
                    .bind(&r.component)
                    .bind(&r.signal)
                    .bind(&r.subject)
                    .bind(&r.reporter)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql(what))?;
                sqlx::query(UPSERT)
                    .bind(&r.component)
                    .bind(&r.signal)
                    .bind(&r.subject)
                    .bind(&r.reporter)
                    .bind(DbTime(r.opened_at))
                    .bind(r.expires_at.map(DbTime))
                    .bind(r.value)
                    .bind(r.expected)
                    .bind(r.score)
                    .bind(r.peak_score)
                    .bind(&r.detail)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql(what))?;
                tx.commit().await.map_err(sql(what))
            }};
        }
        match &self.db {
            Database::Postgres(pool) => report_in!(pool.begin().await.map_err(sql(what))?),
            Database::Sqlite(pool) => report_in!(pool.begin_with("BEGIN IMMEDIATE").await.map_err(sql(what))?),
        }
    }

    /// Records what a [`Watcher`](airq_anomaly::watch::Watcher) reports for `component` as `reporter`: each `open`
    /// anomaly refreshed (valid until `expires_at`, described by `detail`), each `closed` one closed when it closed.
    pub async fn record_watched(
        &self,
        component: &str,
        reporter: &str,
        open: &[Anomaly],
        closed: &[Anomaly],
        expires_at: DateTime<Utc>,
        detail: impl Fn(&Anomaly) -> String,
    ) -> Result<()> {
        for anomaly in open {
            self.anomaly_report(&AnomalyReport {
                component: component.to_owned(),
                signal: anomaly.signal.clone(),
                subject: anomaly.subject.clone(),
                reporter: reporter.to_owned(),
                opened_at: timestamp(anomaly.since),
                value: anomaly.value,
                expected: anomaly.expected,
                score: anomaly.score,
                peak_score: anomaly.peak_score,
                detail: detail(anomaly),
                expires_at: Some(expires_at),
            })
            .await?;
        }
        for anomaly in closed {
            let at = anomaly.closed.map_or_else(Utc::now, timestamp);
            self.anomaly_close(component, &anomaly.signal, &anomaly.subject, reporter, at)
                .await?;
        }
        Ok(())
    }

    /// Closes `reporter`'s open episode of `signal` for `subject` at `at`; false when none was open.
    pub async fn anomaly_close(
        &self,
        component: &str,
        signal: &str,
        subject: &str,
        reporter: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        const UPDATE: &str = "update anomalies set closed_at = $5, updated_at = $5
            where component = $1 and signal = $2 and subject = $3 and reporter = $4 and closed_at is null";
        let affected = on_pool!(&self.db, pool => sqlx::query(UPDATE)
            .bind(component)
            .bind(signal)
            .bind(subject)
            .bind(reporter)
            .bind(DbTime(at))
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
        .map_err(sql("closing an anomaly"))?;
        Ok(affected > 0)
    }

    /// The open episodes, then those that closed at or after `closed_since`, newest first; at most `limit`.
    pub async fn anomalies(&self, closed_since: DateTime<Utc>, limit: i64) -> Result<Vec<StoredAnomaly>> {
        let now = Utc::now();
        // Open now: not closed, and not expired. Closed: by its reporter, or by expiring.
        let query = format!(
            "{SELECT} where (closed_at is null and (expires_at is null or expires_at > $2))
                 or coalesce(closed_at, expires_at) >= $1
             order by (case when closed_at is null and (expires_at is null or expires_at > $2) then 0 else 1 end),
                 opened_at desc, id desc
             limit $3"
        );
        let rows: Vec<AnomalyRow> = on_pool!(&self.db, pool => sqlx::query_as(&query)
            .bind(DbTime(closed_since))
            .bind(DbTime(now))
            .bind(limit)
            .fetch_all(pool)
            .await)
        .map_err(sql("reading anomalies"))?;
        Ok(rows.into_iter().map(|row| row.at(now)).collect())
    }
}
