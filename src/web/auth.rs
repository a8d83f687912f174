//! Who may do what over HTTP, by the TCP port's rule.
//!
//! - Without tokens everything is allowed, but only on loopback: the
//!   dispatcher refuses to listen elsewhere (unless `--insecure`), and
//!   requests whose `Host` is not a loopback name are refused (a DNS
//!   rebinding page would otherwise read the dashboard).
//! - With tokens, a request earns a [`Grant`] from the tool secret: in an
//!   `Authorization: Bearer SECRET` header (scripts), or from the session
//!   cookie `POST /login` sets (browsers). The cookie holds no secret: it
//!   is a random value made at the dispatcher's start, one for reading and
//!   one for writing (so a restart logs everyone out).
//! - Actions (POST) refuse cross-site requests (`Sec-Fetch-Site`,
//!   `Origin`), and a cookie or tokenless request must carry the page's
//!   CSRF token (`X-CI-CSRF` header or `csrf` form field): an HMAC of the
//!   session under a key made at the dispatcher's start. Bearer requests
//!   need none (a browser never adds that header by itself).
//! - Forge webhooks (`/hooks/`) use none of this: a delivery carries no
//!   cookie, bearer header or `Origin`, so it passes the cross-site check,
//!   and its signature earns it an observer's rights (see `hooks.rs`).

use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{KeyInit, Mac};
use serde::Deserialize;

use super::{App, WebError, html};
use crate::proto::auth::Grant;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The session cookie's name.
pub const COOKIE: &str = "ci_session";

/// The header a page's script sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-ci-csrf";

/// A session cookie lives this long (a restart ends it sooner).
const COOKIE_MAX_AGE_S: u64 = 7 * 24 * 3600;

/// Random per dispatcher start: the cookie values and the CSRF key.
pub struct Sessions {
    key: [u8; 32],
    read: String,
    write: String,
}

use crate::util::hex;

/// Constant-time equality of two strings (of any lengths).
fn same(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// Constant-time equality of two byte strings (of any lengths): their
/// HMACs are compared, so neither the contents nor where they first differ
/// shows in the time taken.
pub(super) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let tag = |s: &[u8]| {
        let mut m = HmacSha256::new_from_slice(b"ci-web-compare").expect("any key length");
        m.update(s);
        m.finalize().into_bytes()
    };
    let (x, y) = (tag(a), tag(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

impl Sessions {
    pub fn new() -> Result<Sessions, getrandom::Error> {
        let mut key = [0u8; 32];
        let mut r = [0u8; 32];
        let mut w = [0u8; 32];
        getrandom::fill(&mut key)?;
        getrandom::fill(&mut r)?;
        getrandom::fill(&mut w)?;
        Ok(Sessions {
            key,
            read: format!("r{}", hex(&r)),
            write: format!("w{}", hex(&w)),
        })
    }

    fn cookie_for(&self, g: Grant) -> &str {
        if g.write { &self.write } else { &self.read }
    }

    fn grant_for_cookie(&self, v: &str) -> Option<Grant> {
        if same(v, &self.write) {
            Some(Grant { write: true })
        } else if same(v, &self.read) {
            Some(Grant { write: false })
        } else {
            None
        }
    }

    /// The CSRF token of a session (`""` without tokens).
    fn csrf_for(&self, session: &str) -> String {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("any key length");
        m.update(b"csrf\0");
        m.update(session.as_bytes());
        hex(&m.finalize().into_bytes())
    }
}

/// How a request was let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// No tokens configured (loopback only).
    Open,
    Bearer,
    /// The session cookie, with its value.
    Cookie(String),
}

#[derive(Clone, Debug)]
pub struct Access {
    pub grant: Grant,
    pub via: Via,
}

impl Access {
    /// The token a page embeds for its actions (none for bearer requests,
    /// which need none).
    pub fn csrf(&self, app: &App) -> Option<String> {
        match &self.via {
            Via::Open => Some(app.sessions.csrf_for("")),
            Via::Cookie(v) => Some(app.sessions.csrf_for(v)),
            Via::Bearer => None,
        }
    }
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// What the request's credentials earn; `Err(Unauthorized)` when nothing.
/// A wrong bearer secret is refused even with a good cookie.
pub fn access(app: &App, headers: &HeaderMap) -> Result<Access, WebError> {
    if app.ctx.auth.is_open() {
        return Ok(Access {
            grant: Grant { write: true },
            via: Via::Open,
        });
    }
    if let Some(secret) = bearer(headers) {
        return app
            .ctx
            .auth
            .grant_for_secret(secret.as_bytes())
            .map(|grant| Access {
                grant,
                via: Via::Bearer,
            })
            .ok_or(WebError::Unauthorized);
    }
    if let Some(v) = cookie_value(headers, COOKIE)
        && let Some(grant) = app.sessions.grant_for_cookie(v)
    {
        return Ok(Access {
            grant,
            via: Via::Cookie(v.to_string()),
        });
    }
    Err(WebError::Unauthorized)
}

/// An action's checks beyond the cross-site ones (done for every POST in
/// [`super::guard`]): the grant to write, and the CSRF token unless the
/// request came with a bearer header.
pub fn check_action(
    app: &App,
    access: &Access,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<(), WebError> {
    if !access.grant.write {
        return Err(WebError::Forbidden(
            "this secret is read-only; cancel and retry need the tool-write secret".into(),
        ));
    }
    check_csrf(app, access, headers, form_token)
}

fn check_csrf(
    app: &App,
    access: &Access,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<(), WebError> {
    let Some(want) = access.csrf(app) else {
        return Ok(());
    };
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(form_token);
    match given {
        Some(g) if same(g, &want) => Ok(()),
        _ => Err(WebError::Forbidden(
            "missing or wrong CSRF token (send the page's token in X-CI-CSRF)".into(),
        )),
    }
}

/// Why a POST is refused as cross-site, if it is: `Sec-Fetch-Site` says
/// `cross-site` or `same-site`, or `Origin` is present and is not this
/// host.
pub fn cross_site(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    if method != Method::POST {
        return None;
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && matches!(site.as_bytes(), b"cross-site" | b"same-site")
    {
        return Some("cross-site requests may not act here");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin = origin.to_str().ok();
        let matches = match (origin, host) {
            (Some(o), Some(h)) => {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
                    == Some(h)
            }
            _ => false,
        };
        if !matches {
            return Some("the request's Origin is not this dashboard");
        }
    }
    None
}

/// Whether `host` (a `Host` header: name or address, maybe a port) names
/// this machine's loopback: `localhost`, `*.localhost`, 127.0.0.0/8, ::1.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, tail)) if tail.is_empty() || tail.starts_with(':') => ip,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    secret: String,
}

fn session_cookie(value: &str, max_age_s: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}"
    ))
    .ok()
}

/// `GET /login`: the form.
pub async fn login_page(State(app): State<App>) -> Response {
    let body = if app.ctx.auth.is_open() {
        "<h1>Log in</h1><p>This dispatcher has no tokens: nothing to log in to. \
         <a href=\"/\">Commits</a></p>"
            .to_string()
    } else {
        login_form("")
    };
    html_page(StatusCode::OK, "Log in", &body)
}

fn login_form(message: &str) -> String {
    format!(
        "<h1>Log in</h1>{}<form id=\"login\" method=\"post\" action=\"/login\">\
         <label>Tool secret (<code>tool</code> to read, <code>tool-write</code> to cancel and retry) \
         <input type=\"password\" name=\"secret\" autocomplete=\"current-password\" required></label> \
         <button type=\"submit\">Log in</button></form>",
        if message.is_empty() {
            String::new()
        } else {
            format!("<p class=\"error\">{}</p>", html::escape(message))
        }
    )
}

fn html_page(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html::layout(title, None, "", body),
    )
        .into_response()
}

/// `POST /login`: a good tool secret sets the session cookie.
pub async fn login(State(app): State<App>, Form(form): Form<LoginForm>) -> Response {
    if app.ctx.auth.is_open() {
        return Redirect::to("/").into_response();
    }
    let secret = form.secret.trim();
    let Some(grant) = app.ctx.auth.grant_for_secret(secret.as_bytes()) else {
        return html_page(
            StatusCode::UNAUTHORIZED,
            "Log in",
            &login_form("That is not a tool secret of this dispatcher."),
        );
    };
    let mut resp = Redirect::to("/").into_response();
    if let Some(c) = session_cookie(app.sessions.cookie_for(grant), COOKIE_MAX_AGE_S) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

#[derive(Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: clears the cookie (with the page's CSRF token).
pub async fn logout(
    State(app): State<App>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Ok(a) = access(&app, &headers)
        && let Err(e) = check_csrf(&app, &a, &headers, Some(&form.csrf))
    {
        return e.into_page();
    }
    let mut resp = Redirect::to("/login").into_response();
    if let Some(c) = session_cookie("", 0) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "app.localhost:1",
            "127.0.0.1",
            "127.0.0.1:9000",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "example.com",
            "evil.com:80",
            "localhost.evil.com",
            "10.0.0.1:80",
            "[::2]:80",
            "[::1]x",
            "127.0.0.1:abc",
            "",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(cross_site(&Method::POST, &h), None);
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert_eq!(cross_site(&Method::POST, &h), None);
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.com"));
        assert!(cross_site(&Method::POST, &h).is_some());
        assert_eq!(cross_site(&Method::GET, &h), None);
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&Method::POST, &h).is_some());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert_eq!(cross_site(&Method::POST, &h), None);
    }

    #[test]
    fn forge_deliveries_pass_the_cross_site_check_and_browsers_do_not() {
        // What GitHub, Gitea and GitLab send: no Origin, no Sec-Fetch-Site,
        // no cookie. The signature is their credential (hooks.rs).
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("ci.example:8080"));
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static("GitHub-Hookshot/abc"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert_eq!(cross_site(&Method::POST, &h), None);
        // A page elsewhere posting to a hook is still refused.
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&Method::POST, &h).is_some());
    }

    #[test]
    fn sessions_tell_read_from_write_and_csrf_tokens_differ() {
        let s = Sessions::new().unwrap();
        let r = s.cookie_for(Grant { write: false }).to_string();
        let w = s.cookie_for(Grant { write: true }).to_string();
        assert_eq!(s.grant_for_cookie(&r), Some(Grant { write: false }));
        assert_eq!(s.grant_for_cookie(&w), Some(Grant { write: true }));
        assert_eq!(s.grant_for_cookie("r00"), None);
        assert_eq!(s.grant_for_cookie(""), None);
        assert_ne!(s.csrf_for(&r), s.csrf_for(&w));
        assert_eq!(s.csrf_for(&r), s.csrf_for(&r));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ci_session=wabc ; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("wabc"));
        assert_eq!(cookie_value(&h, "c"), None);
    }
}
