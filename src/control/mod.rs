//! The control side: the Astara configuration model and its compiler into
//! the snapshot the workers read.

pub mod compile;
pub mod model;

pub use compile::{CompileOptions, Compiled, PortSpec, StaticNeighbor, compile, ports_from_config};
pub use model::{AstaraConfig, ConfigError};
