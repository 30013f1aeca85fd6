-- Anomalies every part of the platform reports in one place, for the dashboard's operations page and the API:
-- the gateway's traffic per route, loads' durations and rows, forecast errors once the truth is stored.
--
-- One row per episode: it opens when a signal leaves its usual band and closes when it is back. `reporter` tells
-- apart replicas that each see their own share (a gateway pod); signals every replica sees alike use ''.
-- `expires_at`: a reporter that refreshes an open anomaly as it samples sets it a few intervals ahead, so an
-- anomaly whose reporter is gone (a pod deleted) ends by itself; null for anomalies closed by a later event only.
create table anomalies (
    id          bigint generated always as identity primary key,
    component   text not null,
    signal      text not null,
    subject     text not null,
    reporter    text not null default '',
    opened_at   timestamptz not null,
    closed_at   timestamptz,
    expires_at  timestamptz,
    value       double precision not null,
    expected    double precision,
    score       double precision not null,
    peak_score  double precision not null,
    detail      text not null default '',
    updated_at  timestamptz not null default now()
);
create unique index anomalies_one_open on anomalies (component, signal, subject, reporter) where closed_at is null;
create index anomalies_recent on anomalies (opened_at desc);

-- The quality marks a load's values carry once it has finished (see `measurements.flags`: bit 2 the same value
-- 24 hours in a row, bit 4 a jump far outside the series' usual band for that hour), counted over its range.
alter table load_runs add column rows_stuck bigint not null default 0;
alter table load_runs add column rows_jump bigint not null default 0;
