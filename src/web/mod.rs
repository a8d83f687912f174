//! The dispatcher's HTTP side (`--http ADDR`): `/metrics` in the
//! Prometheus text format. Every figure comes through an in-process
//! connection to the shell ([`crate::dispatcher::local`]), as for any
//! tool.
//!
//! Access follows the TCP port's rule: without tokens the dispatcher only
//! listens on loopback (unless `--insecure`) and everything is served;
//! with tokens a request must present the tool secret
//! (`Authorization: Bearer SECRET`) to read.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::dispatcher::local::Local;
use crate::dispatcher::metrics::Metrics;
use crate::proto::auth::{Auth, Grant};
use crate::proto::{ClientMsg, ServerMsg};

/// What the handlers share.
#[derive(Clone)]
pub struct WebContext {
    pub local: Local,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Auth>,
}

/// How long a stopping server waits for open requests and streams.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Serves until `stop`; then gives open requests a moment and returns.
pub async fn serve(listener: TcpListener, ctx: WebContext, stop: CancellationToken) {
    let app = router(ctx);
    let stopping = stop.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
    let server = tokio::spawn(async move { server.await });
    stopping.cancelled().await;
    match tokio::time::timeout(STOP_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "the http server stopped with an error"),
        Ok(Err(_)) => warn!("the http server panicked"),
        Err(_) => warn!("open http requests did not end in time; closing them"),
    }
}

pub fn router(ctx: WebContext) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

/// The grant the request's credentials earn; `None`: refuse it
/// ([`unauthorized`]).
pub fn grant(ctx: &WebContext, headers: &HeaderMap) -> Option<Grant> {
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    ctx.auth.grant_for_secret(secret.unwrap_or("").as_bytes())
}

pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this dispatcher needs the tool secret: Authorization: Bearer SECRET\n",
    )
        .into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the dispatcher is stopping\n",
    )
        .into_response()
}

async fn metrics(State(ctx): State<WebContext>, headers: HeaderMap) -> Response {
    let Some(g) = grant(&ctx, &headers) else {
        return unauthorized();
    };
    let Ok(mut conn) = ctx.local.open(g).await else {
        return unavailable();
    };
    match conn.request(ClientMsg::Metrics).await {
        Ok(ServerMsg::Metrics(view)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            ctx.metrics.render(&view),
        )
            .into_response(),
        _ => unavailable(),
    }
}
