-- Anomalies every part of the platform reports (the PostgreSQL migration of the same name has the comments).
create table anomalies (
    id          integer primary key,
    component   text not null,
    signal      text not null,
    subject     text not null,
    reporter    text not null default '',
    opened_at   integer not null,
    closed_at   integer,
    expires_at  integer,
    value       real not null,
    expected    real,
    score       real not null,
    peak_score  real not null,
    detail      text not null default '',
    updated_at  integer not null default (unixepoch())
);
create unique index anomalies_one_open on anomalies (component, signal, subject, reporter) where closed_at is null;
create index anomalies_recent on anomalies (opened_at desc);

alter table load_runs add column rows_stuck integer not null default 0;
alter table load_runs add column rows_jump integer not null default 0;
