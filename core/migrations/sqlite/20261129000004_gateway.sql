-- The gateway's users, groups, API keys and usage (the PostgreSQL migration of the same name has the comments).

create table gateway_groups (
    name        text primary key,
    description text not null default '',
    created_at  bigint not null
);

create table gateway_users (
    name        text primary key,
    disabled    integer not null default 0,
    created_at  bigint not null
);

create table gateway_memberships (
    user_name   text not null references gateway_users (name) on delete cascade,
    group_name  text not null references gateway_groups (name) on delete cascade,
    primary key (user_name, group_name)
);

create table gateway_keys (
    id              text primary key,
    user_name       text not null references gateway_users (name) on delete cascade,
    hash            blob not null,
    description     text not null default '',
    created_at      bigint not null,
    expires_at      bigint,
    revoked_at      bigint,
    -- Set on the old key of a rotation: the key that replaces it.
    replaced_by     text,
    -- Per-key limits; null takes the gateway's defaults.
    rate_per_second real,
    burst           integer,
    daily_quota     bigint
);

create index gateway_keys_user on gateway_keys (user_name);

create table gateway_key_usage (
    key_id      text not null references gateway_keys (id) on delete cascade,
    day         text not null,
    requests    bigint not null,
    last_used_at bigint not null,
    primary key (key_id, day)
);
