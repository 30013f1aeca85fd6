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
use serde_json::json;

use crate::AppState;
use crate::access::AccessRecord;
use crate::error::GatewayError;
use crate::identity::{KeyHasher, generate_key, parse_key};
use crate::store::{KeyRecord, Store};

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

async fn routes(State(state): State<AppState>) -> Response {
    let table = state.routes.current();
    let routes: Vec<_> = table
        .entries
        .iter()
        .map(|e| json!({ "route": e.route, "circuitOpen": e.breaker.is_open() }))
        .collect();
    Json(json!({ "routes": routes })).into_response()
}

async fn groups(State(state): State<AppState>) -> Result<Response> {
    Ok(Json(json!({ "groups": state.store.groups().await? })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    #[serde(default)]
    description: String,
}

async fn create_group(State(state): State<AppState>, body: Bytes) -> Result<Response> {
    let group: NewGroup = parse(&body)?;
    check_name("group", &group.name)?;
    state.store.create_group(&group.name, &group.description, now()).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": group.name, "description": group.description })),
    )
        .into_response())
}

async fn delete_group(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    if name == ADMIN_GROUP {
        return Err(GatewayError::Conflict("the admin group cannot be deleted".to_owned()));
    }
    state.store.delete_group(&name).await?;
    state.identities.changed().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn users(State(state): State<AppState>) -> Result<Response> {
    Ok(Json(json!({ "users": state.store.users().await? })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
}

async fn create_user(State(state): State<AppState>, body: Bytes) -> Result<Response> {
    let user: NewUser = parse(&body)?;
    check_name("user", &user.name)?;
    state.store.create_user(&user.name, &user.groups, now()).await?;
    Ok((StatusCode::CREATED, Json(state.store.user(&user.name).await?)).into_response())
}

async fn user(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    let user = state.store.user(&name).await?;
    let keys = state.store.keys_of(&name).await?;
    Ok(Json(json!({ "user": user, "keys": keys })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChange {
    disabled: bool,
}

async fn update_user(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Result<Response> {
    let change: UserChange = parse(&body)?;
    state.store.set_disabled(&name, change.disabled).await?;
    state.identities.changed().await?;
    Ok(Json(state.store.user(&name).await?).into_response())
}

async fn delete_user(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    state.store.delete_user(&name).await?;
    state.identities.changed().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Groups {
    groups: Vec<String>,
}

async fn set_groups(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Result<Response> {
    let groups: Groups = parse(&body)?;
    state.store.set_groups(&name, &groups.groups).await?;
    state.identities.changed().await?;
    Ok(Json(state.store.user(&name).await?).into_response())
}

async fn keys(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    Ok(Json(json!({ "keys": state.store.keys_of(&name).await? })).into_response())
}

/// What a new key is issued with.
#[derive(Deserialize, Default)]
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
        Json(json!({
            "key": key,
            "id": record.id,
            "prefix": format!("airq_{}", record.id),
            "user": record.user,
            "expiresAt": record.expires_at,
            "note": "store the key now: the gateway keeps only a hash of it and cannot show it again",
        })),
    )
        .into_response()
}

async fn issue_key(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Result<Response> {
    let options: KeyOptions = parse(&body)?;
    let (record, key) = new_key(state.identities.hasher(), &name, &options, now())?;
    state.store.insert_key(&record).await?;
    tracing::info!(user = %name, key_id = %record.id, "API key issued");
    Ok(issued(&record, &key))
}

async fn key(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(Json(state.store.key(&id).await?).into_response())
}

async fn revoke_key(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    state.store.revoke_key(&id, now()).await?;
    state.identities.changed().await?;
    tracing::info!(key_id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
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

#[derive(Deserialize)]
struct UsageQuery {
    since: Option<String>,
    user: Option<String>,
}

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
    Ok(Json(json!({ "since": since, "usage": rows })).into_response())
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
