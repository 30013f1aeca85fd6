-- Measurements and the loads that bring them in.
--
-- `parameters` replaces `pollutants`: besides the six pollutants it holds the weather covariates the Beijing files
-- carry, each with the unit it is stored in. Every value is normalised to that unit before it is stored.
insert into units (code, description) values
    ('degC', 'degrees Celsius'),
    ('hPa',  'hectopascals'),
    ('mm',   'millimetres (precipitation in the hour)'),
    ('m/s',  'metres per second'),
    ('deg',  'degrees clockwise from north (the direction the wind blows from)');

create table parameters (
    code        text primary key,
    name        text not null,
    unit        text not null references units (code),
    kind        text not null check (kind in ('pollutant', 'weather'))
);

insert into parameters (code, name, unit, kind)
    select code, name, unit, 'pollutant' from pollutants;
insert into parameters (code, name, unit, kind) values
    ('temp', 'air temperature', 'degC', 'weather'),
    ('pres', 'air pressure', 'hPa', 'weather'),
    ('dewp', 'dew point', 'degC', 'weather'),
    ('rain', 'precipitation', 'mm', 'weather'),
    ('wspm', 'wind speed', 'm/s', 'weather'),
    ('wd',   'wind direction', 'deg', 'weather');

drop table pollutants;

-- A place measurements come from. `code` is unique across sources: the station name for CSV files and Open-Meteo
-- points, `openaq-<location id>` for OpenAQ.
create table stations (
    id          bigint generated always as identity primary key,
    code        text not null unique,
    name        text not null,
    source      text not null,
    latitude    double precision,
    longitude   double precision,
    created_at  timestamptz not null default now()
);

-- One value per station, parameter and hour (UTC). `flags` holds quality marks that do not reject the value
-- (bit 1: PM2.5 above PM10 in the same hour).
create table measurements (
    station_id  bigint not null references stations (id),
    parameter   text not null references parameters (code),
    time        timestamptz not null,
    value       double precision not null,
    flags       smallint not null default 0,
    primary key (station_id, parameter, time)
);

-- Every load: who asked, from what, over which range, and what came of it.
create table load_runs (
    id              bigint generated always as identity primary key,
    name            text not null,
    source          text not null,
    mode            text not null,
    spec            text not null,
    requested_by    text not null,
    range_from      timestamptz,
    range_to        timestamptz,
    status          text not null check (status in ('running', 'succeeded', 'failed')),
    rows_read       bigint not null default 0,
    rows_inserted   bigint not null default 0,
    rows_updated    bigint not null default 0,
    rows_unchanged  bigint not null default 0,
    rows_rejected   bigint not null default 0,
    rows_flagged    bigint not null default 0,
    error           text,
    started_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    finished_at     timestamptz
);
create index load_runs_name_started on load_runs (name, started_at desc);

-- How far each named load has got: an incremental run starts after `watermark`.
create table watermarks (
    name        text primary key,
    watermark   timestamptz not null,
    updated_at  timestamptz not null default now()
);

-- Values a load refused, with why. One row per source record and parameter: a re-run refreshes the row rather than
-- adding another.
create table rejected_rows (
    id              bigint generated always as identity primary key,
    load_run_id     bigint not null references load_runs (id) on delete cascade,
    source          text not null,
    record          text not null,
    station         text,
    parameter       text not null,
    time            timestamptz,
    raw_value       text,
    reason          text not null,
    unique (source, record, parameter)
);
create index rejected_rows_run on rejected_rows (load_run_id);
