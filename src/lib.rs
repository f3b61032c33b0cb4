//! astara-dp: a userspace fast-path data plane for OpenStack Astara router and
//! load-balancer appliances. See `DESIGN.md` of the project for the layout.

pub mod packet;
pub mod table;
pub mod stage;
pub mod control;
pub mod port;
pub mod dataplane;
/// The traffic generator (folder `src/gen/`; `gen` is a reserved word in Rust 2024).
#[path = "gen/mod.rs"]
pub mod pktgen;
pub mod app;
