-- Reference data every load normalises to: the units measurements are stored in, and the pollutants airq knows.
create table units (
    code        text primary key,
    description text not null
);

create table pollutants (
    code        text primary key,
    name        text not null,
    unit        text not null references units (code)
);

insert into units (code, description) values
    ('ug/m3', 'micrograms per cubic metre'),
    ('mg/m3', 'milligrams per cubic metre'),
    ('ppm',   'parts per million by volume'),
    ('ppb',   'parts per billion by volume');

insert into pollutants (code, name, unit) values
    ('pm25', 'PM2.5 (fine particulate matter)', 'ug/m3'),
    ('pm10', 'PM10 (coarse particulate matter)', 'ug/m3'),
    ('no2',  'nitrogen dioxide', 'ug/m3'),
    ('o3',   'ozone', 'ug/m3'),
    ('so2',  'sulphur dioxide', 'ug/m3'),
    ('co',   'carbon monoxide', 'ug/m3');
