//! The control side: the Astara configuration model and its compiler into
//! the snapshot the workers read.

pub mod api;
pub mod compile;
pub mod health;
pub mod host;
pub mod lb;
pub mod metadata;
pub mod model;
pub mod policy;
pub mod runtime;
pub mod state;

pub use compile::{
    CompileOptions, Compiled, PortSpec, StaticNeighbor, compile, describe_routes, empty_snapshot, ports_from_config,
};
pub use model::{AstaraConfig, ConfigError};
