//! Who is calling: API keys (`airq_<id>_<secret>`, stored as a keyed hash and compared in constant time) and,
//! when configured, JWT bearer tokens. Verified keys are cached briefly; every change made through the admin API
//! empties the cache of every replica at once (PostgreSQL `NOTIFY`), so a revoked key is refused on the next request.

use std::sync::Arc;
use std::time::Duration;

use airq_core::db::Database;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

use crate::error::GatewayError;
use crate::store::{self, KeyOwner, Store};

/// The PostgreSQL channel on which replicas tell each other that users, groups or keys changed.
pub const CHANGES_CHANNEL: &str = "airq_gateway_identity";
/// The header an API key may come in, besides `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";
const KEY_PREFIX: &str = "airq_";
const ID_LENGTH: usize = 12;

/// How long a verified key's record is trusted without asking the database again. Changes made through the admin
/// API do not wait for it (they empty the caches at once); it bounds what a change made straight in SQL would take.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// An API key split into its visible id and its secret part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub id: &'a str,
    pub whole: &'a str,
}

/// Splits `airq_<id>_<secret>`; `None` when the text does not have that shape.
pub fn parse_key(text: &str) -> Option<PresentedKey<'_>> {
    let rest = text.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = (4..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok = secret.len() >= 20
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some(PresentedKey { id, whole: text })
}

/// A fresh key: 12 random lowercase letters and digits as its id, 32 random bytes (base64url) as its secret.
pub fn generate_key() -> (String, String) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let id: String = (0..ID_LENGTH)
        .map(|_| char::from(ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()]))
        .collect();
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let key = format!("{KEY_PREFIX}{id}_{secret}");
    (id, key)
}

/// The keyed hash of API keys: HMAC-SHA256 under the gateway's hashing secret. A copy of the database alone does
/// not let anyone test guesses of keys.
#[derive(Clone)]
pub struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(..)")
    }
}

impl KeyHasher {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        Self { mac }
    }

    pub fn hash(&self, key: &str) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Compares in constant time.
    pub fn verify(&self, key: &str, stored: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        mac.verify_slice(stored).is_ok()
    }
}

/// A caller the gateway has recognised.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user name, or `jwt:<subject>` for a token.
    pub user: Arc<str>,
    /// The API key's id; `None` for a token.
    pub key_id: Option<Arc<str>>,
    pub groups: Arc<[String]>,
    /// Per-key limits (None: the gateway's defaults).
    pub rate_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub daily_quota: Option<i64>,
    /// Requests counted in the database today when the key was read.
    pub used_today: i64,
}

impl Principal {
    pub fn in_any(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }

    /// Whether this caller may use a route open to `groups`: a member of one of them, or an administrator (who
    /// could make itself a member through the admin API anyway).
    pub fn may_use(&self, groups: &[String]) -> bool {
        self.in_any(groups) || self.groups.iter().any(|g| g == crate::admin::ADMIN_GROUP)
    }

    /// What rate limits and quotas are counted against: the key, or the token's subject.
    pub fn limit_key(&self) -> &str {
        self.key_id.as_deref().unwrap_or(&self.user)
    }
}

/// The clock difference allowed between the token's issuer and the gateway, in seconds (`exp`, `nbf`, `iat`).
pub const JWT_LEEWAY_SECONDS: u64 = 30;

/// Why a token was refused, in the gateway's words (the library's own messages name its internals).
fn token_refusal(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    let why = match error.kind() {
        ErrorKind::ExpiredSignature => "it has expired (exp)".to_owned(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidIssuer => "its issuer (iss) is not the one accepted".to_owned(),
        ErrorKind::InvalidAudience => "its audience (aud) is not this gateway".to_owned(),
        ErrorKind::InvalidSignature => "its signature does not verify".to_owned(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "it is signed with an algorithm this gateway does not accept".to_owned()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no {claim} claim"),
        _ => "it is malformed".to_owned(),
    };
    format!("the bearer token is not valid: {why}")
}

/// Whether `text` can travel in an identity header as it is: printable ASCII or any other character but no control
/// character, and (for a list) no comma.
fn encodable(text: &str, in_list: bool) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_control() || (in_list && c == ','))
}

/// JWT bearer tokens accepted besides API keys.
pub struct JwtVerifier {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    groups_claim: String,
}

/// How to verify JWT bearer tokens.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    /// A PEM public key (RSA or EC), or `None` to use `hs256_secret`.
    pub public_key_pem: Option<Vec<u8>>,
    pub hs256_secret: Option<Vec<u8>>,
    pub groups_claim: String,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Result<Self, String> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let (key, algorithms) = match (&settings.public_key_pem, &settings.hs256_secret) {
            (Some(pem), _) => match DecodingKey::from_rsa_pem(pem) {
                Ok(key) => (key, vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]),
                Err(_) => match DecodingKey::from_ec_pem(pem) {
                    Ok(key) => (key, vec![Algorithm::ES256, Algorithm::ES384]),
                    Err(e) => return Err(format!("the JWT public key is neither an RSA nor an EC PEM key: {e}")),
                },
            },
            (None, Some(secret)) => (DecodingKey::from_secret(secret), vec![Algorithm::HS256]),
            (None, None) => return Err("JWT verification needs a public key file or a shared secret".to_owned()),
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = JWT_LEEWAY_SECONDS;
        Ok(Self {
            key,
            validation,
            groups_claim: settings.groups_claim.clone(),
        })
    }

    fn verify(&self, token: &str, now: i64) -> Result<Principal, GatewayError> {
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &self.key, &self.validation)
                .map_err(|e| GatewayError::BadCredentials(token_refusal(&e)))?;
        let claims = data.claims;
        let refuse = |why: &str| GatewayError::BadCredentials(format!("the bearer token is not valid: {why}"));
        // Issued in the future (beyond the clock leeway): a token from a broken or forged issuer.
        let leeway = i64::try_from(JWT_LEEWAY_SECONDS).unwrap_or(i64::MAX);
        match claims.get("iat") {
            None => {}
            Some(iat) => match iat.as_f64() {
                Some(iat) if iat <= (now.saturating_add(leeway)) as f64 => {}
                Some(_) => return Err(refuse("it was issued in the future (iat)")),
                None => return Err(refuse("its iat claim is not a number")),
            },
        }
        let Some(subject) = claims.get("sub").and_then(|s| s.as_str()) else {
            return Err(refuse("its sub claim is not a string"));
        };
        if !encodable(subject, false) {
            return Err(refuse("its subject (sub) is empty or holds a control character"));
        }
        let groups: Vec<String> = match claims.get(&self.groups_claim) {
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|g| g.as_str().map(str::to_owned)).collect()
            }
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        if let Some(bad) = groups.iter().find(|g| !encodable(g, true)) {
            return Err(refuse(&format!(
                "its group {bad:?} is empty or holds a comma or a control character"
            )));
        }
        Ok(Principal {
            user: format!("jwt:{subject}").into(),
            key_id: None,
            groups: groups.into(),
            rate_per_second: None,
            burst: None,
            daily_quota: None,
            used_today: 0,
        })
    }
}

/// A key as cached: its record, and the caller it stands for (built once per load, not per request). `None` when
/// no key has the id (so that guessing ids does not reach the database each time either).
/// Every cached answer carries the generation of the identities it was read at: a change (a revoke, a disabled user)
/// starts a new generation, and an answer read before it is not used, even if its load finished after the cache was
/// emptied. Revocation always wins over a load racing it.
#[derive(Clone)]
struct Cached {
    generation: u64,
    key: Option<Arc<CachedKey>>,
}

struct CachedKey {
    owner: KeyOwner,
    principal: Principal,
}

impl CachedKey {
    fn new(owner: KeyOwner) -> Self {
        let key = &owner.key;
        let principal = Principal {
            user: key.user.as_str().into(),
            key_id: Some(key.id.as_str().into()),
            groups: owner.groups.clone().into(),
            rate_per_second: key.rate_per_second,
            burst: key.burst.and_then(|b| u32::try_from(b).ok()),
            daily_quota: key.daily_quota,
            used_today: owner.used_today,
        };
        Self { owner, principal }
    }
}

/// The key `id` as the database has it now, for generation `generation` of the identities.
async fn read(store: Store, id: String, now: i64, generation: u64) -> Result<Cached, store::Error> {
    let owner = store.key_owner(&id, &day_of(now)).await?;
    Ok(Cached {
        generation,
        key: owner.map(|owner| Arc::new(CachedKey::new(owner))),
    })
}

/// Recognises callers.
#[derive(Clone)]
pub struct Identities {
    store: Store,
    hasher: KeyHasher,
    cache: moka::future::Cache<String, Cached>,
    /// Counts the changes seen (see [`Cached`]).
    generation: Arc<std::sync::atomic::AtomicU64>,
    jwt: Option<Arc<JwtVerifier>>,
}

impl Identities {
    pub fn new(store: Store, hasher: KeyHasher, jwt: Option<JwtVerifier>) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(CACHE_TTL)
            .build();
        Self {
            store,
            hasher,
            cache,
            generation: Arc::default(),
            jwt: jwt.map(Arc::new),
        }
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// The caller of a request: `Ok(None)` when it brings no credentials, an error when they are not valid.
    pub async fn authenticate(&self, headers: &HeaderMap, now: i64) -> Result<Option<Principal>, GatewayError> {
        let presented = headers
            .get(API_KEY_HEADER)
            .or_else(|| headers.get(header::AUTHORIZATION))
            .map(|value| value.to_str().unwrap_or_default().trim());
        let Some(presented) = presented else {
            return Ok(None);
        };
        // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
        let credential = match presented.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest,
            _ => presented,
        }
        .trim();
        if credential.starts_with(KEY_PREFIX) {
            return self.api_key(credential, now).await.map(Some);
        }
        match &self.jwt {
            Some(jwt) if credential.matches('.').count() == 2 => jwt.verify(credential, now).map(Some),
            Some(_) => Err(GatewayError::BadCredentials(
                "the credentials are neither an airq API key (airq_…) nor a JWT".to_owned(),
            )),
            None => Err(GatewayError::BadCredentials(
                "the credentials are not an airq API key (airq_…); bearer tokens are not enabled".to_owned(),
            )),
        }
    }

    async fn api_key(&self, text: &str, now: i64) -> Result<Principal, GatewayError> {
        let Some(key) = parse_key(text) else {
            return Err(GatewayError::BadCredentials(
                "the API key is malformed (expected airq_<id>_<secret>)".to_owned(),
            ));
        };
        let cached = self.cached(key.id, now).await?;
        // The same answer for an unknown id and a wrong secret: the difference would help guessing.
        let invalid = || GatewayError::BadCredentials(format!("API key airq_{}… is not valid", key.id));
        let Some(cached) = cached.key else {
            return Err(invalid());
        };
        let owner = &cached.owner;
        if !self.hasher.verify(key.whole, &owner.key.hash) {
            return Err(invalid());
        }
        if owner.key.revoked_at.is_some() {
            return Err(GatewayError::BadCredentials(format!(
                "API key airq_{}… has been revoked",
                key.id
            )));
        }
        if let Some(expires_at) = owner.key.expires_at
            && expires_at <= now
        {
            return Err(GatewayError::BadCredentials(format!(
                "API key airq_{}… expired at {}",
                key.id,
                chrono::DateTime::from_timestamp(expires_at, 0)
                    .map_or_else(|| expires_at.to_string(), |t| t.to_rfc3339())
            )));
        }
        if owner.user_disabled {
            return Err(GatewayError::Forbidden(format!("user {} is disabled", owner.key.user)));
        }
        Ok(cached.principal.clone())
    }

    /// The key `id` from the cache, or the database when it is not cached or was read before the last change.
    async fn cached(&self, id: &str, now: i64) -> Result<Cached, GatewayError> {
        use std::sync::atomic::Ordering;
        // The usual case, a key read before and not changed since: no allocation, no loader made.
        if let Some(cached) = self.cache.get(id).await
            && cached.generation == self.generation.load(Ordering::SeqCst)
        {
            return Ok(cached);
        }
        for _ in 0..3 {
            // Read before the database: a change committed meanwhile makes this answer stale at once.
            let generation = self.generation.load(Ordering::SeqCst);
            let cached = self
                .cache
                .try_get_with(id.to_owned(), read(self.store.clone(), id.to_owned(), now, generation))
                .await
                .map_err(|e| GatewayError::internal(&e))?;
            if cached.generation == self.generation.load(Ordering::SeqCst) {
                return Ok(cached);
            }
            self.cache.invalidate(id).await;
        }
        // Changes faster than a key can be read: read it without the cache.
        read(self.store.clone(), id.to_owned(), now, 0)
            .await
            .map_err(|e| GatewayError::internal(&e))
    }

    /// Starts a new generation of identities: every key cached before is read again.
    fn forget_all(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    /// Forgets every cached key here, and tells the other replicas to do the same.
    pub async fn changed(&self) -> Result<(), store::Error> {
        self.forget_all();
        if let Database::Postgres(pool) = self.store.database() {
            sqlx::query("select pg_notify($1, 'changed')")
                .bind(CHANGES_CHANNEL)
                .execute(pool)
                .await
                .map_err(|source| store::Error::Sql {
                    what: "telling the other replicas about a change",
                    source,
                })?;
        }
        Ok(())
    }

    /// Empties the cache whenever another replica reports a change, or the connection that listens is lost (a
    /// change may have been missed). Runs until the process stops; SQLite has one process, so nothing to listen to.
    pub async fn follow_changes(self) {
        let Database::Postgres(pool) = self.store.database().clone() else {
            return;
        };
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for identity changes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANGES_CHANNEL).await {
                tracing::warn!(error = %e, "cannot listen for identity changes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Changes made while nobody listened are unknown: start afresh.
            self.forget_all();
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => self.forget_all(),
                    Ok(None) => {
                        tracing::warn!("the identity change listener lost its connection; reconnecting");
                        self.forget_all();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the identity change listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

/// The UTC day of a Unix time, as `YYYY-MM-DD`.
pub fn day_of(now: i64) -> String {
    chrono::DateTime::from_timestamp(now, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify_against_their_hash_only() {
        let (id, key) = generate_key();
        let parsed = parse_key(&key).expect("a generated key parses");
        assert_eq!(parsed.id, id);
        let hasher = KeyHasher::new(b"pepper");
        let stored = hasher.hash(&key);
        assert!(hasher.verify(&key, &stored));
        let (_, other) = generate_key();
        assert!(!hasher.verify(&other, &stored));
        // Another hashing secret gives another hash: the database alone does not verify keys.
        assert!(!KeyHasher::new(b"other").verify(&key, &stored));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for text in [
            "",
            "airq_",
            "airq_abc_short",
            "airq_ABCDEFGH_0123456789012345678901",
            "key_abcd1234_x",
        ] {
            assert!(parse_key(text).is_none(), "{text}");
        }
    }
}
