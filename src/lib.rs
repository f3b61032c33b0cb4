//! astara-dp: a userspace fast-path data plane for OpenStack Astara router and
//! load-balancer appliances. See `DESIGN.md` of the project for the layout.

pub mod app;
pub mod control;
pub mod dataplane;
pub mod packet;
/// The traffic generator (folder `src/gen/`; `gen` is a reserved word in Rust 2024).
#[path = "gen/mod.rs"]
pub mod pktgen;
pub mod port;
pub mod stage;
pub mod table;
