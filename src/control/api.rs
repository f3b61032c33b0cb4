//! The appliance's REST API, as the Astara orchestrator calls it (ASTARA.md),
//! plus operator endpoints (`/metrics`, `/v1/stats`, `/v1/routes`).
//!
//! Every request is its own task: a slow or stuck client holds only its own
//! connection, and a config apply runs on the blocking pool so liveness
//! probes are answered while a large document compiles.

use super::model::{ip_bits, protocol_number};
use super::state::Control;
use crate::dataplane::query::SessionFilter;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// Largest document accepted (larger: 413).
pub const MAX_BODY: usize = 16 << 20;

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/firewall/rules", get(rules))
        .route("/v1/firewall/labels", post(labels))
        .route("/v1/system/interfaces", get(interfaces))
        .route("/v1/system/interface/{ifname}", get(interface))
        .route("/v1/system/config", get(get_config).put(put_config))
        .route("/v1/status", get(status))
        .route("/v1/status/", get(status))
        .route("/v1/stats", get(stats))
        .route("/v1/routes", get(routes))
        .route("/v1/sessions", get(sessions))
        .route("/v1/loadbalancer/status", get(lb_status))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(control)
}

type Ctl = State<Arc<Control>>;

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn rules(State(c): Ctl) -> Response {
    text(StatusCode::OK, c.rules_text())
}

async fn labels() -> Json<serde_json::Value> {
    Json(json!({"labels": []}))
}

async fn interfaces(State(c): Ctl) -> Json<serde_json::Value> {
    Json(json!({"interfaces": c.interfaces()}))
}

async fn interface(State(c): Ctl, Path(ifname): Path<String>) -> Response {
    match c.interface(&ifname) {
        Some(i) => Json(json!({"interface": i})).into_response(),
        None => text(StatusCode::NOT_FOUND, format!("no interface named {ifname}\n")),
    }
}

async fn get_config(State(c): Ctl) -> Json<serde_json::Value> {
    match c.current() {
        Some(cfg) => Json(json!({"configuration": *cfg})),
        None => Json(json!({"configuration": {}})),
    }
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

async fn put_config(State(c): Ctl, headers: HeaderMap, body: Bytes) -> Response {
    if !is_json(&headers) {
        return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json\n".into());
    }
    let applied = tokio::task::spawn_blocking(move || c.apply_json(&body)).await;
    match applied {
        Ok(Ok(cfg)) => Json(json!({"configuration": *cfg})).into_response(),
        Ok(Err(e)) => {
            text(StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY), e.message + "\n")
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("apply task failed: {e}\n")),
    }
}

async fn status(State(c): Ctl) -> Json<serde_json::Value> {
    Json(c.status())
}

async fn stats(State(c): Ctl) -> Json<serde_json::Value> {
    Json(c.stats())
}

async fn routes(State(c): Ctl) -> Json<serde_json::Value> {
    Json(json!({"routes": c.routes()}))
}

/// `GET /v1/sessions?proto=udp&addr=192.168.1.5&port=53&limit=100`.
#[derive(Debug, Default, serde::Deserialize)]
struct SessionParams {
    proto: Option<String>,
    addr: Option<String>,
    port: Option<u16>,
    limit: Option<usize>,
}

async fn sessions(State(c): Ctl, axum::extract::Query(p): axum::extract::Query<SessionParams>) -> Response {
    let proto = match p.proto.as_deref().map(|s| s.parse::<u8>().ok().or_else(|| protocol_number(s))) {
        Some(None) => return text(StatusCode::BAD_REQUEST, "proto: a protocol name or number\n".into()),
        Some(Some(n)) => Some(n),
        None => None,
    };
    let addr = match p.addr.as_deref().map(|a| a.parse::<std::net::IpAddr>()) {
        Some(Ok(a)) => Some(ip_bits(a)),
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "addr: an IP address\n".into()),
        None => None,
    };
    let filter = SessionFilter { proto, addr, port: p.port };
    let limit = p.limit.unwrap_or(1000).min(100_000);
    match tokio::task::spawn_blocking(move || c.sessions(&filter, limit)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, e + "\n"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("listing failed: {e}\n")),
    }
}

async fn lb_status(State(c): Ctl) -> Json<serde_json::Value> {
    Json(c.lb_status())
}

async fn metrics(State(c): Ctl) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], c.metrics()).into_response()
}
