-- Daily aggregates of every series (`day`: days since 1970-01-01, UTC), kept by the load's write path in the same
-- transaction as the values it stores: charts and comparisons of long ranges read a row per day instead of 24.
-- Derived from `measurements` (whose keys are checked there), so without foreign keys of its own: each batch
-- writes thousands of its rows.
create table measurement_days (
    station_id  integer not null,
    parameter   text not null,
    day         integer not null,
    min         real not null,
    max         real not null,
    sum         real not null,
    count       integer not null,
    primary key (station_id, parameter, day)
) without rowid;

insert into measurement_days (station_id, parameter, day, min, max, sum, count)
    select station_id, parameter, (time - ((time % 86400) + 86400) % 86400) / 86400, min(value), max(value),
           sum(value), count(*)
    from measurements group by 1, 2, 3;
