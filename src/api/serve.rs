//! The REST port's accept loop: HTTP/1.1 connections served by hyper with
//! a timer, so a connection that does not send a request's headers within
//! the idle timeout — the first request's or the next one's on a kept-alive
//! connection — is closed. On stop, no connection is accepted and those
//! with a request under way get a while to finish it. With a TLS
//! configuration every connection is HTTPS, its handshake bounded by the
//! same idle timeout.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::auth::RemoteAddr;

/// How long requests under way may take to finish once the node stops.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` changes, over TLS when `tls`
/// is given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
    idle_timeout: Duration,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) {
    let tls = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!("accepting a REST connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Who sent each request (failed logins are counted per address).
        let app = tower::ServiceExt::map_request(
            app.clone(),
            move |mut r: hyper::Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(RemoteAddr(remote));
                r
            },
        );
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return connection(stream, app, watcher, idle_timeout).await;
            };
            match tokio::time::timeout(idle_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => connection(stream, app, watcher, idle_timeout).await,
                Ok(Err(e)) => tracing::debug!("a TLS handshake from {remote} failed: {e}"),
                Err(_) => tracing::debug!("a TLS handshake from {remote} timed out"),
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("REST requests still under way after {DRAIN:?}: dropped");
    }
}

/// Serves one connection (plain or TLS) until it closes.
async fn connection<I, S>(io: I, app: S, watcher: Watcher, idle_timeout: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("a REST connection ended: {e}");
    }
}
