-- Measurements and the loads that bring them in (the PostgreSQL migration of the same name has the comments).
-- Times are stored as Unix seconds (UTC), which SQLite compares and indexes as integers.
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

create table stations (
    id          integer primary key,
    code        text not null unique,
    name        text not null,
    source      text not null,
    latitude    real,
    longitude   real,
    created_at  integer not null default (unixepoch())
);

create table measurements (
    station_id  integer not null references stations (id),
    parameter   text not null references parameters (code),
    time        integer not null,
    value       real not null,
    flags       integer not null default 0,
    primary key (station_id, parameter, time)
) without rowid;

create table load_runs (
    id              integer primary key,
    name            text not null,
    source          text not null,
    mode            text not null,
    spec            text not null,
    requested_by    text not null,
    range_from      integer,
    range_to        integer,
    status          text not null check (status in ('running', 'succeeded', 'failed')),
    rows_read       integer not null default 0,
    rows_inserted   integer not null default 0,
    rows_updated    integer not null default 0,
    rows_unchanged  integer not null default 0,
    rows_rejected   integer not null default 0,
    rows_flagged    integer not null default 0,
    error           text,
    started_at      integer not null default (unixepoch()),
    updated_at      integer not null default (unixepoch()),
    finished_at     integer
);
create index load_runs_name_started on load_runs (name, started_at desc);

create table watermarks (
    name        text primary key,
    watermark   integer not null,
    updated_at  integer not null default (unixepoch())
);

create table rejected_rows (
    id              integer primary key,
    load_run_id     integer not null references load_runs (id) on delete cascade,
    source          text not null,
    record          text not null,
    station         text,
    parameter       text not null,
    time            integer,
    raw_value       text,
    reason          text not null,
    unique (source, record, parameter)
);
create index rejected_rows_run on rejected_rows (load_run_id);
