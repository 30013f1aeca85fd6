-- Daily aggregates of every series (`day`: days since 1970-01-01, UTC), kept by the load's write path in the same
-- transaction as the values it stores: charts and comparisons of long ranges read a row per day instead of 24.
-- Derived from `measurements` (whose keys are checked there), so without foreign keys of its own: each batch
-- writes thousands of its rows.
create table measurement_days (
    station_id  bigint not null,
    parameter   text not null,
    day         bigint not null,
    min         double precision not null,
    max         double precision not null,
    sum         double precision not null,
    count       bigint not null,
    primary key (station_id, parameter, day)
);

insert into measurement_days (station_id, parameter, day, min, max, sum, count)
    select station_id, parameter, floor(date_part('epoch', time) / 86400)::bigint, min(value), max(value),
           sum(value), count(*)
    from measurements group by 1, 2, 3;
