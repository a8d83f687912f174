//! The dispatcher's HTTP side (`--http ADDR`): the dashboard pages, the
//! JSON API under `/api/v1/`, the live log as server-sent events, and
//! `/metrics` in the Prometheus text format.
//!
//! Everything shown comes through in-process connections to the shell
//! ([`crate::dispatcher::local`]), as for any tool, with the grant the
//! request's credentials earned ([`auth`]); pages and the API get their
//! data from the same functions ([`api`]), so they never disagree.
//!
//! - `mod.rs`: the router, the accept loop and every limit (connections,
//!   header read time, request time, body and URI sizes), security headers.
//! - `auth.rs`: grants from a bearer header or the login cookie, the
//!   loopback `Host` rule without tokens, cross-site and CSRF checks.
//! - `api.rs`: reads and actions, and their JSON under `/api/v1/`.
//! - `sse.rs`: a job's output as server-sent events.
//! - `hooks.rs`: forge webhooks in (GitHub, Gitea/Forgejo, GitLab):
//!   signature, event and payload checks, then a push's commits reported
//!   as an observer reports them.
//! - `pages.rs`: the HTML pages; `html.rs`: escaping, layout, CSS and JS.

mod api;
mod auth;
mod hooks;
mod html;
mod pages;
mod sse;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

use crate::dispatcher::local::{Gone, Local};
use crate::dispatcher::metrics::Metrics;
use crate::proto::auth::Auth;
use crate::proto::{ClientMsg, ErrorCode, ServerMsg};

pub use hooks::{MAX_HOOK_BODY_BYTES, WebhookSecret, WebhookSecretError};

/// What the dispatcher hands the web server.
#[derive(Clone)]
pub struct WebContext {
    pub local: Local,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Auth>,
    /// Refuse requests whose `Host` is not a loopback name (no tokens and
    /// no `--insecure`: the DNS rebinding guard).
    pub loopback_only: bool,
    /// Most HTTP connections open at once ([`connection_cap`]).
    pub max_connections: usize,
    /// The secret forges sign webhook deliveries with
    /// (`--webhook-secret-file`); without it `/hooks/` answers 404.
    pub webhook_secret: Option<WebhookSecret>,
    /// The dispatcher's named repositories (`--repository NAME=URL`, names
    /// only): webhooks map a push to one of them, filters name them.
    /// Empty: the dispatcher serves its default repository only.
    pub repositories: Vec<String>,
}

/// How long a stopping server waits for open requests and streams.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Most HTTP connections open at once; further ones wait in the kernel's
/// backlog until one closes.
pub const MAX_CONNECTIONS: usize = 4096;

/// The HTTP connection cap under a descriptor limit of `fd_limit`: at
/// most a quarter of it (the TCP port, the log and live-log streams' local
/// connections need the rest), between 64 and [`MAX_CONNECTIONS`].
pub fn connection_cap(fd_limit: u64) -> usize {
    ((fd_limit / 4) as usize).clamp(64, MAX_CONNECTIONS)
}

/// Most live-log streams at once; beyond it, 503 with `Retry-After`.
pub const MAX_STREAMS: usize = 1024;

/// A client that has not sent a whole request head in this time is
/// disconnected (idle keep-alive connections too).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An ordinary request (not a stream's body) must be answered in this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request body taken (the login form); 413 beyond.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

/// Largest request target (path and query); 414 beyond.
const MAX_URI_BYTES: usize = 2048;

/// Largest read buffer per connection: a request head bigger than this
/// gets 431 from hyper.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct App(Arc<Inner>);

pub struct Inner {
    ctx: WebContext,
    sessions: auth::Sessions,
    streams: Arc<Semaphore>,
    /// Cancelled when the server stops: live logs end at once.
    stop: CancellationToken,
}

impl std::ops::Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Cancelling it drops the connection a request came on at once (a live
/// log whose reader stopped reading).
#[derive(Clone)]
pub struct ConnKill(pub CancellationToken);

/// Why a request failed; pages and the API show it their own way.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    BadRequest(String),
    #[error("this dispatcher needs the tool secret: log in, or send Authorization: Bearer SECRET")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the dispatcher is stopping")]
    Gone,
    #[error("unexpected answer from the dispatcher: {0}")]
    Unexpected(&'static str),
}

impl From<Gone> for WebError {
    fn from(_: Gone) -> WebError {
        WebError::Gone
    }
}

impl WebError {
    /// The status, decided on the refusal's code, never on its text.
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::Gone => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
            WebError::Refused { code, .. } => match code {
                ErrorCode::Invalid | ErrorCode::Ambiguous => StatusCode::BAD_REQUEST,
                ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
                ErrorCode::NotPermitted => StatusCode::FORBIDDEN,
                ErrorCode::NotFound => StatusCode::NOT_FOUND,
                ErrorCode::Conflict => StatusCode::CONFLICT,
                ErrorCode::ShuttingDown
                | ErrorCode::Busy
                | ErrorCode::Timeout
                | ErrorCode::Unavailable
                | ErrorCode::TooSlow => StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Version | ErrorCode::Superseded => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// As the API says it: `{"error": "..."}`.
    pub fn into_json(self) -> Response {
        let status = self.status();
        let mut resp = (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }

    /// As a page says it; without access, a redirect to the login form.
    pub fn into_page(self) -> Response {
        if matches!(self, WebError::Unauthorized) {
            return Redirect::to("/login").into_response();
        }
        let status = self.status();
        let body = format!(
            "<h1>{}</h1><p class=\"error\">{}</p>",
            status.as_u16(),
            html::escape(&self.to_string())
        );
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html::layout("Error", None, "", &body),
        )
            .into_response()
    }
}

/// Serves until `stop`; then gives open requests a moment and returns.
///
/// Each accepted connection takes a permit of `max_connections` (none
/// free: the accept waits), is served by hyper's HTTP/1 with a
/// [`HEADER_READ_TIMEOUT`] and a bounded read buffer, and can be dropped
/// at once through its [`ConnKill`].
pub async fn serve(listener: TcpListener, ctx: WebContext, stop: CancellationToken) {
    let sessions = match auth::Sessions::new() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "no randomness for the web sessions; the http server is off");
            return;
        }
    };
    let app = App(Arc::new(Inner {
        ctx,
        sessions,
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        stop: stop.clone(),
    }));
    let permits = Arc::new(Semaphore::new(app.ctx.max_connections));
    let router = router(app);
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: let some close.
                    warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let kill = CancellationToken::new();
        let router = router.clone();
        let conn_kill = ConnKill(kill.clone());
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(conn_kill.clone());
                let req = req.map(Body::new);
                let fut = router.clone().call(req);
                async move { Ok::<_, Infallible>(fut.await.unwrap_or_else(|e| match e {})) }
            });
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "http connection ended");
                    }
                }
                _ = kill.cancelled() => {
                    debug!(%peer, "http connection dropped: its reader stopped reading");
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(STOP_GRACE, conn).await;
                }
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(STOP_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("open http requests did not end in time; closing them");
    }
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(pages::commits))
        .route("/commits/{sha}", get(pages::commit))
        .route("/runners", get(pages::runners))
        .route("/history", get(pages::history))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/static/app.js", get(app_js))
        .route("/static/app.css", get(app_css))
        .route("/api/v1/commits", get(api::commits))
        .route("/api/v1/commits/{sha}", get(api::commit))
        .route("/api/v1/commits/{sha}/log", get(sse::log))
        .route("/api/v1/commits/{sha}/cancel", post(api::cancel))
        .route("/api/v1/commits/{sha}/retry", post(api::retry))
        .route("/api/v1/runners", get(api::runners))
        .route("/api/v1/history", get(api::history))
        .route("/api/v1/status", get(api::status_json))
        .route("/metrics", get(metrics))
        .route(
            "/hooks/github",
            post(hooks::github).fallback(hooks::not_post),
        )
        .route("/hooks/gitea", post(hooks::gitea).fallback(hooks::not_post))
        .route(
            "/hooks/gitlab",
            post(hooks::gitlab).fallback(hooks::not_post),
        )
        .route("/hooks/{forge}", any(hooks::unknown_forge))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Every request: the target's size, the loopback `Host` rule, the
/// cross-site rule for POSTs, the body's declared size, the request time
/// limit; then the security headers on the answer.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let mut resp = check(&app, req, next).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// How a refusal from [`check`] is written: webhook routes answer one
/// JSON object (the forge shows it in its delivery log), the rest plain
/// text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Plain,
    Json,
}

fn refuse(shape: Shape, status: StatusCode, text: &'static str) -> Response {
    match shape {
        Shape::Plain => plain(status, text),
        Shape::Json => (
            status,
            axum::Json(serde_json::json!({ "error": text.trim_end() })),
        )
            .into_response(),
    }
}

async fn check(app: &App, req: Request, next: Next) -> Response {
    let hook = req.uri().path().starts_with("/hooks/");
    let shape = if hook { Shape::Json } else { Shape::Plain };
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return refuse(
            shape,
            StatusCode::URI_TOO_LONG,
            "the request target is longer than 2048 bytes\n",
        );
    }
    let headers = req.headers();
    if app.ctx.loopback_only {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !host.is_some_and(auth::is_loopback_host) {
            return refuse(
                shape,
                StatusCode::MISDIRECTED_REQUEST,
                "this dispatcher has no tokens and answers only requests to a loopback name \
                 (localhost, 127.0.0.1, [::1]); give it --token-file to serve other names\n",
            );
        }
    }
    // Forge deliveries carry no Origin and no Sec-Fetch-Site, so they pass;
    // a browser's cross-site POST to a hook is refused like any other.
    if let Some(why) = auth::cross_site(req.method(), headers) {
        return if req.uri().path().starts_with("/api/") {
            WebError::Forbidden(why.into()).into_json()
        } else {
            refuse(
                shape,
                StatusCode::FORBIDDEN,
                "cross-site requests may not act here\n",
            )
        };
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (limit, too_large) = if hook {
        (
            MAX_HOOK_BODY_BYTES,
            "webhook deliveries are at most 8 MiB; push fewer commits at once\n",
        )
    } else {
        (MAX_BODY_BYTES, "request bodies are at most 4 KiB\n")
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return refuse(shape, StatusCode::PAYLOAD_TOO_LARGE, too_large);
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => refuse(
            shape,
            StatusCode::SERVICE_UNAVAILABLE,
            "the dispatcher did not answer in time\n",
        ),
    }
}

async fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        html::APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        html::APP_CSS,
    )
        .into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this dispatcher needs the tool secret: Authorization: Bearer SECRET\n",
    )
        .into_response()
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let Ok(a) = auth::access(&app, &headers) else {
        return unauthorized();
    };
    match api::ask(&app, a.grant, ClientMsg::Metrics).await {
        Ok(ServerMsg::Metrics(view)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            app.ctx.metrics.render(&view),
        )
            .into_response(),
        _ => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the dispatcher is stopping\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_descriptor_limit() {
        assert_eq!(connection_cap(1024), 256);
        assert_eq!(connection_cap(100), 64);
        assert_eq!(connection_cap(20_000), MAX_CONNECTIONS);
        assert_eq!(connection_cap(u64::MAX), MAX_CONNECTIONS);
    }

    #[test]
    fn refusals_map_to_statuses_by_code() {
        let s = |code| {
            WebError::Refused {
                code,
                message: String::new(),
            }
            .status()
        };
        assert_eq!(s(ErrorCode::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(s(ErrorCode::Conflict), StatusCode::CONFLICT);
        assert_eq!(s(ErrorCode::NotPermitted), StatusCode::FORBIDDEN);
        assert_eq!(s(ErrorCode::Invalid), StatusCode::BAD_REQUEST);
        assert_eq!(s(ErrorCode::Ambiguous), StatusCode::BAD_REQUEST);
        assert_eq!(s(ErrorCode::Busy), StatusCode::SERVICE_UNAVAILABLE);
    }
}
