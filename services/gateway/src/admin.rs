//! The admin API under `/admin/`: users, groups, API keys (issue, list, rotate, revoke) and usage. Only members of
//! the `admin` group may call it; the first admin key comes from a Secret (see [`bootstrap`]). Every change empties
//! the key caches of every replica.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use crate::AppState;
use crate::access::AccessRecord;
use crate::error::GatewayError;
use crate::identity::{KeyHasher, generate_key, parse_key};
use crate::store::{Group, KeyRecord, Store, Usage, User};

/// The group whose members may use the admin API.
pub const ADMIN_GROUP: &str = "admin";
/// The user the bootstrap key belongs to.
pub const BOOTSTRAP_USER: &str = "admin";

type Result<T, E = GatewayError> = std::result::Result<T, E>;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T> {
    let text = if body.is_empty() { &b"{}"[..] } else { body };
    serde_json::from_slice(text).map_err(|e| GatewayError::Invalid(format!("the request body is not valid: {e}")))
}

/// User and group names: letters, digits and `.-_@`, 1 to 64 characters, starting with a letter or digit.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if ok {
        Ok(())
    } else {
        Err(GatewayError::Invalid(format!(
            "{what} name {name:?} is not valid: use 1 to 64 letters, digits, '.', '-', '_' or '@', starting with a letter or digit"
        )))
    }
}

/// Only the admin group passes.
async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(record) = request.extensions().get::<Arc<AccessRecord>>() {
        record.set_internal_route("admin", &state.admin_metrics);
    }
    let now = now();
    let client = match request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        Some(peer) => crate::proxy::client_address(request.headers(), peer.0, state.settings.trust_forwarded_for),
        None => std::net::IpAddr::from([0, 0, 0, 0]),
    };
    let principal = match crate::proxy::authenticate(&state, request.headers(), client, now).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return GatewayError::Unauthenticated.into_response(),
        Err(e) => return e.into_response(),
    };
    if let Some(record) = request.extensions().get::<Arc<AccessRecord>>() {
        record.set_caller(&principal);
    }
    if !principal.groups.iter().any(|g| g == ADMIN_GROUP) {
        return GatewayError::Forbidden(format!("{} is not in the {ADMIN_GROUP} group", principal.user))
            .into_response();
    }
    if let Err(e) = state.limits.admit(&principal, now) {
        return e.into_response();
    }
    next.run(request).await
}

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/routes", get(routes))
        .route("/admin/groups", get(groups).post(create_group))
        .route("/admin/groups/{name}", delete(delete_group))
        .route("/admin/users", get(users).post(create_user))
        .route("/admin/users/{name}", get(user).patch(update_user).delete(delete_user))
        .route("/admin/users/{name}/groups", put(set_groups))
        .route("/admin/users/{name}/keys", get(keys).post(issue_key))
        .route("/admin/keys/{id}", get(key).delete(revoke_key))
        .route("/admin/keys/{id}/rotate", post(rotate_key))
        .route("/admin/usage", get(usage))
        .route("/admin/anomalies", get(crate::anomalies::list))
        .route_layer(axum::middleware::from_fn_with_state(state, require_admin))
}

/// The routes the gateway serves now.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct RouteList {
    routes: Vec<RouteState>,
}

/// A route from the configuration, and whether its upstream's circuit is open (calls refused for a while).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RouteState {
    /// As configured: the routes file's entry (`airq_api::gateway::Route`).
    #[schema(value_type = Object)]
    route: airq_api::gateway::Route,
    circuit_open: bool,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct GroupList {
    groups: Vec<Group>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct UserList {
    users: Vec<User>,
}

/// A user with its keys (never the keys themselves: their ids and limits).
#[derive(serde::Serialize, utoipa::ToSchema)]
struct UserWithKeys {
    user: User,
    keys: Vec<KeyRecord>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct KeyList {
    keys: Vec<KeyRecord>,
}

/// A new key: the only answer that ever shows it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct IssuedKey {
    /// The key, `airq_<id>_<secret>`: store it now.
    key: String,
    id: String,
    /// What logs and lists show of it: `airq_<id>`.
    prefix: String,
    user: String,
    /// Unix seconds; none: it does not expire.
    expires_at: Option<i64>,
    note: String,
}

/// Requests per key and day since a day.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct UsageReport {
    since: String,
    usage: Vec<Usage>,
}

/// The routes the gateway serves, from its configuration, with their circuit breakers' state.
#[utoipa::path(get, path = "/admin/routes", tag = "admin", responses((status = 200, body = RouteList)))]
async fn routes(State(state): State<AppState>) -> Response {
    let table = state.routes.current();
    let routes = table
        .entries
        .iter()
        .map(|e| RouteState {
            route: e.route.clone(),
            circuit_open: e.breaker.is_open(),
        })
        .collect();
    Json(RouteList { routes }).into_response()
}

/// Every group with its number of members.
#[utoipa::path(get, path = "/admin/groups", tag = "admin", responses((status = 200, body = GroupList)))]
async fn groups(State(state): State<AppState>) -> Result<Response> {
    Ok(Json(GroupList {
        groups: state.store.groups().await?,
    })
    .into_response())
}

#[derive(Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    #[serde(default)]
    description: String,
}

/// Creates a group (routes name the groups that may call them).
#[utoipa::path(post, path = "/admin/groups", tag = "admin", request_body = NewGroup,
    responses((status = 201, description = "The group", body = NewGroup),
        (status = 409, description = "It exists", body = airq_core::openapi::ErrorBody), (status = 422, description = "A bad name", body = airq_core::openapi::ErrorBody)))]
async fn create_group(State(state): State<AppState>, body: Bytes) -> Result<Response> {
    let group: NewGroup = parse(&body)?;
    check_name("group", &group.name)?;
    state.store.create_group(&group.name, &group.description, now()).await?;
    Ok((StatusCode::CREATED, Json(group)).into_response())
}

/// Deletes a group (not `admin`); its members leave it.
#[utoipa::path(delete, path = "/admin/groups/{name}", tag = "admin", params(("name" = String, Path, description = "The group's name")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such group", body = airq_core::openapi::ErrorBody),
        (status = 409, description = "The admin group cannot be deleted", body = airq_core::openapi::ErrorBody)))]
async fn delete_group(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    if name == ADMIN_GROUP {
        return Err(GatewayError::Conflict("the admin group cannot be deleted".to_owned()));
    }
    state.store.delete_group(&name).await?;
    state.identities.changed().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every user with its groups.
#[utoipa::path(get, path = "/admin/users", tag = "admin", responses((status = 200, body = UserList)))]
async fn users(State(state): State<AppState>) -> Result<Response> {
    Ok(Json(UserList {
        users: state.store.users().await?,
    })
    .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// Creates a user, in the groups given.
#[utoipa::path(post, path = "/admin/users", tag = "admin", request_body = NewUser,
    responses((status = 201, description = "The user", body = User),
        (status = 409, description = "It exists", body = airq_core::openapi::ErrorBody), (status = 422, description = "A bad name or an unknown group", body = airq_core::openapi::ErrorBody)))]
async fn create_user(State(state): State<AppState>, body: Bytes) -> Result<Response> {
    let user: NewUser = parse(&body)?;
    check_name("user", &user.name)?;
    state.store.create_user(&user.name, &user.groups, now()).await?;
    Ok((StatusCode::CREATED, Json(state.store.user(&user.name).await?)).into_response())
}

/// A user with its keys.
#[utoipa::path(get, path = "/admin/users/{name}", tag = "admin", params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = UserWithKeys), (status = 404, description = "No such user", body = airq_core::openapi::ErrorBody)))]
async fn user(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    let user = state.store.user(&name).await?;
    let keys = state.store.keys_of(&name).await?;
    Ok(Json(UserWithKeys { user, keys }).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UserChange {
    disabled: bool,
}

/// Disables or enables a user: a disabled user's keys are refused at once, on every replica.
#[utoipa::path(patch, path = "/admin/users/{name}", tag = "admin", params(("name" = String, Path, description = "The user's name")), request_body = UserChange,
    responses((status = 200, description = "The user", body = User), (status = 404, description = "No such user", body = airq_core::openapi::ErrorBody)))]
async fn update_user(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Result<Response> {
    let change: UserChange = parse(&body)?;
    state.store.set_disabled(&name, change.disabled).await?;
    state.identities.changed().await?;
    Ok(Json(state.store.user(&name).await?).into_response())
}

/// Deletes a user and its keys.
#[utoipa::path(delete, path = "/admin/users/{name}", tag = "admin", params(("name" = String, Path, description = "The user's name")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such user", body = airq_core::openapi::ErrorBody)))]
async fn delete_user(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    state.store.delete_user(&name).await?;
    state.identities.changed().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Groups {
    groups: Vec<String>,
}

/// Sets a user's groups (all of them).
#[utoipa::path(put, path = "/admin/users/{name}/groups", tag = "admin", params(("name" = String, Path, description = "The user's name")), request_body = Groups,
    responses((status = 200, description = "The user", body = User), (status = 404, description = "No such user", body = airq_core::openapi::ErrorBody),
        (status = 422, description = "An unknown group", body = airq_core::openapi::ErrorBody)))]
async fn set_groups(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Result<Response> {
    let groups: Groups = parse(&body)?;
    state.store.set_groups(&name, &groups.groups).await?;
    state.identities.changed().await?;
    Ok(Json(state.store.user(&name).await?).into_response())
}

/// A user's keys: ids, limits, expiry and revocation, never the keys.
#[utoipa::path(get, path = "/admin/users/{name}/keys", tag = "admin", params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = KeyList), (status = 404, description = "No such user", body = airq_core::openapi::ErrorBody)))]
async fn keys(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    Ok(Json(KeyList {
        keys: state.store.keys_of(&name).await?,
    })
    .into_response())
}

/// What a new key is issued with.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyOptions {
    #[serde(default)]
    description: String,
    /// Days until the key expires; none: it does not.
    expires_in_days: Option<u32>,
    rate_per_second: Option<f64>,
    burst: Option<u32>,
    daily_quota: Option<u64>,
}

fn new_key(hasher: &KeyHasher, user: &str, options: &KeyOptions, now: i64) -> Result<(KeyRecord, String)> {
    if let Some(rate) = options.rate_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(GatewayError::Invalid(format!(
            "ratePerSecond must be above 0, not {rate}"
        )));
    }
    if options.burst == Some(0) {
        return Err(GatewayError::Invalid("burst must be at least 1".to_owned()));
    }
    let (id, key) = generate_key();
    let record = KeyRecord {
        id,
        user: user.to_owned(),
        hash: hasher.hash(&key),
        description: options.description.clone(),
        created_at: now,
        expires_at: options.expires_in_days.map(|days| now + i64::from(days) * 86_400),
        revoked_at: None,
        replaced_by: None,
        rate_per_second: options.rate_per_second,
        burst: options.burst.and_then(|b| i32::try_from(b).ok()),
        daily_quota: options.daily_quota.and_then(|q| i64::try_from(q).ok()),
    };
    Ok((record, key))
}

/// The answer that carries a key: the only time it is ever shown.
fn issued(record: &KeyRecord, key: &str) -> Response {
    (
        StatusCode::CREATED,
        Json(IssuedKey {
            key: key.to_owned(),
            id: record.id.clone(),
            prefix: format!("airq_{}", record.id),
            user: record.user.clone(),
            expires_at: record.expires_at,
            note: "store the key now: the gateway keeps only a hash of it and cannot show it again".to_owned(),
        }),
    )
        .into_response()
}

/// Issues a key to a user; the answer is the only place the key is ever shown.
#[utoipa::path(post, path = "/admin/users/{name}/keys", tag = "admin", params(("name" = String, Path, description = "The user's name")), request_body = KeyOptions,
    responses((status = 201, description = "The key", body = IssuedKey), (status = 404, description = "No such user", body = airq_core::openapi::ErrorBody),
        (status = 422, description = "A bad limit", body = airq_core::openapi::ErrorBody)))]
async fn issue_key(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Result<Response> {
    let options: KeyOptions = parse(&body)?;
    let (record, key) = new_key(state.identities.hasher(), &name, &options, now())?;
    state.store.insert_key(&record).await?;
    tracing::info!(user = %name, key_id = %record.id, "API key issued");
    Ok(issued(&record, &key))
}

/// One key's record.
#[utoipa::path(get, path = "/admin/keys/{id}", tag = "admin", params(("id" = String, Path, description = "The key's id (its visible prefix without `airq_`)")),
    responses((status = 200, body = KeyRecord), (status = 404, description = "No such key", body = airq_core::openapi::ErrorBody)))]
async fn key(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(Json(state.store.key(&id).await?).into_response())
}

/// Revokes a key: refused at once, on every replica.
#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "admin", params(("id" = String, Path, description = "The key's id (its visible prefix without `airq_`)")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No such key", body = airq_core::openapi::ErrorBody)))]
async fn revoke_key(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    state.store.revoke_key(&id, now()).await?;
    state.identities.changed().await?;
    tracing::info!(key_id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rotation {
    /// Seconds the old key stays valid beside the new one.
    #[serde(default = "default_grace")]
    grace_seconds: u32,
    expires_in_days: Option<u32>,
}

fn default_grace() -> u32 {
    86_400
}

/// Issues a new key in place of one; the old one stays valid for `graceSeconds`.
#[utoipa::path(post, path = "/admin/keys/{id}/rotate", tag = "admin", params(("id" = String, Path, description = "The key's id (its visible prefix without `airq_`)")), request_body = Rotation,
    responses((status = 201, description = "The new key", body = IssuedKey), (status = 404, description = "No such key", body = airq_core::openapi::ErrorBody),
        (status = 409, description = "The key is revoked or expired", body = airq_core::openapi::ErrorBody)))]
async fn rotate_key(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Result<Response> {
    let rotation: Rotation = parse(&body)?;
    let old = state.store.key(&id).await?;
    if old.revoked_at.is_some() {
        return Err(GatewayError::Conflict(format!(
            "key {id} is revoked; issue a new one instead"
        )));
    }
    let now = now();
    if old.expires_at.is_some_and(|at| at <= now) {
        return Err(GatewayError::Conflict(format!(
            "key {id} has expired; issue a new one instead"
        )));
    }
    let options = KeyOptions {
        description: old.description.clone(),
        expires_in_days: rotation.expires_in_days,
        rate_per_second: old.rate_per_second,
        burst: old.burst.and_then(|b| u32::try_from(b).ok()),
        daily_quota: old.daily_quota.and_then(|q| u64::try_from(q).ok()),
    };
    let (record, key) = new_key(state.identities.hasher(), &old.user, &options, now)?;
    let grace_end = now + i64::from(rotation.grace_seconds);
    state.store.rotate_key(&id, &record, grace_end).await?;
    state.identities.changed().await?;
    tracing::info!(old_key_id = %id, key_id = %record.id, grace_seconds = rotation.grace_seconds, "API key rotated");
    Ok(issued(&record, &key))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
    /// The first day (YYYY-MM-DD, UTC); a week ago by default.
    since: Option<String>,
    /// Only this user's keys.
    user: Option<String>,
}

/// Requests per key and day.
#[utoipa::path(get, path = "/admin/usage", tag = "admin", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 422, description = "A bad day", body = airq_core::openapi::ErrorBody)))]
async fn usage(State(state): State<AppState>, Query(query): Query<UsageQuery>) -> Result<Response> {
    let since = match query.since {
        Some(day) => {
            chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                .map_err(|_| GatewayError::Invalid(format!("since={day:?} is not a day (YYYY-MM-DD)")))?;
            day
        }
        None => crate::identity::day_of(now() - 6 * 86_400),
    };
    let rows = state.store.usage(&since, query.user.as_deref()).await?;
    Ok(Json(UsageReport { since, usage: rows }).into_response())
}

/// Makes sure the `admin` group and user exist and that `key` (from the Secret) is a valid key of that user. The
/// Secret's key must have the shape `airq_<id>_<secret>`; its id is its visible prefix.
pub async fn bootstrap(store: &Store, hasher: &KeyHasher, key: &str) -> Result<String, String> {
    let Some(parsed) = parse_key(key.trim()) else {
        return Err(
            "the bootstrap admin key must look like airq_<id>_<secret>: an id of 4 to 32 lowercase letters \
                    and digits, and a secret of at least 20 letters, digits, '-' or '_'"
                .to_owned(),
        );
    };
    let now = now();
    let fail = |e: crate::store::Error| format!("cannot store the bootstrap admin key: {e}");
    store
        .ensure_group(ADMIN_GROUP, "may use the gateway's admin API", now)
        .await
        .map_err(fail)?;
    store
        .ensure_user_in_group(BOOTSTRAP_USER, ADMIN_GROUP, now)
        .await
        .map_err(fail)?;
    let record = KeyRecord {
        id: parsed.id.to_owned(),
        user: BOOTSTRAP_USER.to_owned(),
        hash: hasher.hash(parsed.whole),
        description: "bootstrap admin key (from the Secret)".to_owned(),
        created_at: now,
        expires_at: None,
        revoked_at: None,
        replaced_by: None,
        rate_per_second: None,
        burst: None,
        daily_quota: None,
    };
    store.upsert_key(&record).await.map_err(fail)?;
    Ok(parsed.id.to_owned())
}

/// The admin API's OpenAPI description, generated from its handlers and their types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "airq gateway admin API",
        description = "Users, groups, API keys and usage; only members of the admin group may call it."
    ),
    paths(
        routes,
        groups,
        create_group,
        delete_group,
        users,
        create_user,
        user,
        update_user,
        delete_user,
        set_groups,
        keys,
        issue_key,
        key,
        revoke_key,
        rotate_key,
        usage,
        crate::anomalies::list
    ),
    components(schemas(airq_core::openapi::ErrorBody, airq_core::openapi::ErrorDetail)),
    tags((name = "admin", description = "The gateway's admin API: users, groups, API keys, usage (admin group only)"))
)]
pub struct Doc;
