//! The gateway's SQL: users, groups, memberships, API keys and their daily usage, on PostgreSQL or SQLite. The
//! queries are written once: both dialects take `$n` parameters, and times are Unix seconds in both.

use airq_core::db::Database;
use airq_core::on_pool;
use serde::Serialize;
use sqlx::Row as _;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Sql { what, source }
}

/// Binds a [`KeyRecord`]'s fields in the order of [`KEY_COLUMNS`].
macro_rules! bind_key {
    ($query:expr, $key:expr) => {
        $query
            .bind(&$key.id)
            .bind(&$key.user)
            .bind(&$key.hash)
            .bind(&$key.description)
            .bind($key.created_at)
            .bind($key.expires_at)
            .bind($key.revoked_at)
            .bind(&$key.replaced_by)
            .bind($key.rate_per_second)
            .bind($key.burst)
            .bind($key.daily_quota)
    };
}

/// A group, with how many users belong to it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub name: String,
    pub description: String,
    pub members: i64,
    pub created_at: i64,
}

/// A user and its groups.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub name: String,
    pub disabled: bool,
    pub groups: Vec<String>,
    pub created_at: i64,
}

/// A stored API key: its id and keyed hash, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub id: String,
    pub user: String,
    #[serde(skip)]
    #[schema(ignore)]
    pub hash: Vec<u8>,
    pub description: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub replaced_by: Option<String>,
    pub rate_per_second: Option<f64>,
    pub burst: Option<i32>,
    pub daily_quota: Option<i64>,
}

/// What authentication needs about a key: the key, its user's state and groups, and today's usage so far.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    pub key: KeyRecord,
    pub user_disabled: bool,
    pub groups: Vec<String>,
    pub used_today: i64,
}

/// Requests made with one key on one day.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub key_id: String,
    pub user: String,
    pub day: String,
    pub requests: i64,
    pub last_used_at: i64,
}

const KEY_COLUMNS: &str = "id, user_name, hash, description, created_at, expires_at, revoked_at, replaced_by, \
                           rate_per_second, burst, daily_quota";

fn key_from_row<R>(row: &R) -> Result<KeyRecord, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(KeyRecord {
        id: row.try_get("id")?,
        user: row.try_get("user_name")?,
        hash: row.try_get("hash")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        replaced_by: row.try_get("replaced_by")?,
        rate_per_second: row.try_get("rate_per_second")?,
        burst: row.try_get("burst")?,
        daily_quota: row.try_get("daily_quota")?,
    })
}

/// The gateway's tables.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Creates `name` unless it exists; `true` when it was created.
    pub async fn ensure_group(&self, name: &str, description: &str, now: i64) -> Result<bool> {
        let query = "insert into gateway_groups (name, description, created_at) values ($1, $2, $3) \
                     on conflict (name) do nothing";
        let created = on_pool!(&self.db, pool => sqlx::query(query).bind(name).bind(description).bind(now).execute(pool).await.map(|r| r.rows_affected()))
            .map_err(sql("creating a group"))?;
        Ok(created > 0)
    }

    pub async fn create_group(&self, name: &str, description: &str, now: i64) -> Result<()> {
        if !self.ensure_group(name, description, now).await? {
            return Err(Error::Conflict(format!("group {name} exists already")));
        }
        Ok(())
    }

    pub async fn groups(&self) -> Result<Vec<Group>> {
        let query = "select g.name, g.description, g.created_at, \
                     (select count(*) from gateway_memberships m where m.group_name = g.name) as members \
                     from gateway_groups g order by g.name";
        let rows: Vec<(String, String, i64, i64)> =
            on_pool!(&self.db, pool => sqlx::query_as(query).fetch_all(pool).await).map_err(sql("listing groups"))?;
        Ok(rows
            .into_iter()
            .map(|(name, description, created_at, members)| Group {
                name,
                description,
                members,
                created_at,
            })
            .collect())
    }

    pub async fn delete_group(&self, name: &str) -> Result<()> {
        let done = on_pool!(&self.db, pool => sqlx::query("delete from gateway_groups where name = $1").bind(name).execute(pool).await.map(|r| r.rows_affected()))
            .map_err(sql("deleting a group"))?;
        if done == 0 {
            return Err(Error::NotFound(format!("no group named {name}")));
        }
        Ok(())
    }

    async fn check_groups_exist(&self, groups: &[String]) -> Result<()> {
        let known: Vec<String> = self.groups().await?.into_iter().map(|g| g.name).collect();
        let unknown: Vec<&str> = groups
            .iter()
            .filter(|g| !known.contains(g))
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "unknown group(s) {}: create them first (POST /admin/groups)",
                unknown.join(", ")
            )))
        }
    }

    /// Creates a user in `groups` (which must exist).
    pub async fn create_user(&self, name: &str, groups: &[String], now: i64) -> Result<()> {
        self.check_groups_exist(groups).await?;
        on_pool!(&self.db, pool => {
            let mut tx = pool.begin().await.map_err(sql("creating a user"))?;
            let done = sqlx::query("insert into gateway_users (name, disabled, created_at) values ($1, false, $2) on conflict (name) do nothing")
                .bind(name).bind(now).execute(&mut *tx).await.map_err(sql("creating a user"))?.rows_affected();
            if done == 0 {
                return Err(Error::Conflict(format!("user {name} exists already")));
            }
            for group in groups {
                sqlx::query("insert into gateway_memberships (user_name, group_name) values ($1, $2) on conflict do nothing")
                    .bind(name).bind(group).execute(&mut *tx).await.map_err(sql("adding a membership"))?;
            }
            tx.commit().await.map_err(sql("creating a user"))?;
        });
        Ok(())
    }

    /// Creates `name` in `group` unless it exists; adds the membership either way.
    pub async fn ensure_user_in_group(&self, name: &str, group: &str, now: i64) -> Result<()> {
        on_pool!(&self.db, pool => {
            let mut tx = pool.begin().await.map_err(sql("creating a user"))?;
            sqlx::query("insert into gateway_users (name, disabled, created_at) values ($1, false, $2) on conflict (name) do update set disabled = false")
                .bind(name).bind(now).execute(&mut *tx).await.map_err(sql("creating a user"))?;
            sqlx::query("insert into gateway_memberships (user_name, group_name) values ($1, $2) on conflict do nothing")
                .bind(name).bind(group).execute(&mut *tx).await.map_err(sql("adding a membership"))?;
            tx.commit().await.map_err(sql("creating a user"))?;
        });
        Ok(())
    }

    /// Replaces a user's groups.
    pub async fn set_groups(&self, name: &str, groups: &[String]) -> Result<()> {
        self.check_groups_exist(groups).await?;
        self.user(name).await?;
        on_pool!(&self.db, pool => {
            let mut tx = pool.begin().await.map_err(sql("changing groups"))?;
            sqlx::query("delete from gateway_memberships where user_name = $1")
                .bind(name).execute(&mut *tx).await.map_err(sql("changing groups"))?;
            for group in groups {
                sqlx::query("insert into gateway_memberships (user_name, group_name) values ($1, $2)")
                    .bind(name).bind(group).execute(&mut *tx).await.map_err(sql("changing groups"))?;
            }
            tx.commit().await.map_err(sql("changing groups"))?;
        });
        Ok(())
    }

    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        let done = on_pool!(&self.db, pool => sqlx::query("update gateway_users set disabled = $2 where name = $1").bind(name).bind(disabled).execute(pool).await.map(|r| r.rows_affected()))
            .map_err(sql("changing a user"))?;
        if done == 0 {
            return Err(Error::NotFound(format!("no user named {name}")));
        }
        Ok(())
    }

    async fn groups_of(&self, name: &str) -> Result<Vec<String>> {
        let query = "select group_name from gateway_memberships where user_name = $1 order by group_name";
        on_pool!(&self.db, pool => sqlx::query_scalar(query).bind(name).fetch_all(pool).await)
            .map_err(sql("reading a user's groups"))
    }

    pub async fn user(&self, name: &str) -> Result<User> {
        let query = "select name, disabled, created_at from gateway_users where name = $1";
        let row: Option<(String, bool, i64)> =
            on_pool!(&self.db, pool => sqlx::query_as(query).bind(name).fetch_optional(pool).await)
                .map_err(sql("reading a user"))?;
        let Some((name, disabled, created_at)) = row else {
            return Err(Error::NotFound(format!("no user named {name}")));
        };
        let groups = self.groups_of(&name).await?;
        Ok(User {
            name,
            disabled,
            groups,
            created_at,
        })
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        let query = "select u.name, u.disabled, u.created_at, m.group_name from gateway_users u \
                     left join gateway_memberships m on m.user_name = u.name order by u.name, m.group_name";
        let rows: Vec<(String, bool, i64, Option<String>)> =
            on_pool!(&self.db, pool => sqlx::query_as(query).fetch_all(pool).await).map_err(sql("listing users"))?;
        let mut users: Vec<User> = Vec::new();
        for (name, disabled, created_at, group) in rows {
            if users.last().is_none_or(|u| u.name != name) {
                users.push(User {
                    name,
                    disabled,
                    groups: Vec::new(),
                    created_at,
                });
            }
            if let (Some(group), Some(user)) = (group, users.last_mut()) {
                user.groups.push(group);
            }
        }
        Ok(users)
    }

    /// Deletes a user and, with it, its keys and memberships.
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let done = on_pool!(&self.db, pool => sqlx::query("delete from gateway_users where name = $1").bind(name).execute(pool).await.map(|r| r.rows_affected()))
            .map_err(sql("deleting a user"))?;
        if done == 0 {
            return Err(Error::NotFound(format!("no user named {name}")));
        }
        Ok(())
    }

    pub async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        self.user(&key.user).await?;
        let query =
            format!("insert into gateway_keys ({KEY_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)");
        on_pool!(&self.db, pool => bind_key!(sqlx::query(&query), key).execute(pool).await.map(|_| ()))
            .map_err(sql("storing a key"))?;
        Ok(())
    }

    /// Stores the bootstrap key as it is (its id comes from the Secret), replacing an older one of the same id.
    pub async fn upsert_key(&self, key: &KeyRecord) -> Result<()> {
        let query = format!(
            "insert into gateway_keys ({KEY_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             on conflict (id) do update set user_name = excluded.user_name, hash = excluded.hash, \
             description = excluded.description, expires_at = null, revoked_at = null, replaced_by = null"
        );
        on_pool!(&self.db, pool => bind_key!(sqlx::query(&query), key).execute(pool).await.map(|_| ()))
            .map_err(sql("storing the bootstrap key"))?;
        Ok(())
    }

    pub async fn key(&self, id: &str) -> Result<KeyRecord> {
        let query = format!("select {KEY_COLUMNS} from gateway_keys where id = $1");
        let key = on_pool!(&self.db, pool => match sqlx::query(&query).bind(id).fetch_optional(pool).await {
            Ok(Some(row)) => key_from_row(&row).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        })
        .map_err(sql("reading a key"))?;
        key.ok_or_else(|| Error::NotFound(format!("no key with id {id}")))
    }

    /// A key with what authentication needs about its owner; `None` when no key has that id.
    pub async fn key_owner(&self, id: &str, day: &str) -> Result<Option<KeyOwner>> {
        let key = match self.key(id).await {
            Ok(key) => key,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let user = self.user(&key.user).await?;
        let query = "select requests from gateway_key_usage where key_id = $1 and day = $2";
        let used: Option<i64> =
            on_pool!(&self.db, pool => sqlx::query_scalar(query).bind(id).bind(day).fetch_optional(pool).await)
                .map_err(sql("reading a key's usage"))?;
        Ok(Some(KeyOwner {
            key,
            user_disabled: user.disabled,
            groups: user.groups,
            used_today: used.unwrap_or(0),
        }))
    }

    pub async fn keys_of(&self, user: &str) -> Result<Vec<KeyRecord>> {
        self.user(user).await?;
        let query = format!("select {KEY_COLUMNS} from gateway_keys where user_name = $1 order by created_at, id");
        on_pool!(&self.db, pool => match sqlx::query(&query).bind(user).fetch_all(pool).await {
            Ok(rows) => rows.iter().map(key_from_row).collect::<Result<Vec<_>, _>>(),
            Err(e) => Err(e),
        })
        .map_err(sql("listing keys"))
    }

    /// Marks a key revoked at `now` (it stays listed, refused).
    pub async fn revoke_key(&self, id: &str, now: i64) -> Result<()> {
        let query = "update gateway_keys set revoked_at = coalesce(revoked_at, $2) where id = $1";
        let done = on_pool!(&self.db, pool => sqlx::query(query).bind(id).bind(now).execute(pool).await.map(|r| r.rows_affected()))
            .map_err(sql("revoking a key"))?;
        if done == 0 {
            return Err(Error::NotFound(format!("no key with id {id}")));
        }
        Ok(())
    }

    /// Stores `new` and makes `old_id` expire at `old_expires_at` (the end of the grace period) at once.
    pub async fn rotate_key(&self, old_id: &str, new: &KeyRecord, old_expires_at: i64) -> Result<()> {
        let insert =
            format!("insert into gateway_keys ({KEY_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)");
        let update = "update gateway_keys set replaced_by = $2, \
                      expires_at = case when expires_at is null or expires_at > $3 then $3 else expires_at end \
                      where id = $1";
        on_pool!(&self.db, pool => {
            let mut tx = pool.begin().await.map_err(sql("rotating a key"))?;
            bind_key!(sqlx::query(&insert), new).execute(&mut *tx).await.map_err(sql("rotating a key"))?;
            sqlx::query(update).bind(old_id).bind(&new.id).bind(old_expires_at)
                .execute(&mut *tx).await.map_err(sql("rotating a key"))?;
            tx.commit().await.map_err(sql("rotating a key"))?;
        });
        Ok(())
    }

    /// Adds `requests` to a key's count for `day`; returns the day's total over every replica, or `None` when the
    /// key no longer exists (deleted with its user since the requests were served).
    pub async fn add_usage(&self, key_id: &str, day: &str, requests: i64, now: i64) -> Result<Option<i64>> {
        let query = "insert into gateway_key_usage (key_id, day, requests, last_used_at) \
                     select $1, $2, $3, $4 where exists (select 1 from gateway_keys where id = $1) \
                     on conflict (key_id, day) do update set requests = gateway_key_usage.requests + excluded.requests, \
                     last_used_at = excluded.last_used_at returning requests";
        on_pool!(&self.db, pool => sqlx::query_scalar(query).bind(key_id).bind(day).bind(requests).bind(now).fetch_optional(pool).await)
            .map_err(sql("counting a key's usage"))
    }

    /// Usage per key and day from `since` (a `YYYY-MM-DD` day) on, newest first.
    pub async fn usage(&self, since: &str, user: Option<&str>) -> Result<Vec<Usage>> {
        let query = "select u.key_id, k.user_name, u.day, u.requests, u.last_used_at from gateway_key_usage u \
                     join gateway_keys k on k.id = u.key_id where u.day >= $1 and ($2 is null or k.user_name = $2) \
                     order by u.day desc, k.user_name, u.key_id";
        let rows = on_pool!(&self.db, pool => sqlx::query(query).bind(since).bind(user).fetch_all(pool).await.and_then(|rows| {
            rows.iter().map(|row| Ok(Usage {
                key_id: row.try_get("key_id")?,
                user: row.try_get("user_name")?,
                day: row.try_get("day")?,
                requests: row.try_get("requests")?,
                last_used_at: row.try_get("last_used_at")?,
            })).collect::<Result<Vec<_>, sqlx::Error>>()
        }))
        .map_err(sql("reading usage"))?;
        Ok(rows)
    }
}
