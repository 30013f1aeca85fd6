-- Trained model versions, the specs the API trains from, and evaluations.

-- One row per trained version. The artifact is the whole model (safetensors: tensors plus its metadata as JSON),
-- so a version is served exactly as it was trained.
create table model_versions (
    id              bigint generated always as identity primary key,
    name            text not null,
    version         integer not null check (version > 0),
    algorithm       text not null,
    pollutant       text not null references parameters (code),
    spec            jsonb not null,
    -- The operator's fingerprint of the training-relevant spec, when the operator asked for this training.
    revision        text,
    -- Scores on held-out data measured at training (see docs/architecture.md, "Forecasts").
    metrics         jsonb not null,
    artifact        bytea not null,
    train_seconds   double precision not null,
    created_at      timestamptz not null default now(),
    unique (name, version)
);

-- The spec each named model trains with when the API is asked to train it ("change training parameters").
create table model_specs (
    name        text primary key,
    spec        jsonb not null,
    updated_at  timestamptz not null default now()
);

-- Evaluations of a spec or a stored version with an explicit protocol (fit, calibrate and test periods).
create table model_evaluations (
    id          bigint generated always as identity primary key,
    name        text not null,
    version     integer,
    protocol    jsonb not null,
    metrics     jsonb not null,
    created_at  timestamptz not null default now()
);

create index model_evaluations_name on model_evaluations (name, created_at desc);
