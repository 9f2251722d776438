//! REST authentication and roles (with `[auth] enabled`, in a closed
//! network). Users are `user` policies signed by an admin of the network,
//! so one token works on every node:
//!
//! ```json
//! {"user": {"name": "alice", "role": "reader", "dbs": ["lab"],
//!           "hash": "$argon2id$v=19$...", "created_ms": 1764633600000}}
//! ```
//!
//! A token is `<name>.<secret>`; a request carries it as `Authorization:
//! Bearer <token>` or as HTTP Basic (user `<name>`, password `<secret>`, as
//! AnyLog and EdgeLake clients send it). Only the secret's argon2 hash is in
//! the ledger. A token is checked against its hash once; after that a hash
//! of the token finds it in a cache, checked against the ledger on every
//! request (a removed user is refused at once). Failed logins from one
//! address are limited to [`MAX_FAILURES`] a minute.
//!
//! Roles: `reader` (queries, `get`, `blockchain get`), `writer` (also
//! ingest, `flush buffers`), `admin` (also policies). A user may be limited
//! to some databases. Ledger entries (`/v1/ledger/*`) need no token: they
//! are signed, and count only from the network's members.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::audit::Event;
use crate::error::Code;
use crate::mesh::Mesh;

/// The policy type of a REST user.
pub const USER_KIND: &str = "user";
/// Failed logins one address may make per minute; more are answered 429.
pub const MAX_FAILURES: u32 = 10;
/// Most verified tokens kept.
const MAX_CACHED: usize = 4096;
/// Most addresses whose failures are counted at once.
const MAX_TRACKED: usize = 16384;

/// The address a REST request came from (set by the accept loop).
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// What a user may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {s:?}; expected reader, writer or admin"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

/// Who is asking, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The databases it may use; `None`: all.
    pub dbs: Option<Vec<String>>,
}

impl Principal {
    /// Refuses (403) what the role may not do, or a database it may not use.
    pub fn require(&self, role: Role, db: Option<&str>) -> Result<(), ApiError> {
        if self.role < role {
            return Err(ApiError::new(
                Code::Forbidden,
                format!(
                    "user {} is a {}; this needs a {}",
                    self.name,
                    self.role.name(),
                    role.name()
                ),
            ));
        }
        if let (Some(dbs), Some(db)) = (&self.dbs, db)
            && !dbs.iter().any(|d| d.eq_ignore_ascii_case(db))
        {
            return Err(ApiError::new(
                Code::Forbidden,
                format!("user {} may not use database {db:?}", self.name),
            ));
        }
        Ok(())
    }
}

/// Checks `role` (and `db`) for a request; with authentication off there
/// is no principal and everything is allowed.
pub fn check(p: Option<&Principal>, role: Role, db: Option<&str>) -> Result<(), ApiError> {
    p.map_or(Ok(()), |p| p.require(role, db))
}

/// A `user` policy in force.
#[derive(Debug, Clone)]
struct User {
    principal: Principal,
    hash: String,
    id: String,
}

/// The `user` policies of the network's admins, by name (the latest of
/// several for one name).
fn user(view: &tarn_ledger::View, name: &str) -> Option<User> {
    let mut best: Option<(u64, User)> = None;
    for p in view.of_kind(USER_KIND) {
        if !view.is_admin(&p.author) {
            continue;
        }
        let body = &p.policy[USER_KIND];
        if body["name"].as_str() != Some(name) {
            continue;
        }
        let Some(role) = body["role"].as_str().and_then(|r| Role::parse(r).ok()) else {
            continue;
        };
        let Some(hash) = body["hash"].as_str() else {
            continue;
        };
        let dbs = body["dbs"].as_array().map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        });
        let u = User {
            principal: Principal {
                name: name.to_owned(),
                role,
                dbs,
            },
            hash: hash.to_owned(),
            id: p.id.clone(),
        };
        if best
            .as_ref()
            .is_none_or(|(l, b)| (p.lamport, &p.id) > (*l, &b.id))
        {
            best = Some((p.lamport, u));
        }
    }
    best.map(|(_, u)| u)
}

/// The node's side of authentication.
pub struct Auth {
    mesh: Arc<Mesh>,
    /// BLAKE3 of a verified token → the user policy it was verified against.
    verified: Mutex<HashMap<[u8; 32], (String, Principal)>>,
    /// Failed logins per address in the current minute.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Auth {
    pub fn new(mesh: Arc<Mesh>) -> Auth {
        Auth {
            mesh,
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Who sent `headers`, or why they are refused (401, or 429 after too
    /// many failures from `ip`).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        ip: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
        if let Some(ip) = ip {
            self.not_locked_out(ip)?;
        }
        let r = self.check_token(headers).await;
        if r.is_err()
            && let Some(ip) = ip
        {
            self.failed(ip);
        }
        r
    }

    async fn check_token(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let (name, secret) = credentials(headers)?;
        self.check_secret(name, secret).await
    }

    /// Who logs in with `name` and `secret` from `ip` (an MQTT device, say),
    /// or why not; failures count against `ip` as REST's do.
    pub async fn login(
        &self,
        name: String,
        secret: String,
        ip: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
        if let Some(ip) = ip {
            self.not_locked_out(ip)?;
        }
        // The password is the secret, or the whole token.
        let secret = match secret.strip_prefix(&format!("{name}.")) {
            Some(s) => s.to_owned(),
            None => secret,
        };
        if name.is_empty() || name.len() > 64 || secret.is_empty() || secret.len() > 128 {
            return Err(bad_login());
        }
        let r = self.check_secret(name, secret).await;
        if r.is_err()
            && let Some(ip) = ip
        {
            self.failed(ip);
        }
        r
    }

    async fn check_secret(&self, name: String, secret: String) -> Result<Principal, ApiError> {
        let digest = *blake3::hash(format!("{name}.{secret}").as_bytes()).as_bytes();
        let cached = self
            .verified
            .lock()
            .expect("lock poisoned")
            .get(&digest)
            .cloned();
        if let Some((id, p)) = cached {
            // Still in force? (A removed or replaced user is refused at once.)
            if self.mesh.with_view(|v| v.get(&id).is_some()) {
                return Ok(p);
            }
            self.verified.lock().expect("lock poisoned").remove(&digest);
        }
        let u = self
            .mesh
            .with_view(|v| user(v, &name))
            .ok_or_else(bad_login)?;
        let hash = u.hash.clone();
        let ok = tokio::task::spawn_blocking(move || verify(&secret, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(bad_login());
        }
        let mut cache = self.verified.lock().expect("lock poisoned");
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(digest, (u.id, u.principal.clone()));
        Ok(u.principal)
    }

    fn not_locked_out(&self, ip: IpAddr) -> Result<(), ApiError> {
        let f = self.failures.lock().expect("lock poisoned");
        match f.get(&ip) {
            Some((n, since)) if *n >= MAX_FAILURES && since.elapsed() < Duration::from_secs(60) => {
                Err(ApiError::new(
                    Code::QuotaExceeded,
                    format!("too many failed logins from {ip}: try again in a minute"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.lock().expect("lock poisoned");
        if f.len() >= MAX_TRACKED {
            f.retain(|_, (_, since)| since.elapsed() < Duration::from_secs(60));
            if f.len() >= MAX_TRACKED {
                f.clear();
            }
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= Duration::from_secs(60) {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

fn bad_login() -> ApiError {
    ApiError::new(Code::Unauthorized, "unknown user or wrong token")
}

/// The user name and secret a request carries.
fn credentials(headers: &HeaderMap) -> Result<(String, String), ApiError> {
    let missing = || {
        ApiError::new(
            Code::Unauthorized,
            "this node needs credentials: Authorization: Bearer <token> or HTTP Basic",
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?
        .trim();
    let (scheme, rest) = value.split_once(' ').ok_or_else(missing)?;
    let rest = rest.trim();
    let (name, secret) = if scheme.eq_ignore_ascii_case("bearer") {
        let (n, s) = rest.rsplit_once('.').ok_or_else(bad_login)?;
        (n.to_owned(), s.to_owned())
    } else if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| bad_login())?;
        let text = String::from_utf8(raw).map_err(|_| bad_login())?;
        let (n, p) = text.split_once(':').ok_or_else(bad_login)?;
        // The password is the secret, or the whole token.
        let p = p
            .strip_prefix(&format!("{n}."))
            .map_or(p.to_owned(), str::to_owned);
        (n.to_owned(), p)
    } else {
        return Err(missing());
    };
    if name.is_empty() || name.len() > 64 || secret.is_empty() || secret.len() > 128 {
        return Err(bad_login());
    }
    Ok((name, secret))
}

/// Whether `secret` matches an argon2 hash (PHC string form).
fn verify(secret: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok()
    })
}

/// A new secret and its argon2 hash (for `tarn user add`).
pub fn new_secret() -> anyhow::Result<(String, String)> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let secret = bs58::encode(bytes).into_string();
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
        .to_string();
    Ok((secret, hash))
}

/// The role a route needs before its handler runs (handlers check
/// databases, and EdgeLake commands their own role).
fn needed(method: &Method, path: &str) -> Role {
    match (method, path) {
        (&Method::POST, p) if p.starts_with("/v1/data/") => Role::Writer,
        (&Method::POST, "/v1/streams/replay") => Role::Writer,
        (&Method::PUT, "/") => Role::Writer,
        (&Method::POST, "/v1/policies") => Role::Admin,
        (&Method::GET, "/v1/audit") => Role::Admin,
        _ => Role::Reader,
    }
}

/// The middleware: authenticates every request (but ledger entries; with
/// authentication on), hands the principal to the handlers, and records in
/// the audit log every request that changes something and every refusal.
pub async fn layer(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let source = req
        .extensions()
        .get::<RemoteAddr>()
        .map(|r| r.0.ip().to_string())
        .unwrap_or_default();
    let (what, changes) = describe(&req);
    let signed = req.uri().path().starts_with("/v1/ledger/");
    let (who, resp) = match s.auth.clone() {
        Some(auth) if !signed => {
            let ip = req.extensions().get::<RemoteAddr>().map(|r| r.0.ip());
            match auth.authenticate(req.headers(), ip).await {
                Err(e) => ("anonymous".to_owned(), refusal(e)),
                Ok(p) => match p.require(needed(req.method(), req.uri().path()), None) {
                    Err(e) => (p.name, e.into_response()),
                    Ok(()) => {
                        let name = p.name.clone();
                        req.extensions_mut().insert(p);
                        (name, next.run(req).await)
                    }
                },
            }
        }
        _ => ("anonymous".to_owned(), next.run(req).await),
    };
    let status = resp.status().as_u16();
    if changes || matches!(status, 401 | 403 | 429) {
        s.audit
            .record(Event::now(&who, what, &source, status.to_string()));
    }
    resp
}

fn refusal(e: ApiError) -> Response {
    let mut r = e.into_response();
    if r.status() == axum::http::StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"tarn\", Bearer"),
        );
    }
    r
}

/// What a request is, for the audit log, and whether it changes anything.
fn describe(req: &Request) -> (String, bool) {
    let (m, path) = (req.method(), req.uri().path());
    let command = req
        .headers()
        .get("command")
        .and_then(|v| v.to_str().ok())
        .map(|c| c.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let changes = match (m, path) {
        (&Method::POST, "/v1/query") => false,
        (&Method::GET | &Method::POST, "/") => command
            .as_deref()
            .is_some_and(|c| command_needs(c).0 >= Role::Writer),
        (&Method::POST | &Method::PUT | &Method::DELETE, _) => true,
        _ => false,
    };
    let mut what = format!("{m} {path}");
    if let Some(c) = command {
        what = format!("{what} {c}");
    } else if m == Method::PUT && path == "/" {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        what = format!("{what} {}.{}", h("dbms"), h("table"));
    }
    let mut end = what.len().min(200);
    while !what.is_char_boundary(end) {
        end -= 1;
    }
    what.truncate(end);
    (what, changes)
}

/// The role an EdgeLake command needs, and the database it names.
pub fn command_needs(cmd: &str) -> (Role, Option<String>) {
    let words: Vec<String> = cmd
        .split_whitespace()
        .take(3)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match (w(0), w(1)) {
        ("sql", db) => (Role::Reader, Some(db.to_owned())),
        ("blockchain", "get") | ("get", _) | ("test", _) => (Role::Reader, None),
        ("flush", _) | ("replay", _) | ("data", _) => (Role::Writer, None),
        // Everything else, `blockchain insert` first, is an admin's.
        _ => (Role::Admin, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_databases() {
        let p = Principal {
            name: "u".into(),
            role: Role::Writer,
            dbs: Some(vec!["lab".into()]),
        };
        assert!(p.require(Role::Reader, Some("LAB")).is_ok());
        assert!(p.require(Role::Writer, None).is_ok());
        assert_eq!(
            p.require(Role::Admin, None).unwrap_err().code,
            Code::Forbidden
        );
        assert_eq!(
            p.require(Role::Reader, Some("other")).unwrap_err().code,
            Code::Forbidden
        );
        assert_eq!(
            command_needs("sql lab select 1"),
            (Role::Reader, Some("lab".into()))
        );
        assert_eq!(
            command_needs("blockchain insert where policy = !x").0,
            Role::Admin
        );
        assert_eq!(command_needs("flush buffers").0, Role::Writer);
    }

    #[test]
    fn secrets_verify_against_their_hash_only() {
        let (secret, hash) = new_secret().unwrap();
        assert!(verify(&secret, &hash));
        assert!(!verify("nope", &hash));
        assert!(!verify(&secret, "not a hash"));
    }

    #[test]
    fn credentials_from_bearer_and_basic() {
        use base64::Engine as _;
        let mut h = HeaderMap::new();
        assert_eq!(credentials(&h).unwrap_err().code, Code::Unauthorized);
        h.insert(
            header::AUTHORIZATION,
            "Bearer alice.s3cret".parse().unwrap(),
        );
        assert_eq!(credentials(&h).unwrap(), ("alice".into(), "s3cret".into()));
        let b = base64::engine::general_purpose::STANDARD.encode("alice:alice.s3cret");
        h.insert(header::AUTHORIZATION, format!("Basic {b}").parse().unwrap());
        assert_eq!(credentials(&h).unwrap(), ("alice".into(), "s3cret".into()));
        let b = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        h.insert(header::AUTHORIZATION, format!("Basic {b}").parse().unwrap());
        assert_eq!(credentials(&h).unwrap(), ("alice".into(), "s3cret".into()));
    }
}
