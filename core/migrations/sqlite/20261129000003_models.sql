-- Trained model versions, the specs the API trains from, and evaluations (the PostgreSQL migration of the same
-- name has the comments). JSON is stored as text, times as Unix seconds.
create table model_versions (
    id              integer primary key,
    name            text not null,
    version         integer not null check (version > 0),
    algorithm       text not null,
    pollutant       text not null references parameters (code),
    spec            text not null,
    revision        text,
    metrics         text not null,
    artifact        blob not null,
    train_seconds   real not null,
    created_at      integer not null default (unixepoch()),
    unique (name, version)
);

create table model_specs (
    name        text primary key,
    spec        text not null,
    updated_at  integer not null default (unixepoch())
);

create table model_evaluations (
    id          integer primary key,
    name        text not null,
    version     integer,
    protocol    text not null,
    metrics     text not null,
    created_at  integer not null default (unixepoch())
);

create index model_evaluations_name on model_evaluations (name, created_at desc);
