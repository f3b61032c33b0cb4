//! What several integration tests share: the example router document and
//! the upstream gateway it needs pinned (it has no allocation).
#![allow(dead_code)]

use astara_dp::control::{AstaraConfig, CompileOptions, StaticNeighbor};

pub const ROUTER_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/router.json");

/// configs/router.json as a JSON value, to edit.
pub fn router_json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ROUTER_JSON).unwrap()).unwrap()
}

pub fn router_config() -> AstaraConfig {
    AstaraConfig::from_json(&std::fs::read(ROUTER_JSON).unwrap()).unwrap()
}

/// The upstream gateway 203.0.113.1 on ge1, with the MAC `mac`.
pub fn upstream(mac: &str) -> StaticNeighbor {
    StaticNeighbor { port: "ge1".into(), ip: "203.0.113.1".parse().unwrap(), mac: mac.parse().unwrap() }
}

/// Compile options with the upstream gateway pinned to 02:00:5e:00:00:01.
pub fn options() -> CompileOptions {
    CompileOptions { neighbors: vec![upstream("02:00:5e:00:00:01")], ..Default::default() }
}
