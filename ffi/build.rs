//! Finds the system DPDK with `pkg-config libdpdk`, compiles the C shim with
//! DPDK's own flags, and generates the bindings with bindgen.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The DPDK release whose headers and ABI this crate is written and tested
/// against (Debian 12's `libdpdk-dev`).
const SUPPORTED: &str = "22.11";

fn pkg_config(args: &[&str]) -> String {
    let out = Command::new("pkg-config").args(args).arg("libdpdk").output().unwrap_or_else(|e| {
        panic!(
            "astara-dp-ffi: cannot run pkg-config ({e}); install it with `apt-get install -y pkg-config libdpdk-dev`"
        )
    });
    if !out.status.success() {
        panic!(
            "astara-dp-ffi: `pkg-config {} libdpdk` failed: {}\ninstall DPDK {SUPPORTED} with `apt-get install -y libdpdk-dev`",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let version = pkg_config(&["--modversion"]);
    if !(version == SUPPORTED || version.starts_with(&format!("{SUPPORTED}."))) {
        panic!("astara-dp-ffi: found DPDK {version}; this crate supports DPDK {SUPPORTED} (LTS)");
    }

    // The raw flags, not the pkg-config crate's parse: DPDK's `-include
    // rte_config.h` and `-march=...` must reach the compiler as they are
    // (rte_memcpy.h does not build without the -march it was built with).
    let cflags: Vec<String> = pkg_config(&["--cflags"]).split_whitespace().map(String::from).collect();
    let mut shim = cc::Build::new();
    shim.file("shim.c").opt_level(3).warnings(true);
    for f in &cflags {
        shim.flag(f);
    }
    shim.compile("adp_shim");

    for tok in pkg_config(&["--libs"]).split_whitespace() {
        if let Some(lib) = tok.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        } else if let Some(dir) = tok.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        }
    }
    // The shared-library PMDs (net_pcap, net_af_packet, ...) are loaded by
    // EAL from its driver directory at init: nothing to link for them.

    let mut clang_args: Vec<String> = Vec::new();
    let mut it = cflags.iter();
    while let Some(f) = it.next() {
        if f == "-include" {
            if let Some(h) = it.next() {
                clang_args.push("-include".into());
                clang_args.push(h.clone());
            }
        } else if f.starts_with("-I") || f.starts_with("-D") || f.starts_with("-march") {
            clang_args.push(f.clone());
        }
    }
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("adp_.*")
        .allowlist_function("rte_eal_(init|cleanup|process_type)")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_version")
        .allowlist_function("rte_socket_id|rte_lcore_count")
        .allowlist_function("rte_thread_(register|unregister)")
        .allowlist_function("rte_eth_(dev_count_avail|dev_get_port_by_name|dev_get_name_by_port|find_next_owned_by)")
        .allowlist_function("rte_eth_(dev_info_get|dev_configure|rx_queue_setup|tx_queue_setup)")
        .allowlist_function("rte_eth_(dev_start|dev_stop|dev_close|dev_socket_id|promiscuous_enable)")
        .allowlist_function("rte_eth_(macaddr_get|link_get_nowait|stats_get|stats_reset|dev_set_mtu|dev_get_mtu)")
        .allowlist_function("rte_eth_dev_adjust_nb_rx_tx_desc")
        .allowlist_function("rte_pktmbuf_pool_create|rte_pktmbuf_free_bulk|rte_mempool_free")
        .allowlist_type("rte_mbuf|rte_eth_conf|rte_eth_dev_info|rte_eth_stats|rte_eth_link|rte_ether_addr")
        .allowlist_type("rte_eth_rxconf|rte_eth_txconf|rte_proc_type_t")
        .allowlist_var("RTE_ETH_.*|RTE_MBUF_DEFAULT_BUF_SIZE|RTE_PKTMBUF_HEADROOM|RTE_MAX_ETHPORTS")
        .allowlist_var("RTE_VERSION.*|RTE_MAX_LCORE|LCORE_ID_ANY|SOCKET_ID_ANY")
        .allowlist_var("RTE_MBUF_F_RX_IP_CKSUM_.*")
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .expect("astara-dp-ffi: bindgen failed on the DPDK headers (bindgen needs libclang: apt-get install -y libclang1-14 libclang-common-14-dev)");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(&out).expect("astara-dp-ffi: cannot write the bindings");
}
