//! The admin listener: a separate address, a bearer token, and a small JSON/text API.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | 200 while the process runs (no token needed) |
//! | `GET /ready` | 200, or 503 `{"ready": false, "reason"}`: store unreachable, a worker stopped, draining (no token needed) |
//! | `GET /openapi.json` | the OpenAPI 3 description of this API (`engine/openapi/admin.json`; no token needed) |
//! | `GET /metrics` | Prometheus text: connections, bytes, responses, completions, webhook, shaper, auth pool, loop latency, driver, build |
//! | `GET /downloads` | live downloads by user and item: connections, current rate, bytes sent, age |
//! | `GET /users/{name}` | `{"name", "rate", "active_connections"}` |
//! | `PUT /users/{name}/rate` | body `{"rate": "1MiB" \| "unlimited" \| "default"}`: stored, and applied live |
//! | `DELETE /users/{name}/connections` | cut the user's connections now (202) |
//! | `PUT /global/rate` | body `{"rate": "25MiB" \| "unlimited"}`: applied live |
//! | `POST /drain` | same as SIGTERM |
//! | `POST /tls/reload` | same as SIGHUP: reload the TLS certificate and key (409 and the reason if refused) |
//!
//! The routes are one table ([`ROUTES`]); the OpenAPI file lists the same (a test checks).
//! Missing or wrong token → 401 (the scheme `Bearer` in any case); malformed body or rate →
//! 400 with the reason; unknown user → 404.
//!
//! It runs on one thread with its own store connection, never on an I/O worker, as a small
//! event loop (mio): no thread per connection, so no client can hold the API by holding a
//! connection open. Every answer closes its connection. The limits ([`MAX_CONNECTIONS`],
//! [`REQUEST_TIMEOUT`], [`MAX_HEAD`], [`MAX_BODY`]) apply before the token is checked:
//! - the whole request (head and body) must arrive within [`REQUEST_TIMEOUT`] of the accept,
//!   and the answer must be taken within as long again; otherwise the connection is closed;
//! - a head larger than [`MAX_HEAD`] is answered 431, a body larger than [`MAX_BODY`] 413, a
//!   chunked body 411;
//! - at most [`MAX_CONNECTIONS`] connections are open; one more closes the oldest, so a client
//!   holding many open cannot lock the others out.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use weir_shaper::Rate;

use crate::accesslog::LiveDownload;
use crate::storage::{Storage, Store, StoreError};

/// Admin connections open at once; one more closes the oldest.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its whole request after connecting (and again to read the answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head (431 beyond).
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body (413 beyond).
pub const MAX_BODY: usize = 4 * 1024;

/// Live rate changes, implemented by the server's shaper.
pub trait RateControl: Send + Sync {
    /// `None`: back to the server's default rate.
    fn set_user_rate(&self, user: &str, rate: Option<Rate>);
    fn set_global_rate(&self, rate: Rate);
    fn user_connections(&self, user: &str) -> u64;
}

/// What the admin thread needs.
pub struct AdminState {
    pub token: String,
    pub data_dir: PathBuf,
    /// Renders `GET /metrics` (the server's Prometheus text). A closure, so the admin listener
    /// does not import the server that starts it.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    pub rates: Option<Arc<dyn RateControl>>,
    pub drain: Box<dyn Fn() + Send + Sync>,
    /// Reloads the TLS certificate files (`None`: no `--tls-listen`).
    pub tls_reload: Option<Box<dyn Fn() -> Result<(), String> + Send + Sync>>,
    /// `GET /ready` beyond the store: `Err(reason)` while draining or with a worker stopped.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// The workers' published live downloads (one entry per connection).
    pub downloads: Box<dyn Fn() -> Vec<LiveDownload> + Send + Sync>,
    /// Cut every connection of a user now.
    pub cut: Box<dyn Fn(&str) + Send + Sync>,
}

/// Bind `addr` and serve the admin API on a thread; returns the bound address.
pub fn spawn(addr: SocketAddr, state: AdminState) -> anyhow::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("admin listener on {addr}: {e}"))?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let listener = TcpListener::from_std(std_listener);
    let store = Store::open(&state.data_dir)?;
    let poll = Poll::new()?;
    std::thread::Builder::new()
        .name("weir-admin".into())
        .spawn(move || {
            let mut lp = Loop {
                poll,
                listener,
                conns: HashMap::new(),
                next: 1,
                state,
                store,
            };
            if let Err(e) = lp.run() {
                tracing::error!(error = %e, "the admin listener stopped");
            }
        })?;
    Ok(bound)
}

const LISTENER: Token = Token(0);

/// One admin connection: reading its request, then writing its answer.
struct AdminConn {
    stream: TcpStream,
    accepted: Instant,
    deadline: Instant,
    buf: Vec<u8>,
    /// The answer, once the request is complete; `written` bytes of it sent.
    out: Option<Vec<u8>>,
    written: usize,
    /// Drain the server once this answer is out.
    drain_after: bool,
}

struct Loop {
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<usize, AdminConn>,
    next: usize,
    state: AdminState,
    store: Store,
}

/// What one read step decided.
enum Step {
    More,
    /// Status, body, content type, and whether to drain the server once it is out.
    Answer(u16, String, &'static str, bool),
    Close,
}

impl Loop {
    fn run(&mut self) -> std::io::Result<()> {
        self.poll
            .registry()
            .register(&mut self.listener, LISTENER, Interest::READABLE)?;
        let mut events = Events::with_capacity(128);
        loop {
            let now = Instant::now();
            let wait = self
                .conns
                .values()
                .map(|c| c.deadline.saturating_duration_since(now))
                .min()
                .map(|d| d + Duration::from_millis(1));
            match self.poll.poll(&mut events, wait) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    Token(t) => self.ready(t),
                }
            }
            let now = Instant::now();
            let expired: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| c.deadline <= now)
                .map(|(t, _)| *t)
                .collect();
            for t in expired {
                self.close(t);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog until the next event.
                    tracing::warn!(error = %e, "admin accept failed");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                let oldest = self
                    .conns
                    .iter()
                    .min_by_key(|(_, c)| c.accepted)
                    .map(|(t, _)| *t);
                if let Some(t) = oldest {
                    self.close(t);
                }
            }
            let token = self.next;
            self.next += 1;
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(token), interest)
                .is_err()
            {
                continue;
            }
            let now = Instant::now();
            self.conns.insert(
                token,
                AdminConn {
                    stream,
                    accepted: now,
                    deadline: now + REQUEST_TIMEOUT,
                    buf: Vec::new(),
                    out: None,
                    written: 0,
                    drain_after: false,
                },
            );
            // The request may already be there (edge-triggered).
            self.ready(token);
        }
    }

    fn close(&mut self, token: usize) {
        if let Some(mut c) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// The connection may be readable or writable: make all the progress it allows.
    fn ready(&mut self, token: usize) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if c.out.is_none() {
            match read_request(c, &self.state, &self.store) {
                Step::More => return,
                Step::Close => return self.close(token),
                Step::Answer(status, body, ctype, drain) => {
                    c.drain_after = drain;
                    c.out = Some(render(status, &body, ctype));
                    c.deadline = Instant::now() + REQUEST_TIMEOUT;
                }
            }
        }
        let Some(out) = &c.out else { return };
        while c.written < out.len() {
            match c.stream.write(&out[c.written..]) {
                Ok(0) => return self.close(token),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.close(token),
            }
        }
        let _ = c.stream.flush();
        let _ = c.stream.shutdown(std::net::Shutdown::Write);
        let drain = c.drain_after;
        self.close(token);
        // Drain only after the answer went out: a drained server exits.
        if drain {
            (self.state.drain)();
        }
    }
}

/// Read what arrived; answer once the head and its body are complete.
fn read_request(c: &mut AdminConn, state: &AdminState, store: &dyn Storage) -> Step {
    let mut chunk = [0u8; 4096];
    let mut eof = false;
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                // The client may have half-closed after its request: answer it if complete.
                eof = true;
                break;
            }
            Ok(n) => {
                c.buf.extend_from_slice(&chunk[..n]);
                if c.buf.len() > MAX_HEAD + MAX_BODY {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Step::Close,
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(&c.buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) => return error(431, "request head too large"),
        Ok(httparse::Status::Partial) if c.buf.len() > MAX_HEAD => {
            return error(431, "request head too large")
        }
        Ok(httparse::Status::Partial) if eof => return Step::Close,
        Ok(httparse::Status::Partial) => return Step::More,
        Err(httparse::Error::TooManyHeaders) => return error(431, "too many header fields"),
        Err(e) => return error(400, &format!("malformed request: {e}")),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    if header("Transfer-Encoding").is_some() {
        return error(411, "send the body with a Content-Length");
    }
    let length = match header("Content-Length").map(|v| v.trim().parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return error(400, "malformed Content-Length"),
    };
    if length > MAX_BODY {
        return error(413, "request body too large");
    }
    if c.buf.len() < head_len + length {
        return if eof { Step::Close } else { Step::More };
    }
    let body = &c.buf[head_len..head_len + length];
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    let auth = header("Authorization");
    let (status, text, ctype) = handle(state, store, method, path, auth.as_deref(), body);
    let url = path.split('?').next().unwrap_or("");
    let drain = status == 202 && find_route(method, url).is_some_and(|(r, _)| r == Route::Drain);
    Step::Answer(status, text, ctype, drain)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn render(status: u16, body: &str, ctype: &str) -> Vec<u8> {
    let reason = reason(status);
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        out.push_str("WWW-Authenticate: Bearer\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

const JSON: &str = "application/json";

fn error(status: u16, reason: &str) -> Step {
    let (status, body, ctype) = answer_error(status, reason);
    Step::Answer(status, body, ctype, false)
}

fn answer_error(status: u16, reason: &str) -> (u16, String, &'static str) {
    (
        status,
        serde_json::json!({ "error": reason }).to_string() + "\n",
        JSON,
    )
}

/// Constant-time comparison of the presented bearer token; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn authorized(state: &AdminState, header: Option<&str>) -> bool {
    let presented = header
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    let (a, b) = (presented.as_bytes(), state.token.as_bytes());
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parse a rate body `{"rate": "..."}` (at most [`MAX_BODY`] bytes); `Ok(None)` for "default"
/// when `allow_default`. Public for the fuzz target.
pub fn parse_rate_body(body: &[u8], allow_default: bool) -> Result<Option<Rate>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let rate = v
        .get("rate")
        .and_then(|r| r.as_str())
        .ok_or("body must be {\"rate\": \"1MiB\"}")?;
    if allow_default && rate == "default" {
        return Ok(None);
    }
    rate.parse::<Rate>().map(Some).map_err(|e| e.to_string())
}

/// What an admin request asks for; [`ROUTES`] maps methods and paths to these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Health,
    Ready,
    OpenApi,
    Metrics,
    Downloads,
    User,
    UserRate,
    UserConnections,
    GlobalRate,
    Drain,
    TlsReload,
}

/// Every route the admin API answers: method, path as `openapi/admin.json` writes it (`{x}`
/// matches one segment), and the route. The OpenAPI description lists exactly these (a test
/// checks). To add a route: a row here, a [`Route`], its arm in [`handle`], its entry there.
const ROUTES: &[(&str, &str, Route)] = &[
    ("GET", "/health", Route::Health),
    ("GET", "/ready", Route::Ready),
    ("GET", "/openapi.json", Route::OpenApi),
    ("GET", "/metrics", Route::Metrics),
    ("GET", "/downloads", Route::Downloads),
    ("GET", "/users/{name}", Route::User),
    ("PUT", "/users/{name}/rate", Route::UserRate),
    (
        "DELETE",
        "/users/{name}/connections",
        Route::UserConnections,
    ),
    ("PUT", "/global/rate", Route::GlobalRate),
    ("POST", "/drain", Route::Drain),
    ("POST", "/tls/reload", Route::TlsReload),
];

/// Routes answered without the bearer token: probes that reveal nothing.
fn public(route: Route) -> bool {
    matches!(route, Route::Health | Route::Ready | Route::OpenApi)
}

/// The OpenAPI 3 description of this API, served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi/admin.json");

/// The route `method path` names, with the path's `{x}` segments in order.
fn find_route<'a>(method: &str, path: &'a str) -> Option<(Route, Vec<&'a str>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    ROUTES.iter().find_map(|(m, pattern, route)| {
        let pat: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        if *m != method || pat.len() != parts.len() {
            return None;
        }
        let mut params = Vec::new();
        for (p, got) in pat.iter().zip(&parts) {
            if p.starts_with('{') {
                if got.is_empty() {
                    return None;
                }
                params.push(*got);
            } else if p != got {
                return None;
            }
        }
        Some((*route, params))
    })
}

fn json(status: u16, v: serde_json::Value) -> (u16, String, &'static str) {
    (status, v.to_string() + "\n", JSON)
}

/// `GET /downloads`: the workers' connections grouped by user and item.
fn downloads(state: &AdminState) -> serde_json::Value {
    use std::collections::BTreeMap;
    let now = Instant::now();
    /// Connections, summed rate (none until measured), bytes sent, bytes delivered, oldest start.
    type Group = (u64, Option<u64>, u64, u64, Instant);
    let mut by: BTreeMap<(Arc<str>, Arc<str>), Group> = BTreeMap::new();
    for d in (state.downloads)() {
        let e = by
            .entry((d.user.clone(), d.item.clone()))
            .or_insert((0, None, 0, 0, d.began));
        e.0 += 1;
        if let Some(r) = d.rate {
            e.1 = Some(e.1.unwrap_or(0) + r);
        }
        e.2 += d.sent;
        e.3 += d.delivered;
        e.4 = e.4.min(d.began);
    }
    let list: Vec<serde_json::Value> = by
        .into_iter()
        .map(|((user, item), (conns, rate, sent, delivered, began))| {
            serde_json::json!({
                "user": &*user,
                "item": &*item,
                "connections": conns,
                "rate_bytes_per_second": rate,
                "sent_bytes": sent,
                "delivered_bytes": delivered,
                "age_seconds": now.saturating_duration_since(began).as_secs_f64(),
            })
        })
        .collect();
    serde_json::json!({ "downloads": list })
}

fn handle(
    state: &AdminState,
    store: &dyn Storage,
    method: &str,
    target: &str,
    auth: Option<&str>,
    body: &[u8],
) -> (u16, String, &'static str) {
    let error = answer_error;
    let url = target.split('?').next().unwrap_or("");
    let found = find_route(method, url);
    let is_public = found.as_ref().is_some_and(|(r, _)| public(*r));
    if !is_public && !authorized(state, auth) {
        return error(401, "missing or wrong bearer token");
    }
    let Some((route, params)) = found else {
        return error(404, "no such admin route");
    };
    let name = params.first().copied().unwrap_or("");
    match route {
        Route::Health => json(200, serde_json::json!({ "status": "live" })),
        Route::Ready => {
            let reason = match store.outbox_len() {
                Err(e) => Err(format!("store unreachable: {e}")),
                Ok(_) => (state.ready)(),
            };
            match reason {
                Ok(()) => json(200, serde_json::json!({ "ready": true })),
                Err(why) => json(503, serde_json::json!({ "ready": false, "reason": why })),
            }
        }
        Route::OpenApi => (200, OPENAPI.to_string(), JSON),
        Route::Metrics => {
            let mut text = (state.metrics)();
            // The webhook outbox lives in the store: counted here, off the I/O threads.
            if let Ok(n) = store.outbox_len() {
                text.push_str(&format!(
                    "# HELP weir_webhook_queue_depth Completion events waiting in the webhook outbox.\n# TYPE weir_webhook_queue_depth gauge\nweir_webhook_queue_depth {n}\n"
                ));
            }
            (200, text, "text/plain; version=0.0.4")
        }
        Route::Downloads => json(200, downloads(state)),
        Route::User => match store.user(name) {
            Ok(Some(u)) => {
                let conns = state.rates.as_ref().map(|r| r.user_connections(name));
                json(
                    200,
                    serde_json::json!({
                        "name": u.name,
                        "rate": u.rate.map(|r| r.to_string()),
                        "active_connections": conns,
                    }),
                )
            }
            Ok(None) => error(404, "unknown user"),
            Err(e) => error(500, &e.to_string()),
        },
        Route::UserConnections => match store.user(name) {
            Ok(Some(_)) => {
                let conns = state.rates.as_ref().map(|r| r.user_connections(name));
                (state.cut)(name);
                json(
                    202,
                    serde_json::json!({ "name": name, "cut_connections": conns }),
                )
            }
            Ok(None) => error(404, "unknown user"),
            Err(e) => error(500, &e.to_string()),
        },
        Route::UserRate => {
            let rate = match parse_rate_body(body, true) {
                Ok(r) => r,
                Err(e) => return error(400, &e),
            };
            let Some(rates) = &state.rates else {
                return error(501, "bandwidth shaping is not available in this build");
            };
            match store.set_user_rate(name, rate) {
                Ok(()) => {
                    rates.set_user_rate(name, rate);
                    let shown = rate.map(|r| r.to_string());
                    json(200, serde_json::json!({ "name": name, "rate": shown }))
                }
                Err(StoreError::UnknownUser(_)) => error(404, "unknown user"),
                Err(e) => error(500, &e.to_string()),
            }
        }
        Route::GlobalRate => {
            let rate = match parse_rate_body(body, false) {
                Ok(Some(r)) => r,
                Ok(None) => return error(400, "the global rate has no default"),
                Err(e) => return error(400, &e),
            };
            let Some(rates) = &state.rates else {
                return error(501, "bandwidth shaping is not available in this build");
            };
            rates.set_global_rate(rate);
            json(200, serde_json::json!({ "global_rate": rate.to_string() }))
        }
        Route::Drain => (202, "{\"draining\":true}\n".into(), JSON),
        Route::TlsReload => match &state.tls_reload {
            None => error(404, "no --tls-listen: nothing to reload"),
            Some(reload) => match reload() {
                Ok(()) => (200, "{\"reloaded\":true}\n".into(), JSON),
                Err(why) => error(409, &why),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI description lists exactly the routes the server answers, with their methods.
    #[test]
    fn openapi_lists_every_route() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).expect("admin.json is JSON");
        assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
        let paths = spec["paths"].as_object().unwrap();
        let mut described = Vec::new();
        for (path, ops) in paths {
            for method in ops.as_object().unwrap().keys() {
                if method != "parameters" {
                    described.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        described.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(served, described);
        // And the router answers each of them (a sample path for each pattern).
        for (m, p, route) in ROUTES {
            let path = p.replace("{name}", "alice");
            assert_eq!(
                find_route(m, &path).map(|(r, _)| r),
                Some(*route),
                "{m} {p}"
            );
        }
    }

    #[test]
    fn routes_match_whole_segments() {
        assert_eq!(
            find_route("DELETE", "/users/bob/connections"),
            Some((Route::UserConnections, vec!["bob"]))
        );
        assert_eq!(find_route("GET", "/users//"), None);
        assert_eq!(find_route("GET", "/healthz"), None);
        assert_eq!(find_route("POST", "/health"), None);
    }
}
