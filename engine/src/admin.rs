//! The admin listener: a separate address, a bearer token, and a small JSON/text API.
//!
//! | route | what |
//! |---|---|
//! | `GET /metrics` | Prometheus text: connections, bytes, responses by class, timeouts, credits |
//! | `GET /users/{name}` | `{"name", "rate", "active_connections"}` |
//! | `PUT /users/{name}/rate` | body `{"rate": "1MiB" \| "unlimited" \| "default"}`: stored, and applied live |
//! | `PUT /global/rate` | body `{"rate": "25MiB" \| "unlimited"}`: applied live |
//! | `POST /drain` | same as SIGTERM |
//!
//! Missing or wrong token → 401; malformed body or rate → 400 with the reason; unknown user →
//! 404. It runs on its own thread with its own store connection, never on an I/O worker.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use weir_shaper::Rate;

use crate::storage::{Storage, Store, StoreError};

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
}

/// Bind `addr` and serve the admin API on a thread; returns the bound address.
pub fn spawn(addr: SocketAddr, state: AdminState) -> anyhow::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("admin listener on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("admin listener is not an IP socket"))?;
    let store = Store::open(&state.data_dir)?;
    std::thread::Builder::new()
        .name("weir-admin".into())
        .spawn(move || {
            for mut req in server.incoming_requests() {
                let (status, body, ctype) = handle(&state, &store, &mut req);
                let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
                if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", ctype) {
                    resp.add_header(h);
                }
                if status == 401 {
                    if let Ok(h) = tiny_http::Header::from_bytes("WWW-Authenticate", "Bearer") {
                        resp.add_header(h);
                    }
                }
                let _ = req.respond(resp);
                // Drain only after the answer went out: a drained server exits.
                if status == 202 {
                    (state.drain)();
                }
            }
        })?;
    Ok(bound)
}

const JSON: &str = "application/json";

fn error(status: u16, reason: &str) -> (u16, String, &'static str) {
    (
        status,
        serde_json::json!({ "error": reason }).to_string() + "\n",
        JSON,
    )
}

/// Constant-time comparison of the presented bearer token.
fn authorized(state: &AdminState, req: &tiny_http::Request) -> bool {
    let presented = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (presented.as_bytes(), state.token.as_bytes());
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parse `{"rate": "..."}`; `Ok(None)` for "default".
fn parse_rate_body(
    req: &mut tiny_http::Request,
    allow_default: bool,
) -> Result<Option<Rate>, String> {
    let mut body = String::new();
    req.as_reader()
        .take(4096)
        .read_to_string(&mut body)
        .map_err(|e| format!("unreadable body: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("body is not JSON: {e}"))?;
    let rate = v
        .get("rate")
        .and_then(|r| r.as_str())
        .ok_or("body must be {\"rate\": \"1MiB\"}")?;
    if allow_default && rate == "default" {
        return Ok(None);
    }
    rate.parse::<Rate>().map(Some).map_err(|e| e.to_string())
}

fn handle(
    state: &AdminState,
    store: &dyn Storage,
    req: &mut tiny_http::Request,
) -> (u16, String, &'static str) {
    if !authorized(state, req) {
        return error(401, "missing or wrong bearer token");
    }
    let url = req.url().split('?').next().unwrap_or("").to_string();
    let parts: Vec<&str> = url.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    use tiny_http::Method::{Get, Post, Put};
    match (&method, parts.as_slice()) {
        (Get, ["metrics"]) => {
            let text = (state.metrics)();
            (200, text, "text/plain; version=0.0.4")
        }
        (Get, ["users", name]) => match store.user(name) {
            Ok(Some(u)) => {
                let conns = state.rates.as_ref().map(|r| r.user_connections(name));
                let body = serde_json::json!({
                    "name": u.name,
                    "rate": u.rate.map(|r| r.to_string()),
                    "active_connections": conns,
                });
                (200, body.to_string() + "\n", JSON)
            }
            Ok(None) => error(404, "unknown user"),
            Err(e) => error(500, &e.to_string()),
        },
        (Put, ["users", name, "rate"]) => {
            let rate = match parse_rate_body(req, true) {
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
                    (
                        200,
                        serde_json::json!({ "name": name, "rate": shown }).to_string() + "\n",
                        JSON,
                    )
                }
                Err(StoreError::UnknownUser(_)) => error(404, "unknown user"),
                Err(e) => error(500, &e.to_string()),
            }
        }
        (Put, ["global", "rate"]) => {
            let rate = match parse_rate_body(req, false) {
                Ok(Some(r)) => r,
                Ok(None) => return error(400, "the global rate has no default"),
                Err(e) => return error(400, &e),
            };
            let Some(rates) = &state.rates else {
                return error(501, "bandwidth shaping is not available in this build");
            };
            rates.set_global_rate(rate);
            (
                200,
                serde_json::json!({ "global_rate": rate.to_string() }).to_string() + "\n",
                JSON,
            )
        }
        (Post, ["drain"]) => (202, "{\"draining\":true}\n".into(), JSON),
        _ => error(404, "no such admin route"),
    }
}
