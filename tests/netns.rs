//! Real clients through the appliance, in network namespaces this test
//! builds and removes: an inside host, the router running `astara-dp run`
//! on AF_PACKET ports over veth pairs, and an outside host.
//!
//! ```text
//!  inside (adpNi)                    router (adpNr)                   outside (adpNo)
//!  i0 192.168.1.20/24  ── veth ──  ge2 | astara-dp | ge1  ── veth ──  o0 203.0.113.1/24
//!     192.168.1.5/24 (floating 203.0.113.50)  |   external 203.0.113.10
//!                                            ge0 fdca:3ba5:a17a:acda::2 (kernel: the API)
//!                                             |
//!                                   orchestrator (adpNm) m0 fdca:3ba5:a17a:acda::1
//! ```
//!
//! Tests that need a second internal network add a host on ge3
//! (`Topo::add_internal`).
//!
//! Needs root, iproute2, iputils-ping, curl, python3, iperf3 and ethtool
//! (CI installs them); run with `--include-ignored`.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The namespaces of one test; removed on drop, also after a failure.
struct Topo {
    ns_in: String,
    ns_rt: String,
    ns_out: String,
    /// The orchestrator's side of the management network.
    ns_mgt: String,
    dir: tempfile::TempDir,
    children: Vec<Child>,
    router: Option<Child>,
    /// The document the router starts with.
    doc: serde_json::Value,
    /// Hosts on further internal networks (`add_internal`).
    extra: Vec<String>,
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Topo {
    fn new() -> Topo {
        let tag = format!("adp{}x{}", std::process::id() % 100000, SEQ.fetch_add(1, Ordering::Relaxed));
        let t = Topo {
            ns_in: format!("{tag}i"),
            ns_rt: format!("{tag}r"),
            ns_out: format!("{tag}o"),
            ns_mgt: format!("{tag}m"),
            dir: tempfile::tempdir().unwrap(),
            children: Vec::new(),
            router: None,
            doc: document(),
            extra: Vec::new(),
        };
        for ns in [&t.ns_in, &t.ns_rt, &t.ns_out, &t.ns_mgt] {
            must(&["ip", "netns", "add", ns]);
            // No DNS in here: `ip netns exec` mounts this over /etc/resolv.conf,
            // so name lookups (http.server's getfqdn) fail at once instead
            // of waiting for a resolver the namespace cannot reach.
            let etc = format!("/etc/netns/{ns}");
            std::fs::create_dir_all(&etc).unwrap();
            std::fs::write(format!("{etc}/resolv.conf"), "# no resolver in this test namespace\n").unwrap();
            t.exec(ns, &["ip", "link", "set", "lo", "up"]);
        }
        must(&["ip", "link", "add", "i0", "netns", &t.ns_in, "type", "veth", "peer", "name", "ge2", "netns", &t.ns_rt]);
        must(&[
            "ip", "link", "add", "o0", "netns", &t.ns_out, "type", "veth", "peer", "name", "ge1", "netns", &t.ns_rt,
        ]);
        // The router's ports belong to astara-dp: no kernel addresses, no IPv6.
        for ifc in ["ge1", "ge2"] {
            t.exec(&t.ns_rt, &["sysctl", "-qw", &format!("net.ipv6.conf.{ifc}.disable_ipv6=1")]);
            t.exec(&t.ns_rt, &["ip", "link", "set", ifc, "up"]);
        }
        // The hosts send real-sized segments (no TSO/GSO super-frames over
        // the veth) but leave their checksums to "hardware", as VMs do.
        t.exec(&t.ns_in, &["ethtool", "-K", "i0", "tso", "off", "gso", "off"]);
        t.exec(&t.ns_out, &["ethtool", "-K", "o0", "tso", "off", "gso", "off"]);
        // The MAC of the instance's port in the document's allocations
        // (the router takes allocations as configured neighbours).
        t.exec(&t.ns_in, &["ip", "link", "set", "i0", "address", "fa:16:3e:00:00:20"]);
        t.exec(&t.ns_in, &["ip", "addr", "add", "192.168.1.20/24", "dev", "i0"]);
        t.exec(&t.ns_in, &["ip", "addr", "add", "192.168.1.5/24", "dev", "i0"]);
        t.exec(&t.ns_in, &["ip", "link", "set", "i0", "up"]);
        t.exec(&t.ns_in, &["ip", "route", "add", "default", "via", "192.168.1.1"]);
        t.exec(&t.ns_out, &["ip", "addr", "add", "203.0.113.1/24", "dev", "o0"]);
        t.exec(&t.ns_out, &["ip", "addr", "add", "2001:db8:ff::1/64", "dev", "o0", "nodad"]);
        t.exec(&t.ns_out, &["ip", "link", "set", "o0", "up"]);
        // IPv6 is routed, not translated: the outside knows the way back.
        t.exec(&t.ns_out, &["ip", "-6", "route", "add", "fdd6:a1fa:cfa8:1::/64", "via", "2001:db8:ff::10"]);
        // The management network stays the kernel's, as in Astara: the
        // appliance's API is a kernel socket on ge0's address.
        must(&[
            "ip", "link", "add", "m0", "netns", &t.ns_mgt, "type", "veth", "peer", "name", "ge0", "netns", &t.ns_rt,
        ]);
        t.exec(&t.ns_rt, &["ip", "addr", "add", "fdca:3ba5:a17a:acda::2/64", "dev", "ge0", "nodad"]);
        t.exec(&t.ns_rt, &["ip", "link", "set", "ge0", "up"]);
        t.exec(&t.ns_mgt, &["ip", "addr", "add", "fdca:3ba5:a17a:acda::1/64", "dev", "m0", "nodad"]);
        t.exec(&t.ns_mgt, &["ip", "link", "set", "m0", "up"]);
        t
    }

    /// A host on a further internal network: namespace `<tag>h<n>`, its
    /// veth `h0` (MAC `mac`, address `host/24`, default route via `.1`) to
    /// the router's port `port`, and the network (`.1/24` on `port`, the
    /// host as an allocation) in the document. Returns the namespace.
    fn add_internal(&mut self, port: &str, host: &str, mac: &str) -> String {
        let ns = format!("{}h{}", &self.ns_in[..self.ns_in.len() - 1], self.extra.len());
        must(&["ip", "netns", "add", &ns]);
        self.extra.push(ns.clone());
        let etc = format!("/etc/netns/{ns}");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(format!("{etc}/resolv.conf"), "# no resolver in this test namespace\n").unwrap();
        must(&["ip", "link", "add", "h0", "netns", &ns, "type", "veth", "peer", "name", port, "netns", &self.ns_rt]);
        self.exec(&self.ns_rt, &["sysctl", "-qw", &format!("net.ipv6.conf.{port}.disable_ipv6=1")]);
        self.exec(&self.ns_rt, &["ip", "link", "set", port, "up"]);
        let net = host.rsplit_once('.').unwrap().0;
        let gw = format!("{net}.1");
        self.exec(&ns, &["ip", "link", "set", "lo", "up"]);
        self.exec(&ns, &["ethtool", "-K", "h0", "tso", "off", "gso", "off"]);
        self.exec(&ns, &["ip", "link", "set", "h0", "address", mac]);
        self.exec(&ns, &["ip", "addr", "add", &format!("{host}/24"), "dev", "h0"]);
        self.exec(&ns, &["ip", "link", "set", "h0", "up"]);
        self.exec(&ns, &["ip", "route", "add", "default", "via", &gw]);
        let n = self.extra.len();
        self.doc["networks"].as_array_mut().unwrap().push(serde_json::json!({
            "network_id": format!("5e1f0c3a-7d2b-4c8e-9a6f-00000000000{n}"), "name": format!("app{n}"),
            "network_type": "internal", "v4_conf_service": "static", "v6_conf_service": "static",
            "interface": {"ifname": port, "addresses": [format!("{gw}/24")]},
            "subnets": [{"id": format!("6f2a1d4b-8e3c-4d9f-ab70-00000000000{n}"), "cidr": format!("{net}.0/24"),
                         "gateway_ip": gw, "dhcp_enabled": true, "dns_nameservers": [], "host_routes": []}],
            "allocations": [{"mac_address": mac, "ip_addresses": {host: true},
                             "hostname": format!("vm-app{n}"), "device_id": format!("7a3b2e5c-9f4d-4e0a-bc81-00000000000{n}")}]
        }));
        ns
    }

    /// The API's base URL, as the orchestrator reaches it.
    const API: &'static str = "http://[fdca:3ba5:a17a:acda::2]:5000";

    /// An orchestrator's call: (status, body).
    fn api(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, String) {
        let url = format!("{}{path}", Self::API);
        let mut args = vec!["curl", "-g", "-s", "-m", "90", "-X", method, "-w", "\n%{http_code}"];
        let data;
        if let Some(b) = body {
            data = b.to_string();
            args.extend(["-H", "Content-Type: application/json", "--data-binary", &data]);
        }
        args.push(&url);
        let out = self.exec(&self.ns_mgt, &args);
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        (code.parse().unwrap_or(0), body.to_string())
    }

    fn cmd(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    fn exec(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        must(&full)
    }

    fn try_exec(&self, ns: &str, args: &[&str]) -> Output {
        self.cmd(ns, args).output().unwrap()
    }

    fn spawn(&mut self, ns: &str, args: &[&str]) -> usize {
        let c = self.cmd(ns, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        self.children.push(c);
        self.children.len() - 1
    }

    /// Starts the router with the test's runtime file and document.
    fn start_router(&mut self) {
        self.start_router_with(&af_packet_ports(&["ge1", "ge2"]));
    }

    /// Starts the router with `ports` (TOML) for ge1 and ge2 beside the
    /// kernel-kept management port ge0.
    fn start_router_with(&mut self, ports: &str) {
        let rt = self.dir.path().join("runtime.toml");
        std::fs::write(
            &rt,
            format!(
                r#"
state_dir = "{}"
[api]
listen = "management"
[conntrack]
sessions_per_worker = 65536
[[ports]]
name = "ge0"
backend = "kernel"
interface = "ge0"
{ports}
"#,
                self.dir.path().display()
            ),
        )
        .unwrap();
        let doc = self.dir.path().join("doc.json");
        std::fs::write(&doc, serde_json::to_vec_pretty(&self.doc).unwrap()).unwrap();
        let child = self
            .cmd(&self.ns_rt, &[env!("CARGO_BIN_EXE_astara-dp"), "run", "--runtime"])
            .arg(&rt)
            .arg("--config")
            .arg(&doc)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("router.log")).unwrap())
            .spawn()
            .unwrap();
        self.router = Some(child);
        // Up when the API answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let url = format!("{}/v1/firewall/rules", Self::API);
            let o = self.try_exec(&self.ns_mgt, &["curl", "-g", "-s", "-o", "/dev/null", "-m", "1", &url]);
            if o.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the router did not come up: {}", self.router_log());
    }

    fn router_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("router.log")).unwrap_or_default()
    }

    /// A page fetched with curl from `ns`; on failure the router's
    /// counters are in the message.
    fn http(&self, ns: &str, url: &str, from: Option<&str>) -> String {
        let mut args = vec!["curl", "-s", "-m", "5"];
        if let Some(a) = from {
            args.extend(["--interface", a]);
        }
        args.push(url);
        let o = self.try_exec(ns, &args);
        if !o.status.success() {
            let m = self.metrics();
            let interesting: Vec<&str> = m.lines().filter(|l| !l.starts_with('#') && !l.ends_with(" 0")).collect();
            panic!("curl {url} from {ns} ({from:?}) failed: {o:?}\nrouter counters:\n{}", interesting.join("\n"));
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn metrics(&self) -> String {
        self.api("GET", "/metrics", None).1
    }

    /// Output of a background child so far (kills it).
    fn finish(&mut self, i: usize) -> String {
        let c = &mut self.children[i];
        let _ = c.kill();
        let _ = c.wait();
        let mut s = String::new();
        if let Some(mut e) = c.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        if let Some(mut o) = c.stdout.take() {
            let _ = o.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for c in self.children.iter_mut().chain(self.router.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("router log:\n{}", self.router_log());
        }
        for ns in [&self.ns_in, &self.ns_rt, &self.ns_out, &self.ns_mgt].into_iter().chain(&self.extra) {
            let _ = run(&["ip", "netns", "del", ns]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
    }
}

fn document() -> serde_json::Value {
    serde_json::json!({
        "tenant_id": "d22b149cee9b4eac8349c517eda00b89",
        "hostname": "ak-netns",
        "default_v4_gateway": "203.0.113.1",
        "floating_ips": [{"floating_ip": "203.0.113.50", "fixed_ip": "192.168.1.5"}],
        "orchestrator": {"address": "fdca:3ba5:a17a:acda::1", "metadata_port": 9697},
        "networks": [
            {"network_id": "43dc2fad-f6f9-4668-9695-fed50f7768aa", "name": "mgt", "network_type": "management",
             "v4_conf_service": "static", "v6_conf_service": "static",
             "interface": {"ifname": "ge0", "addresses": ["fdca:3ba5:a17a:acda::2/64"]},
             "subnets": [], "allocations": []},
            {"network_id": "b7fc9b39-401c-47cc-a07d-9f8cde75ccbf", "name": "public", "network_type": "external",
             "v4_conf_service": "static", "v6_conf_service": "static",
             "interface": {"ifname": "ge1", "addresses": ["203.0.113.10/24", "2001:db8:ff::10/64"], "mtu": 1400},
             "subnets": [{"id": "8c58b558-be54-45de-9873-169fe845bb80", "cidr": "203.0.113.0/24",
                          "gateway_ip": "203.0.113.1", "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []},
                         {"id": "89fe7a9d-be92-469c-9a1e-503a39462ed1", "cidr": "2001:db8:ff::/64",
                          "gateway_ip": "2001:db8:ff::1", "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}],
             "allocations": []},
            {"network_id": "1c3d6b6e-2b4a-4d5e-9f10-6a7b8c9d0e1f", "name": "web", "network_type": "internal",
             "v4_conf_service": "static", "v6_conf_service": "slaac",
             "interface": {"ifname": "ge2", "addresses": ["192.168.1.1/24", "fdd6:a1fa:cfa8:1::1/64"]},
             "subnets": [{"id": "2f1e0d9c-8b7a-4654-a3b2-c1d0e9f8a7b6", "cidr": "192.168.1.0/24",
                          "gateway_ip": "192.168.1.1", "dhcp_enabled": true, "dns_nameservers": [], "host_routes": []},
                         {"id": "3a2b1c0d-9e8f-4a6b-8c5d-4e3f2a1b0c9d", "cidr": "fdd6:a1fa:cfa8:1::/64",
                          "gateway_ip": "fdd6:a1fa:cfa8:1::1", "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}],
             "allocations": [{"mac_address": "fa:16:3e:00:00:20", "ip_addresses": {"192.168.1.20": true},
                              "hostname": "vm-20", "device_id": "0f2b44e5-9c0a-4f7e-8d55-1b2c3d4e5f20"}]}
        ]
    })
}

/// Waits until `url` answers from `ns` (servers take a moment to bind).
fn wait_http(t: &Topo, ns: &str, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if t.try_exec(ns, &["curl", "-s", "-o", "/dev/null", "-m", "1", url]).status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `[[ports]]` entries for af_packet ports on the router's interfaces of
/// the same names.
fn af_packet_ports(names: &[&str]) -> String {
    names.iter().map(|n| format!("[[ports]]\nname = \"{n}\"\nbackend = \"af_packet\"\ninterface = \"{n}\"\n")).collect()
}

/// A TCP stream of `secs` seconds from namespace `client` (from address
/// `from`, or the kernel's choice) to an iperf3 server started on
/// `server` (namespace, address); the bits per second received.
fn iperf3(t: &mut Topo, server: (&str, &str), client: &str, from: Option<&str>, secs: u32) -> f64 {
    let srv = t.spawn(server.0, &["timeout", "40", "iperf3", "-s", "-B", server.1, "-1"]);
    std::thread::sleep(Duration::from_millis(500));
    let secs = secs.to_string();
    let mut args = vec!["timeout", "30", "iperf3", "-c", server.1, "-t", &secs, "-J", "--connect-timeout", "3000"];
    if let Some(a) = from {
        args.extend(["-B", a]);
    }
    let o = t.try_exec(client, &args);
    let _ = t.finish(srv);
    assert!(o.status.success(), "iperf3: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0)
}

/// Pings `dst` from `ns` three times; all must be answered.
fn ping_ok(t: &Topo, ns: &str, dst: &str) {
    let o = t.try_exec(ns, &["ping", "-c", "3", "-i", "0.2", "-W", "2", dst]);
    assert!(o.status.success(), "ping {dst}: {}", String::from_utf8_lossy(&o.stdout));
}

/// The client addresses of the GET requests in an http.server log.
fn http_clients(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("GET /")).filter_map(|l| l.split(' ').next()).collect()
}

/// Starts Python's http.server on `bind:port` in `ns`, ready to answer.
fn serve_http(t: &mut Topo, ns: &str, bind: &str, port: u16) -> usize {
    let srv = t.spawn(ns, &["python3", "-m", "http.server", &port.to_string(), "--bind", bind]);
    wait_http(t, ns, &format!("http://{bind}:{port}/"));
    srv
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.contains(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
#[ignore = "needs root, iproute2, iputils-ping, curl, python3, ethtool: run with --include-ignored"]
fn ping_and_http_through_masquerade_floating_ip_and_hairpin() {
    let mut t = Topo::new();
    t.start_router();
    let (ns_in, ns_out) = (t.ns_in.clone(), t.ns_out.clone());

    // The router's own address answers ping (ARP, then ICMP echo).
    ping_ok(&t, &ns_in, "192.168.1.1");
    // Inside to outside through the masquerade: the router resolves the
    // gateway with ARP, holding the first packet meanwhile.
    ping_ok(&t, &ns_in, "203.0.113.1");

    // HTTP: the outside server sees only the external address.
    let srv = serve_http(&mut t, &ns_out, "203.0.113.1", 8080);
    let page = t.http(&ns_in, "http://203.0.113.1:8080/", Some("192.168.1.20"));
    assert!(page.contains("Directory listing"), "{page}");
    // From the floating IP's fixed address: SNATed to the floating IP.
    t.http(&ns_in, "http://203.0.113.1:8080/", Some("192.168.1.5"));
    let log = t.finish(srv);
    let clients = http_clients(&log);
    assert!(clients.contains(&"203.0.113.10"), "masquerade: {log}");
    assert!(clients.contains(&"203.0.113.50"), "floating ip outbound: {log}");
    // (203.0.113.1 is the readiness probe, from the server's own host.)
    assert!(clients.iter().all(|c| ["203.0.113.1", "203.0.113.10", "203.0.113.50"].contains(c)), "{log}");
    assert!(!clients.iter().any(|c| c.starts_with("192.168.")), "{log}");

    // Outside to the floating IP reaches the inside server, unmasqueraded;
    // an inside host reaching it by the floating IP (hairpin) does too.
    let srv = serve_http(&mut t, &ns_in, "192.168.1.5", 8081);
    let page = t.http(&ns_out, "http://203.0.113.50:8081/", None);
    assert!(page.contains("Directory listing"), "{page}");
    let page = t.http(&ns_in, "http://203.0.113.50:8081/", Some("192.168.1.20"));
    assert!(page.contains("Directory listing"), "hairpin: {page}");
    let log = t.finish(srv);
    let clients = http_clients(&log);
    assert!(clients.contains(&"203.0.113.1"), "floating ip inbound keeps the client address: {log}");
    assert!(clients.contains(&"203.0.113.10"), "hairpin is masqueraded: {log}");

    // TTL 1: the router answers with time exceeded (what traceroute reads).
    let o = t.try_exec(&ns_in, &["ping", "-c", "1", "-t", "1", "-W", "2", "203.0.113.1"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("192.168.1.1") && text.to_lowercase().contains("time to live exceeded"), "{text}");

    // DF clear and larger than the external MTU (1400): the router
    // fragments (RFC 791); the outside host reassembles, and its reply
    // (fragmented by the outside, whose link has the same MTU) comes back
    // through the masquerade fragment by fragment.
    t.exec(&ns_out, &["ip", "link", "set", "o0", "mtu", "1400"]);
    let o = t.try_exec(&ns_in, &["ping", "-c", "2", "-i", "0.2", "-M", "dont", "-s", "1450", "-W", "2", "203.0.113.1"]);
    if !o.status.success() {
        let m = t.metrics();
        let nz: Vec<&str> = m.lines().filter(|l| !l.starts_with('#') && !l.ends_with(" 0")).collect();
        panic!("fragmented ping: {}\n{}", String::from_utf8_lossy(&o.stdout), nz.join("\n"));
    }
    let m = t.metrics();
    assert!(counter(&m, "packets fragmented") >= 2 && counter(&m, "fragments sent") >= 4, "{m}");

    // The external network's MTU is 1400: a larger packet with DF set gets
    // "fragmentation needed" with that MTU (path MTU discovery).
    let o = t.try_exec(&ns_in, &["ping", "-c", "1", "-M", "do", "-s", "1450", "-W", "2", "203.0.113.1"]);
    let text = String::from_utf8_lossy(&o.stdout).to_lowercase() + &String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(text.contains("frag needed") && text.contains("1400"), "{text}");
    let o = t.try_exec(&ns_in, &["ping", "-c", "2", "-i", "0.2", "-M", "do", "-s", "1372", "-W", "2", "203.0.113.1"]);
    assert!(o.status.success(), "a packet that fits: {}", String::from_utf8_lossy(&o.stdout));

    // No route: the outside host is on-link only, so the router's
    // connected routes are all it has beyond the default; an address the
    // default route sends out still works, so check the counters instead.
    let m = t.metrics();
    assert!(counter(&m, "arp replies sent") >= 1, "{m}");
    assert!(counter(&m, "neighbours learned") >= 2, "{m}");
    assert!(counter(&m, "icmp echo replies sent") >= 3, "{m}");
    // Once the pinging hosts are known neighbours, the workers answer their
    // echo requests themselves (the kernel's ping checked those replies).
    assert!(counter(&m, "echo requests answered by the worker") >= 1, "{m}");
    assert!(counter(&m, "icmp errors sent") >= 1, "{m}");
}

/// Between two internal networks, with no forwarding policy, packets take
/// the fast path: ping (one hop: TTL 63 on arrival), HTTP both ways with
/// the client's own address, and a TCP stream.
#[test]
#[ignore = "needs root, iproute2, iputils-ping, curl, python3, iperf3, ethtool: run with --include-ignored"]
fn traffic_between_internal_networks_takes_the_fast_path() {
    let mut t = Topo::new();
    let ns2 = t.add_internal("ge3", "192.168.2.30", "fa:16:3e:00:02:30");
    t.start_router_with(&af_packet_ports(&["ge1", "ge2", "ge3"]));
    let ns_in = t.ns_in.clone();
    let o = t.try_exec(&ns_in, &["ping", "-c", "5", "-i", "0.2", "-W", "2", "-I", "192.168.1.20", "192.168.2.30"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("ttl=63"), "{text}");

    let srv = serve_http(&mut t, &ns2, "192.168.2.30", 8082);
    let page = t.http(&ns_in, "http://192.168.2.30:8082/", Some("192.168.1.20"));
    assert!(page.contains("Directory listing"), "{page}");
    let log = t.finish(srv);
    assert!(http_clients(&log).contains(&"192.168.1.20"), "not translated: {log}");
    let srv = serve_http(&mut t, &ns_in, "192.168.1.20", 8083);
    let page = t.http(&ns2, "http://192.168.1.20:8083/", None);
    assert!(page.contains("Directory listing"), "{page}");
    let log = t.finish(srv);
    assert!(http_clients(&log).contains(&"192.168.2.30"), "not translated: {log}");

    let bps = iperf3(&mut t, (&ns2, "192.168.2.30"), &ns_in, Some("192.168.1.20"), 3);
    eprintln!("iperf3 between internal networks (af_packet, fast path): {:.1} Mbit/s", bps / 1e6);
    assert!(bps > 1e6, "{bps}");

    let m = t.metrics();
    let fast = counter(&m, "forwarded in one pass");
    assert!(fast >= 1_000, "the stream went through the fast path: {fast}\n{m}");
}

#[test]
#[ignore = "needs root, iproute2, iperf3, ethtool: run with --include-ignored"]
fn iperf3_tcp_through_nat() {
    let mut t = Topo::new();
    t.start_router();
    let (ns_in, ns_out) = (t.ns_in.clone(), t.ns_out.clone());
    let bps = iperf3(&mut t, (&ns_out, "203.0.113.1"), &ns_in, None, 5);
    eprintln!("iperf3 through astara-dp (af_packet, NAT): {:.1} Mbit/s", bps / 1e6);
    assert!(bps > 1e6, "{bps}");
    // The external MTU is 1400: TCP got there by path MTU discovery, from
    // "fragmentation needed" errors that quote the segment as the client
    // sent it (before the masquerade), or it would not have matched them.
    let cache = t.exec(&ns_in, &["ip", "route", "get", "203.0.113.1"]);
    assert!(cache.contains("mtu 1400"), "{cache}");
}

/// The MAC of `ifc` in namespace `ns`, as the kernel reports it.
fn mac_of(t: &Topo, ns: &str, ifc: &str) -> String {
    let j: serde_json::Value = serde_json::from_str(&t.exec(ns, &["ip", "-j", "link", "show", ifc])).unwrap();
    j[0]["address"].as_str().unwrap().to_string()
}

#[test]
#[ignore = "needs root, iproute2, iputils-ping, curl: run with --include-ignored"]
fn orchestrator_over_the_management_network_moves_a_floating_ip_while_ping_runs() {
    let mut t = Topo::new();
    t.start_router();
    let (ns_in, ns_out, ns_rt) = (t.ns_in.clone(), t.ns_out.clone(), t.ns_rt.clone());

    // Liveness, as is_alive() asks it.
    assert_eq!(t.api("GET", "/v1/firewall/rules", None).0, 200);
    // Interfaces: the MACs are the router's veths'.
    let (code, body) = t.api("GET", "/v1/system/interfaces", None);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ifs = v["interfaces"].as_array().unwrap();
    for name in ["ge0", "ge1", "ge2"] {
        let i = ifs.iter().find(|i| i["ifname"] == name).unwrap_or_else(|| panic!("{name} missing: {body}"));
        assert_eq!(i["lladdr"], mac_of(&t, &ns_rt, name).as_str(), "{name}");
        assert_eq!(i["state"], "up", "{name}");
    }
    let ge1 = ifs.iter().find(|i| i["ifname"] == "ge1").unwrap();
    assert_eq!(ge1["addresses"][0], "203.0.113.10/24");

    // The outside host pings the floating IP; the orchestrator moves it.
    let o = t.try_exec(&ns_out, &["ping", "-c", "3", "-i", "0.2", "-W", "2", "203.0.113.50"]);
    assert!(o.status.success(), "ping 203.0.113.50: {}", String::from_utf8_lossy(&o.stdout));
    let pinger = t.spawn(&ns_out, &["ping", "-i", "0.1", "-W", "1", "203.0.113.50"]);
    std::thread::sleep(Duration::from_millis(500));
    let mut doc = document();
    doc["floating_ips"][0]["floating_ip"] = "203.0.113.60".into();
    let (code, body) = t.api("PUT", "/v1/system/config", Some(&doc));
    assert_eq!(code, 200, "{body}");
    let applied: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(applied["configuration"]["floating_ips"][0]["floating_ip"], "203.0.113.60");
    std::thread::sleep(Duration::from_millis(500));
    let log = t.finish(pinger);
    assert!(log.contains("bytes from 203.0.113.50"), "answered before the move: {log}");
    // The new floating IP answers (announced by gratuitous ARP); the old one
    // does not any more.
    let o = t.try_exec(&ns_out, &["ping", "-c", "3", "-i", "0.2", "-W", "2", "203.0.113.60"]);
    assert!(o.status.success(), "ping 203.0.113.60: {}", String::from_utf8_lossy(&o.stdout));
    let o = t.try_exec(&ns_out, &["ping", "-c", "2", "-i", "0.2", "-W", "1", "203.0.113.50"]);
    assert!(!o.status.success(), "the old floating ip still answers: {}", String::from_utf8_lossy(&o.stdout));
    // And the inside host's own pings still leave through the masquerade.
    let o = t.try_exec(&ns_in, &["ping", "-c", "2", "-i", "0.2", "-W", "2", "203.0.113.1"]);
    assert!(o.status.success());
}

#[test]
#[ignore = "needs root, iproute2, iputils-ping, curl: run with --include-ignored"]
fn ipv6_slaac_from_router_advertisements_neighbour_discovery_and_hop_limit() {
    let mut t = Topo::new();
    t.start_router();
    let ns_in = t.ns_in.clone();
    // The inside host configures itself from the router's advertisement
    // (prefix fdd6:a1fa:cfa8:1::/64, default route via the router).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut addr = String::new();
    while Instant::now() < deadline {
        let out = t.exec(&ns_in, &["ip", "-6", "-o", "addr", "show", "dev", "i0", "scope", "global"]);
        if let Some(a) = out.split_whitespace().find(|w| w.starts_with("fdd6:a1fa:cfa8:1:") && !w.contains("tentative"))
        {
            let routes = t.exec(&ns_in, &["ip", "-6", "route", "show", "default"]);
            if routes.contains("via fe80::") && !out.contains("tentative") {
                addr = a.split('/').next().unwrap().to_string();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!addr.is_empty(), "no SLAAC address from the router's advertisement; metrics:\n{}", t.metrics());
    // The router's own address, then the outside host (neighbour discovery
    // on both sides of the router).
    let o = t.try_exec(&ns_in, &["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fdd6:a1fa:cfa8:1::1"]);
    assert!(o.status.success(), "ping6 router: {}", String::from_utf8_lossy(&o.stdout));
    let o = t.try_exec(&ns_in, &["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "2001:db8:ff::1"]);
    assert!(o.status.success(), "ping6 outside: {}\n{}", String::from_utf8_lossy(&o.stdout), t.metrics());
    // Hop limit 1: time exceeded from the router.
    let o = t.try_exec(&ns_in, &["ping", "-6", "-c", "1", "-t", "1", "-W", "2", "2001:db8:ff::1"]);
    let text = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(text.contains("time exceeded"), "{text}");
    let m = t.metrics();
    assert!(counter(&m, "router advertisements sent") >= 1, "{m}");
    assert!(counter(&m, "neighbour solicitations sent") >= 1, "{m}");
    assert!(counter(&m, "neighbour advertisements sent") >= 1, "{m}");
}

/// A fake orchestrator metadata service: answers every GET with the
/// request's path and headers.
const FAKE_METADATA: &str = r#"
import http.server, socket
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("path=%s\n" % self.path + "".join("%s: %s\n" % kv for kv in self.headers.items())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(http.server.HTTPServer):
    address_family = socket.AF_INET6
S(("fdca:3ba5:a17a:acda::1", 9697), H).serve_forever()
"#;

#[test]
#[ignore = "needs root, iproute2, curl, python3: run with --include-ignored"]
fn metadata_requests_reach_the_orchestrator_with_the_instance_headers() {
    let mut t = Topo::new();
    t.start_router();
    let (ns_in, ns_mgt) = (t.ns_in.clone(), t.ns_mgt.clone());
    let orch = t.spawn(&ns_mgt, &["python3", "-c", FAKE_METADATA]);
    wait_http(&t, &ns_mgt, "http://[fdca:3ba5:a17a:acda::1]:9697/");
    let body = t.http(&ns_in, "http://169.254.169.254/latest/meta-data/", Some("192.168.1.20"));
    for want in [
        "path=/latest/meta-data/",
        "X-Forwarded-For: 192.168.1.20",
        "X-Instance-ID: 0f2b44e5-9c0a-4f7e-8d55-1b2c3d4e5f20",
        "X-Quantum-Network-ID: 1c3d6b6e-2b4a-4d5e-9f10-6a7b8c9d0e1f",
        "X-Tenant-ID: d22b149cee9b4eac8349c517eda00b89",
    ] {
        assert!(body.contains(want), "{want} missing from what the orchestrator saw:\n{body}");
    }
    // An instance cannot claim to be another one.
    let o = t.exec(
        &ns_in,
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-H",
            "X-Instance-ID: someone-else",
            "http://169.254.169.254/openstack/latest/meta_data.json",
        ],
    );
    assert!(!o.contains("someone-else") && o.contains("X-Instance-ID: 0f2b44e5"), "{o}");
    // Several at once.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let mut c =
                t.cmd(&ns_in, &["curl", "-s", "-m", "5", &format!("http://169.254.169.254/latest/meta-data/{i}")]);
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let o = h.join().unwrap();
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("path=/latest/meta-data/{i}")), "{o:?}");
    }
    // The orchestrator gone: a quick 502, not a hang.
    let _ = t.finish(orch);
    let started = Instant::now();
    let code =
        t.exec(&ns_in, &["curl", "-s", "-o", "/dev/null", "-m", "10", "-w", "%{http_code}", "http://169.254.169.254/"]);
    assert_eq!(code, "502");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let m = t.metrics();
    assert!(counter(&m, "metadata requests proxied") >= 7, "{m}");
}

/// The same router on DPDK: ge1 and ge2 are `net_af_packet` devices over
/// the veths (DPDK's own AF_PACKET driver), ge0 stays the kernel's.
#[cfg(feature = "dpdk")]
#[test]
#[ignore = "needs root, DPDK (--features dpdk), iproute2, iputils-ping, curl, python3, ethtool: run with --include-ignored"]
fn dpdk_net_af_packet_ping_and_http_through_masquerade_and_floating_ip() {
    let mut t = Topo::new();
    let (ns_in, ns_out) = (t.ns_in.clone(), t.ns_out.clone());
    hosts_compute_checksums(&t);
    t.start_router_with(&dpdk_vdev_ports("net_af_packet", ["iface=ge1", "iface=ge2"], None));
    // The API reports the devices' MACs: the veths'.
    let (code, body) = t.api("GET", "/v1/system/interfaces", None);
    assert_eq!(code, 200, "{body}");
    for ifc in ["ge1", "ge2"] {
        let mac = mac_of(&t, &t.ns_rt.clone(), ifc);
        assert!(body.contains(&mac), "{ifc} {mac}: {body}");
    }
    ping_and_http_through_masquerade(&mut t);

    let srv = serve_http(&mut t, &ns_in, "192.168.1.5", 8081);
    let page = t.http(&ns_out, "http://203.0.113.50:8081/", None);
    assert!(page.contains("Directory listing"), "{page}");
    let log = t.finish(srv);
    assert!(http_clients(&log).contains(&"203.0.113.1"), "floating ip inbound keeps the client address: {log}");
}

/// DPDK's net_af_packet and net_tap, unlike our af_packet port, do not
/// complete checksums a veth peer left to "hardware": the hosts compute
/// theirs (as a VM's virtio NIC under a real PMD delivers them complete).
#[cfg(feature = "dpdk")]
fn hosts_compute_checksums(t: &Topo) {
    t.exec(&t.ns_in, &["ethtool", "-K", "i0", "tx", "off"]);
    t.exec(&t.ns_out, &["ethtool", "-K", "o0", "tx", "off"]);
}

/// `[dpdk]` without hugepages or PCI, with the virtual devices
/// `<driver>0,<args[0]>` and `<driver>1,<args[1]>`, and ge1 and ge2 on
/// them (with `macs` when given, else the devices' own).
#[cfg(feature = "dpdk")]
fn dpdk_vdev_ports(driver: &str, args: [&str; 2], macs: Option<[&str; 2]>) -> String {
    let mut s = format!(
        "[dpdk]\neal_args = [\"--no-huge\", \"-m\", \"256\", \"--no-pci\", \"--no-telemetry\", \
         \"--vdev\", \"{driver}0,{}\", \"--vdev\", \"{driver}1,{}\"]\nmbufs = 4095\n",
        args[0], args[1]
    );
    for (i, name) in ["ge1", "ge2"].into_iter().enumerate() {
        s += &format!("[[ports]]\nname = \"{name}\"\nbackend = \"dpdk\"\ndevice = \"{driver}{i}\"\n");
        if let Some(m) = macs {
            s += &format!("mac = \"{}\"\n", m[i]);
        }
    }
    s
}

/// The inside host pings the router and the outside host through it, and
/// fetches a page from the outside through the masquerade: the server sees
/// the external address, never an inside one.
#[cfg(feature = "dpdk")]
fn ping_and_http_through_masquerade(t: &mut Topo) {
    let (ns_in, ns_out) = (t.ns_in.clone(), t.ns_out.clone());
    ping_ok(t, &ns_in, "192.168.1.1");
    ping_ok(t, &ns_in, "203.0.113.1");
    let srv = serve_http(t, &ns_out, "203.0.113.1", 8080);
    let page = t.http(&ns_in, "http://203.0.113.1:8080/", Some("192.168.1.20"));
    assert!(page.contains("Directory listing"), "{page}");
    let log = t.finish(srv);
    let clients = http_clients(&log);
    assert!(clients.contains(&"203.0.113.10"), "masquerade: {log}");
    assert!(!clients.iter().any(|c| c.starts_with("192.168.")), "{log}");
}

/// The same router on DPDK's `net_tap` devices, which verify received IPv4
/// header checksums when asked (`RTE_ETH_RX_OFFLOAD_IPV4_CKSUM`), as a
/// NIC's receive offload does: the router asks, trusts frames marked good
/// and still checks the others itself. Each tap is bridged, in the
/// router's namespace, to the veth of its network.
#[cfg(feature = "dpdk")]
#[test]
#[ignore = "needs root, DPDK (--features dpdk), /dev/net/tun, iproute2, iputils-ping, curl, python3, ethtool: run with --include-ignored"]
fn dpdk_net_tap_with_rx_checksum_offload_forwards_and_still_drops_bad_checksums() {
    let mut t = Topo::new();
    let (ns_in, ns_rt) = (t.ns_in.clone(), t.ns_rt.clone());
    hosts_compute_checksums(&t);
    // The ports' MACs are set: a tap's own (kernel) MAC would be the
    // bridge's local address, delivered to the kernel, not to the router.
    t.start_router_with(&dpdk_vdev_ports(
        "net_tap",
        ["iface=tp1", "iface=tp2"],
        Some(["fa:16:3e:7a:00:01", "fa:16:3e:7a:00:02"]),
    ));
    // Where br_netfilter is loaded, bridged IPv4 goes through the kernel's
    // own header checks, which would drop the broken frames below before
    // the router sees them: not in this namespace.
    t.exec(
        &ns_rt,
        &[
            "sh",
            "-c",
            "for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e \"$f\" ] && echo 0 > \"$f\"; done; true",
        ],
    );
    for (tap, veth, br) in [("tp1", "ge1", "bt1"), ("tp2", "ge2", "bt2")] {
        t.exec(&ns_rt, &["ip", "link", "add", br, "type", "bridge"]);
        for ifc in [tap, br] {
            t.exec(&ns_rt, &["sysctl", "-qw", &format!("net.ipv6.conf.{ifc}.disable_ipv6=1")]);
        }
        t.exec(&ns_rt, &["ip", "link", "set", veth, "master", br]);
        t.exec(&ns_rt, &["ip", "link", "set", tap, "master", br]);
        t.exec(&ns_rt, &["ip", "link", "set", tap, "up"]);
        t.exec(&ns_rt, &["ip", "link", "set", br, "up"]);
    }
    let log = t.router_log();
    for dev in ["net_tap0", "net_tap1"] {
        assert!(log.contains(&format!("{dev}: received IPv4 header checksums are verified by the device")), "{log}");
    }
    ping_and_http_through_masquerade(&mut t);

    // Frames with a broken IPv4 header checksum, the device marks them bad:
    // dropped and counted, as the software check drops them.
    let before = counter(&t.metrics(), "ipv4 bad header checksum");
    let script = r#"
import socket, struct
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
udp = struct.pack("!HHHH", 40000, 9, 8 + 18, 0) + b"bad header checksum"[:18]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton("192.168.1.20"), socket.inet_aton("203.0.113.1"))
ip = ip[:10] + struct.pack("!H", csum(ip) ^ 0x5a5a) + ip[12:]
eth = bytes.fromhex("fa163e7a0002" "fa163e000020" "0800")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("i0", 0))
for _ in range(5):
    s.send(eth + ip + udp)
"#;
    t.exec(&ns_in, &["python3", "-c", script]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = before;
    while Instant::now() < deadline && after < before + 5 {
        std::thread::sleep(Duration::from_millis(200));
        after = counter(&t.metrics(), "ipv4 bad header checksum");
    }
    assert_eq!(after, before + 5, "bad checksums dropped: {}", t.metrics());
}

/// A load-balancer appliance: ge1 on the clients' network (VIP
/// 203.0.113.10, the interface's address, as Astara's example), ge2 on the
/// members' network (192.168.1.1). Listener HTTP 80 (round robin, HTTP
/// health check) over members .21, .22, .23 port 8080; listener TCP 5201
/// (source IP, PING health check) over iperf3 servers on .21 and .22.
fn lb_document(iperf_members: &[&str]) -> serde_json::Value {
    let web: Vec<serde_json::Value> = ["21", "22", "23"]
        .iter()
        .map(|m| {
            serde_json::json!({"id": format!("web-{m}"), "address": format!("192.168.1.{m}"),
                                      "protocol_port": 8080, "weight": 1, "admin_state_up": true})
        })
        .collect();
    let iperf: Vec<serde_json::Value> = iperf_members
        .iter()
        .map(|m| {
            serde_json::json!({"id": format!("iperf-{m}"), "address": format!("192.168.1.{m}"),
                                      "protocol_port": 5201, "weight": 1, "admin_state_up": true})
        })
        .collect();
    serde_json::json!({
        "tenant_id": "d22b149cee9b4eac8349c517eda00b89",
        "hostname": "ak-loadbalancer-netns",
        "networks": [
            {"network_id": "43dc2fad-f6f9-4668-9695-fed50f7768aa", "network_type": "management",
             "interface": {"ifname": "ge0", "addresses": ["fdca:3ba5:a17a:acda::2/64"]}, "subnets": []},
            {"network_id": "b7fc9b39-401c-47cc-a07d-9f8cde75ccbf", "network_type": "loadbalancer",
             "interface": {"ifname": "ge1", "addresses": ["203.0.113.10/24"]},
             "subnets": [{"id": "8c58b558-be54-45de-9873-169fe845bb80", "cidr": "203.0.113.0/24",
                          "gateway_ip": "203.0.113.1", "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}]},
            {"network_id": "1c3d6b6e-2b4a-4d5e-9f10-6a7b8c9d0e1f", "network_type": "internal",
             "interface": {"ifname": "ge2", "addresses": ["192.168.1.1/24"]},
             "subnets": [{"id": "2f1e0d9c-8b7a-4654-a3b2-c1d0e9f8a7b6", "cidr": "192.168.1.0/24",
                          "gateway_ip": "192.168.1.1", "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}]}
        ],
        "services": {"loadbalancer": {
            "id": "8ac54799-b143-48e5-94d4-e5e989592229", "name": "lb", "admin_state_up": true,
            "vip_address": "203.0.113.10",
            "listeners": [
                {"id": "web", "protocol": "HTTP", "protocol_port": 80, "admin_state_up": true,
                 "default_pool": {"id": "web-pool", "lb_algorithm": "ROUND_ROBIN", "protocol": "HTTP",
                    "healthmonitor": {"type": "HTTP", "delay": 1, "timeout": 1, "max_retries": 2,
                                      "url_path": "/", "expected_codes": "200"},
                    "members": web}},
                {"id": "iperf", "protocol": "TCP", "protocol_port": 5201, "admin_state_up": true,
                 "default_pool": {"id": "iperf-pool", "lb_algorithm": "SOURCE_IP", "protocol": "TCP",
                    "healthmonitor": {"type": "PING", "delay": 1, "timeout": 1, "max_retries": 2},
                    "members": iperf}}
            ]
        }}
    })
}

/// The load balancer's status from the API.
fn lb_status(t: &Topo) -> serde_json::Value {
    let (code, body) = t.api("GET", "/v1/loadbalancer/status", None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The web pool's member `id` in a status document.
fn lb_member<'a>(st: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    st["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["members"].as_array().into_iter().flatten())
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no member {id}: {st}"))
}

/// Fetches the VIP's page `n` times from each client address; the member
/// names that answered.
fn lb_fetch(t: &Topo, clients: &[&str], n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for c in clients {
        for _ in 0..n {
            names.push(t.http(&t.ns_out, "http://203.0.113.10/", Some(c)).trim().to_string());
        }
    }
    names
}

#[test]
#[ignore = "needs root, iproute2, curl, python3, iperf3, ethtool: run with --include-ignored"]
fn load_balancer_spreads_clients_removes_a_failed_member_and_keeps_connections_when_members_change() {
    let mut t = Topo::new();
    t.doc = lb_document(&["21", "22"]);
    let (ns_in, ns_out) = (t.ns_in.clone(), t.ns_out.clone());
    // Members: three addresses on the inside host, each serving a page
    // that names it; clients: six addresses on the outside host.
    let clients = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.5", "203.0.113.6"];
    for c in &clients[1..] {
        t.exec(&ns_out, &["ip", "addr", "add", &format!("{c}/24"), "dev", "o0"]);
    }
    let mut servers = HashMap::new();
    for m in ["21", "22", "23"] {
        let addr = format!("192.168.1.{m}");
        t.exec(&ns_in, &["ip", "addr", "add", &format!("{addr}/24"), "dev", "i0"]);
        let root = t.dir.path().join(format!("member-{m}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("index.html"), format!("member-{m}\n")).unwrap();
        let srv = t.spawn(
            &ns_in,
            &["python3", "-m", "http.server", "8080", "--bind", &addr, "--directory", root.to_str().unwrap()],
        );
        wait_http(&t, &ns_in, &format!("http://{addr}:8080/"));
        servers.insert(m, srv);
    }
    t.start_router();

    // Every healthy member is reached from several client addresses.
    let names = lb_fetch(&t, &clients, 5);
    for m in ["member-21", "member-22", "member-23"] {
        assert!(names.iter().any(|n| n == m), "{m} never answered: {names:?}");
    }
    assert!(names.iter().all(|n| n.starts_with("member-")), "{names:?}");
    let st = lb_status(&t);
    assert_eq!(lb_member(&st, "web-21")["health"]["up"], true, "{st}");
    assert!(lb_member(&st, "web-21")["sessions_created"].as_u64().unwrap() > 0, "{st}");
    // Members see the appliance's address on their network (192.168.1.20
    // is the readiness probe, from the member's own host).
    let log = t.finish(servers[&"22"]);
    let seen: Vec<&str> = http_clients(&log).into_iter().filter(|c| *c != "192.168.1.20").collect();
    assert!(!seen.is_empty() && seen.iter().all(|c| *c == "192.168.1.1"), "{log}");

    // .22's server is gone (stopped above): the health check (every 1 s,
    // 1 s timeout, 2 failures) takes it out within delay x max_retries
    // plus one check's timeout, and no request fails after that.
    let stopped = Instant::now();
    loop {
        let st = lb_status(&t);
        if lb_member(&st, "web-22")["state"] == "unhealthy" {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(5), "web-22 still in the pool: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = stopped.elapsed();
    let names = lb_fetch(&t, &clients, 5);
    assert!(names.iter().all(|n| n == "member-21" || n == "member-23"), "{names:?}");
    let st = lb_status(&t);
    assert_eq!(lb_member(&st, "web-22")["health"]["up"], false, "{st}");
    eprintln!("member removed {:.1} s after its server stopped", took.as_secs_f64());

    // A long TCP stream through the VIP survives a member being added.
    for m in ["21", "22", "23"] {
        t.spawn(&ns_in, &["iperf3", "-s", "-B", &format!("192.168.1.{m}")]);
    }
    // Their pool's monitor pings them: answered echoes count as passed checks.
    let started = Instant::now();
    while ["iperf-21", "iperf-22"].iter().any(|m| {
        let st = lb_status(&t);
        let mm = lb_member(&st, m);
        mm["state"] != "active" || mm["health"]["last_result"] != "ok"
    }) {
        assert!(started.elapsed() < Duration::from_secs(5), "iperf3 members not up: {}", lb_status(&t));
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = t
        .cmd(&ns_out, &["iperf3", "-c", "203.0.113.10", "-B", "203.0.113.4", "-t", "5", "-J"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (code, body) = t.api("PUT", "/v1/system/config", Some(&lb_document(&["21", "22", "23"])));
    assert_eq!(code, 200, "{body}");
    let out = client.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iperf3 across the member change: {report}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    assert!(bps > 0.0, "{report}");
    eprintln!("iperf3 through the VIP across a member change: {:.0} Mbit/s", bps / 1e6);
    let st = lb_status(&t);
    let iperf_members: Vec<&serde_json::Value> =
        st["pools"].as_array().unwrap().iter().find(|p| p["id"] == "iperf-pool").unwrap()["members"]
            .as_array()
            .unwrap()
            .iter()
            .collect();
    assert_eq!(iperf_members.len(), 3, "{st}");

    // What an operator sees: `ctl lb`, and the per-member metrics.
    let text = t.exec(&t.ns_mgt, &[env!("CARGO_BIN_EXE_astara-dp"), "ctl", "--api", Topo::API, "lb"]);
    let row = text.lines().find(|l| l.starts_with("web-22")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("unhealthy") && row.contains("down ("), "{text}");
    assert!(text.contains("pool web-pool (ROUND_ROBIN; HTTP GET / every 1 s"), "{text}");
    assert!(text.contains("pool iperf-pool (SOURCE_IP; ICMP echo every 1 s"), "{text}");
    let m = t.metrics();
    assert!(
        m.contains(r#"astara_dp_lb_member_up{pool="web-pool",member="web-22",address="192.168.1.22:8080"} 0"#),
        "{m}"
    );
    assert!(
        m.contains(r#"astara_dp_lb_member_up{pool="web-pool",member="web-21",address="192.168.1.21:8080"} 1"#),
        "{m}"
    );
}
