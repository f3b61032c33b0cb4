//! Raw bindings to the system's DPDK 22.11 (`libdpdk-dev`): bindgen over the
//! installed headers (found by `pkg-config libdpdk`) for the EAL, ethdev,
//! mempool and mbuf calls astara-dp uses, plus `adp_*` wrappers compiled from
//! `shim.c` for DPDK's `static inline` fast-path functions
//! (`rte_eth_rx_burst`, `rte_eth_tx_burst`, `rte_pktmbuf_alloc`/`free`,
//! `rte_errno`). Nothing here is safe to call without reading DPDK's rules;
//! the safe layer is `astara-dp`'s `src/port/dpdk.rs`, the only user.

#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
