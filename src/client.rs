//! A small blocking HTTP client for a node's REST API, used by the CLI
//! commands (`tarn query`, `tarn ingest`, `tarn status`) and by tests.
//! A node with authentication takes the token in `TARN_TOKEN`; one that
//! serves HTTPS with a private CA's certificate needs that CA
//! ([`trust_ca`], `--ca` or `TARN_CA` on the command line).

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// The CA certificates clients made from now on trust instead of the
/// public ones (WebPKI roots).
static CA: OnceLock<Arc<Vec<Certificate<'static>>>> = OnceLock::new();

/// Trust the CA certificates in `ca` (PEM) for every HTTPS node, instead of
/// the public roots. Once per process: a second call is refused.
pub fn trust_ca(ca: &Path) -> anyhow::Result<()> {
    let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("CA file {}: {e}", ca.display()))?;
    let certs = ca_of(&pem).map_err(|e| anyhow::anyhow!("CA file {}: {e}", ca.display()))?;
    CA.set(certs)
        .map_err(|_| anyhow::anyhow!("a CA is already set"))
}

/// The certificates of a CA (PEM), at least one.
fn ca_of(pem: &[u8]) -> anyhow::Result<Arc<Vec<Certificate<'static>>>> {
    let certs = ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!certs.is_empty(), "no CERTIFICATE in the CA");
    Ok(Arc::new(certs))
}

fn tls_config(ca: Option<Arc<Vec<Certificate<'static>>>>) -> TlsConfig {
    let roots = match ca {
        Some(certs) => RootCerts::Specific(certs),
        None => RootCerts::WebPki,
    };
    TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(crate::api::tls::provider())
        .root_certs(roots)
        .build()
}

/// The node a client talks to unless told otherwise.
pub const DEFAULT_NODE: &str = "http://127.0.0.1:32049";

/// A node's REST endpoint.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer ...`.
    token: Option<String>,
}

/// An answer: the HTTP status and the body as text.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
}

impl Answer {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body).map_err(|e| {
            anyhow::anyhow!("the node answered with invalid JSON ({e}): {}", self.body)
        })
    }

    /// The body as JSON when the status is 2xx, else the node's error message.
    pub fn ok_json(&self) -> anyhow::Result<serde_json::Value> {
        if (200..300).contains(&self.status) {
            return self.json();
        }
        let msg = serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| self.body.clone());
        anyhow::bail!("{msg} (HTTP {})", self.status)
    }
}

fn agent(ca: Option<Arc<Vec<Certificate<'static>>>>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .tls_config(tls_config(ca))
        .build()
        .into()
}

impl Client {
    pub fn new(base: &str) -> Client {
        let base = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        Client {
            base: base.trim_end_matches('/').to_owned(),
            agent: agent(CA.get().cloned()),
            token: std::env::var("TARN_TOKEN").ok().filter(|t| !t.is_empty()),
        }
    }

    /// The same node, trusting only the CA certificates in `ca_pem`.
    pub fn with_ca(mut self, ca_pem: &[u8]) -> anyhow::Result<Client> {
        self.agent = agent(Some(ca_of(ca_pem)?));
        Ok(self)
    }

    /// The same node, with a user's token (or none).
    pub fn with_token(mut self, token: Option<&str>) -> Client {
        self.token = token.map(str::to_owned);
        self
    }

    fn auth<B>(&self, mut req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn finish(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Answer> {
        let mut resp =
            r.map_err(|e| anyhow::anyhow!("cannot reach the node at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 32)
            .read_to_string()
            .map_err(|e| anyhow::anyhow!("reading the answer from {}: {e}", self.base))?;
        Ok(Answer {
            status,
            body,
            content_type,
        })
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
        let mut req = self.auth(self.agent.get(format!("{}{path}", self.base)));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.finish(req.call())
    }

    pub fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        let mut req = self.auth(self.agent.post(format!("{}{path}", self.base)));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.finish(req.send(body))
    }

    pub fn put(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> anyhow::Result<Answer> {
        let mut req = self.auth(self.agent.put(format!("{}{path}", self.base)));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.finish(req.send(body))
    }

    /// `POST /v1/query` with the node's default scope.
    pub fn query(&self, db: &str, sql: &str) -> anyhow::Result<Answer> {
        self.query_with(&serde_json::json!({"db": db, "sql": sql}))
    }

    /// `POST /v1/query` with a whole request body (`scope`, `subset`, ...).
    pub fn query_with(&self, body: &serde_json::Value) -> anyhow::Result<Answer> {
        self.post(
            "/v1/query",
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// `POST /v1/data/{db}/{table}`.
    pub fn ingest(&self, db: &str, table: &str, body: &[u8]) -> anyhow::Result<Answer> {
        self.post(
            &format!("/v1/data/{db}/{table}"),
            &[("content-type", "application/json")],
            body,
        )
    }

    /// An EdgeLake command as `GET /` with a `command` header.
    pub fn command(&self, cmd: &str, destination: Option<&str>) -> anyhow::Result<Answer> {
        let mut h = vec![("command", cmd), ("User-Agent", "AnyLog/1.23")];
        if let Some(d) = destination {
            h.push(("destination", d));
        }
        self.get("/", &h)
    }
}
