//! Lookup tables built by the control thread and read by the workers: each
//! has a builder (mutable, allocating) and a frozen form (immutable, fast).

pub mod acl;
pub mod addrmap;
pub mod lpm4;
pub mod lpm6;
pub mod maglev;
pub mod mem;
pub mod natmap;
pub mod neighbor;
pub mod rules;
pub mod session;

pub use acl::{Acl, AclKey, AclRule};
pub use lpm4::{Lpm4, Lpm4Builder, LpmError, NO_ROUTE};
pub use lpm6::{Lpm6, Lpm6Builder};
pub use neighbor::{NeighborSource, NeighborTable};
