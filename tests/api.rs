//! API conformance: the real `astara-dp run` driven over HTTP with the calls
//! an Astara orchestrator makes, every error it must get, a stuck client,
//! liveness during a large push, and a restart that forwards from the kept
//! document before any push.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Appliance {
    child: Child,
    api: String,
}

impl Appliance {
    fn start(runtime: &Path) -> Appliance {
        let mut child = Command::new(env!("CARGO_BIN_EXE_astara-dp"))
            .args(["run", "--runtime"])
            .arg(runtime)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("astara-dp: API listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let api = rx.recv_timeout(Duration::from_secs(20)).expect("the API came up");
        Appliance { child, api }
    }

    /// SIGTERM, and the exit status must be success.
    fn stop(mut self) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(90)).build()
}

/// (status, body) of any request, errors included.
fn call(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    let read = |resp: ureq::Response| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut resp.into_reader(), &mut s).unwrap();
        s
    };
    match r {
        Ok(resp) => (resp.status(), read(resp)),
        Err(ureq::Error::Status(code, resp)) => (code, read(resp)),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn get(a: &Appliance, path: &str) -> (u16, String) {
    call(agent().get(&format!("{}{path}", a.api)).call())
}

fn put(a: &Appliance, body: &[u8], ctype: &str) -> (u16, String) {
    call(agent().put(&format!("{}/v1/system/config", a.api)).set("Content-Type", ctype).send_bytes(body))
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn router_doc() -> serde_json::Value {
    json(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/router.json")).unwrap())
}

fn write_runtime(dir: &Path) -> PathBuf {
    // ge2 replays a capture once at start; ge1 writes what it sends.
    let mut frames = Vec::new();
    for i in 0..50u16 {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2([0xfa, 0x16, 0x3e, 0, 1, 5], [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01])
            .ipv4([192, 168, 1, 5], [8, 8, 8, (i % 250) as u8], 64)
            .udp(2000 + i, 53)
            .write(&mut v, b"x")
            .unwrap();
        frames.push(v);
    }
    astara_dp::app::replay::write_capture(&dir.join("ge2-in.pcap"), &frames).unwrap();
    let rt = dir.join("runtime.toml");
    std::fs::write(
        &rt,
        format!(
            r#"
log_level = "warn"
state_dir = "{state}"
[api]
listen = "127.0.0.1"
port = 0
[[ports]]
name = "ge0"
mac = "fa:16:3e:e0:e1:b0"
mtu = 1280
backend = "null"
[[ports]]
name = "ge1"
mac = "fa:16:3e:a0:80:82"
backend = "pcap"
tx = "ge1-out.pcap"
[[ports]]
name = "ge2"
mac = "fa:16:3e:11:22:01"
backend = "pcap"
rx = "ge2-in.pcap"
[[ports]]
name = "ge3"
mac = "fa:16:3e:11:22:02"
backend = "null"
[[neighbors]]
port = "ge1"
ip = "203.0.113.1"
mac = "02:00:5e:00:00:01"
"#,
            state = dir.join("state").display()
        ),
    )
    .unwrap();
    rt
}

/// Forwarded frames in a capture (the host stack's ARP frames aside).
fn count_frames(path: &Path) -> usize {
    let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut n = 0;
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        if p.data[12..14] == [0x08, 0x06] {
            // Gratuitous ARP for the port's address and floating IPs.
            assert_eq!(&p.data[0..6], &[0xff; 6], "gratuitous arp is broadcast");
            continue;
        }
        assert_eq!(&p.data[0..6], &[0x02, 0x00, 0x5e, 0, 0, 1], "forwarded to the pinned gateway");
        n += 1;
    }
    n
}

/// Documents in the shape the orchestrator builds them (no `lladdr` on
/// interfaces, subnets without ids, a load balancer's raw Neutron port and
/// null pool fields: see `tests/common`) are taken over HTTP, a router's
/// and then a load balancer's at each stage of its life; one whose load
/// balancer has no VIP is refused with the reason, and the running
/// document stays.
#[test]
#[ignore = "starts the appliance on loopback sockets; run with --include-ignored (CI does)"]
fn documents_in_the_orchestrators_own_shape_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let rt = write_runtime(dir.path());
    let a = Appliance::start(&rt);
    let doc = common::orchestrator_router_doc();
    let (code, body) = put(&a, doc.to_string().as_bytes(), "application/json");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&get(&a, "/v1/system/interface/ge1").1)["interface"]["addresses"][0], "172.16.77.50/24");
    assert_eq!(json(&get(&a, "/v1/system/interface/ge3").1)["interface"]["addresses"][0], "10.10.0.1/24");
    for (l, p, m) in [(false, false, false), (true, false, false), (true, true, false), (true, true, true)] {
        let doc = common::orchestrator_lb_doc(l, p, m);
        let (code, body) = put(&a, doc.to_string().as_bytes(), "application/json");
        assert_eq!(code, 200, "listener {l} pool {p} member {m}: {body}");
        let applied = json(&get(&a, "/v1/system/config").1)["configuration"].clone();
        assert_eq!(applied["services"]["loadbalancer"]["listeners"], doc["services"]["loadbalancer"]["listeners"]);
    }
    let mut novip = common::orchestrator_lb_doc(true, true, true);
    novip["services"]["loadbalancer"]["vip_port"] = serde_json::Value::Null;
    novip["services"]["loadbalancer"]["vip_address"] = serde_json::Value::Null;
    let (code, body) = put(&a, novip.to_string().as_bytes(), "application/json");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("vip_address"), "{body}");
    let kept = json(&get(&a, "/v1/system/config").1)["configuration"].clone();
    assert_eq!(kept["services"]["loadbalancer"]["vip_address"], "192.168.0.137");
    a.stop();
}

#[test]
#[ignore = "starts the appliance on loopback sockets; run with --include-ignored (CI does)"]
fn orchestrator_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let rt = write_runtime(dir.path());
    let a = Appliance::start(&rt);

    // Liveness, interfaces (MACs from the runtime), one interface, 404.
    let t = Instant::now();
    assert_eq!(get(&a, "/v1/firewall/rules").0, 200);
    assert!(t.elapsed() < Duration::from_secs(3));
    let ifs = json(&get(&a, "/v1/system/interfaces").1);
    let names: Vec<&str> =
        ifs["interfaces"].as_array().unwrap().iter().map(|i| i["ifname"].as_str().unwrap()).collect();
    assert_eq!(names, ["ge0", "ge1", "ge2", "ge3"]);
    assert_eq!(ifs["interfaces"][1]["lladdr"], "fa:16:3e:a0:80:82");
    assert_eq!(ifs["interfaces"][0]["mtu"], 1280);
    assert_eq!(json(&get(&a, "/v1/system/interface/ge2").1)["interface"]["state"], "up");
    assert_eq!(get(&a, "/v1/system/interface/ge9").0, 404);
    assert_eq!(json(&get(&a, "/v1/system/config").1), serde_json::json!({"configuration": {}}));
    assert_eq!(json(&get(&a, "/v1/status/").1), serde_json::json!({"v4": false, "v6": false}));
    let (code, body) = call(agent().post(&format!("{}/v1/firewall/labels", a.api)).send_string("{}"));
    assert_eq!((code, json(&body)), (200, serde_json::json!({"labels": []})));

    // The push, and the read-back.
    let doc = router_doc();
    let (code, body) = put(&a, doc.to_string().as_bytes(), "application/json");
    assert_eq!(code, 200, "{body}");
    let applied = json(&body)["configuration"].clone();
    assert_eq!(applied["tenant_id"], doc["tenant_id"]);
    assert_eq!(json(&get(&a, "/v1/system/config").1)["configuration"], applied);
    assert_eq!(json(&get(&a, "/v1/status/").1), serde_json::json!({"v4": true, "v6": false}));
    assert_eq!(json(&get(&a, "/v1/system/interface/ge1").1)["interface"]["addresses"][0], "203.0.113.10/24");
    // Re-pushing the same document is accepted and changes nothing.
    assert_eq!(put(&a, doc.to_string().as_bytes(), "application/json").0, 200);
    let stats = json(&get(&a, "/v1/stats").1);
    assert_eq!((stats["config"]["applied"].as_u64(), stats["config"]["unchanged"].as_u64()), (Some(1), Some(1)));

    // Every refusal, and the running document untouched after each.
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut d = router_doc();
        f(&mut d);
        d.to_string().into_bytes()
    };
    let refusals: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (doc.to_string().into_bytes(), "text/plain", 415, "application/json"),
        (b"{\"tenant_id\": ".to_vec(), "application/json", 422, "deserialize"),
        (with(&|d| drop(d.as_object_mut().unwrap().remove("tenant_id"))), "application/json", 422, "tenant_id"),
        (
            with(&|d| d["anchors"][0]["rules"][0]["interface"] = "ge7".into()),
            "application/json",
            422,
            "ge7 does not exist",
        ),
        (
            with(&|d| d["anchors"][0]["rules"][0]["source"] = "nobody".into()),
            "application/json",
            422,
            "not in the address book",
        ),
        (
            with(&|d| d["networks"][1]["interface"]["addresses"][0] = "203.0.113.300/24".into()),
            "application/json",
            422,
            "networks[1].interface.addresses[0]",
        ),
        (
            with(&|d| d["networks"][2]["interface"]["addresses"][0] = "203.0.113.99/24".into()),
            "application/json",
            422,
            "overlaps",
        ),
        (
            with(&|d| d["static_routes"][0][1] = "172.31.9.9".into()),
            "application/json",
            422,
            "not on any connected network",
        ),
        (with(&|d| d["services"] = serde_json::json!({"vpnaas": {}})), "application/json", 400, "vpnaas"),
    ];
    for (body, ctype, want, reason) in refusals {
        let (code, text) = put(&a, &body, ctype);
        assert_eq!(code, want, "{reason}: {text}");
        assert!(text.contains(reason), "expected '{reason}' in: {text}");
        assert_eq!(json(&get(&a, "/v1/system/config").1)["configuration"], applied, "refused push changed nothing");
    }
    // Over the limit: refused once 16 MiB have arrived. The server answers
    // and closes while the upload is still going, so the body is written
    // from another thread (its broken pipe is expected) and the answer read
    // here.
    let host = a.api.trim_start_matches("http://").to_string();
    let big = TcpStream::connect(&host).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = big.try_clone().unwrap();
    let uploader = std::thread::spawn(move || {
        let head = format!(
            "PUT /v1/system/config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            17 << 20
        );
        let _ = writer.write_all(head.as_bytes()).and_then(|_| writer.write_all(&vec![b' '; 17 << 20]));
    });
    let mut status = String::new();
    BufReader::new(&big).read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    drop(big);
    let _ = uploader.join();
    assert_eq!(json(&get(&a, "/v1/system/config").1)["configuration"], applied);

    // A stuck client (half a request, never finished) blocks nobody.
    let mut stuck = TcpStream::connect(&host).unwrap();
    write!(stuck, "PUT /v1/system/config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{").unwrap();
    assert_eq!(get(&a, "/v1/firewall/rules").0, 200);

    // Liveness stays answered while a 300,000-route document compiles.
    let mut big = router_doc();
    let routes: Vec<serde_json::Value> = (0..300_000u32)
        .map(|i| serde_json::json!([format!("{}.{}.{}.0/24", 11 + i / 65536, (i / 256) % 256, i % 256), "203.0.113.1"]))
        .collect();
    big["static_routes"] = serde_json::Value::Array(routes);
    let big = big.to_string();
    let api = a.api.clone();
    let pusher = std::thread::spawn(move || {
        call(agent().put(&format!("{api}/v1/system/config")).set("Content-Type", "application/json").send_string(&big))
    });
    while !pusher.is_finished() {
        let t = Instant::now();
        assert_eq!(get(&a, "/v1/firewall/rules").0, 200);
        assert!(t.elapsed() < Duration::from_secs(3), "liveness answered within the orchestrator's 3 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pusher.join().unwrap().0, 200);
    let routes = json(&get(&a, "/v1/routes").1);
    assert!(routes["routes"].as_array().unwrap().len() > 300_000);
    drop(stuck);

    // Metrics and the console client.
    let metrics = get(&a, "/metrics").1;
    for family in [
        "astara_dp_port_rx_packets_total{port=\"ge2\"}",
        "astara_dp_drops_total{reason=",
        "astara_dp_snapshot_generation 3",
        "astara_dp_config_apply_seconds",
        "astara_dp_worker_busy_cycles_total",
    ] {
        assert!(metrics.contains(family), "metrics lack {family}");
    }
    let ctl = |args: &[&str]| {
        let o =
            Command::new(env!("CARGO_BIN_EXE_astara-dp")).args(["ctl", "--api", &a.api]).args(args).output().unwrap();
        assert!(o.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(ctl(&["status"]).contains("snapshot generation:   3"));
    assert!(ctl(&["interfaces"]).contains("fa:16:3e:11:22:01"));
    // The big document replaced static_routes; the subnet host route stays.
    let listing = ctl(&["routes"]);
    assert!(listing.contains("10.20.0.0/16") && !listing.contains("10.30.0.0/16"));
    let cfg_file = dir.path().join("r.json");
    std::fs::write(&cfg_file, doc.to_string()).unwrap();
    assert!(ctl(&["config", "put", cfg_file.to_str().unwrap()]).contains("applied"));
    assert_eq!(json(&ctl(&["config", "get"]))["configuration"], applied);

    // (What this first run did with its capture depends on whether the worker
    // replayed it before or after the first push: not asserted.)
    a.stop();
    std::fs::remove_file(dir.path().join("ge1-out.pcap")).unwrap();

    // Restart with no --config: the kept document is applied before the
    // workers start, so the capture replayed at start is forwarded at once,
    // before anyone pushes anything.
    let a = Appliance::start(&rt);
    assert_eq!(json(&get(&a, "/v1/system/config").1)["configuration"], applied);
    let deadline = Instant::now() + Duration::from_secs(10);
    // (The host stack's gratuitous ARP is counted as injected, not forwarded.)
    let forwarded = |a: &Appliance| json(&get(a, "/v1/stats").1)["totals"]["tx"].as_u64().unwrap();
    while forwarded(&a) != 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(forwarded(&a), 50);

    // Its 50 flows are sessions of the worker (floating IP of .5 outbound),
    // listed with filters, and counted in /metrics.
    let (code, body) = get(&a, "/v1/sessions?addr=192.168.1.5&proto=udp&limit=10");
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!((v["matched"].as_u64(), v["live"].as_u64()), (Some(50), Some(50)), "{v}");
    assert_eq!(v["sessions"].as_array().unwrap().len(), 10);
    let s0 = &v["sessions"][0];
    assert_eq!(s0["nat"], "floating-out");
    assert_eq!(s0["original"]["src"], "192.168.1.5");
    assert_eq!(s0["reply"]["dst"], "203.0.113.50");
    assert_eq!(json(&get(&a, "/v1/sessions?port=2007").1)["matched"], 1);
    assert_eq!(get(&a, "/v1/sessions?addr=nonsense").0, 400);
    let ctl = Command::new(env!("CARGO_BIN_EXE_astara-dp"))
        .args(["ctl", "--api", &a.api, "sessions", "--port", "2007"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ctl.stdout);
    assert!(ctl.status.success() && out.contains("192.168.1.5:2007 > 8.8.8.7:53"), "{out}");
    assert!(out.contains("1 listed, 1 matched, 50 live"), "{out}");
    let metrics = get(&a, "/metrics").1;
    assert!(metrics.contains("astara_dp_sessions_in_use{worker=\"0\"} 50"), "{metrics}");
    assert!(metrics.contains("astara_dp_sessions_capacity{worker=\"0\"} 1000000"));
    a.stop();
    assert_eq!(count_frames(&dir.path().join("ge1-out.pcap")), 50);
}

/// The load-balancer document: pushed, seen in `/v1/loadbalancer/status`
/// and `/metrics`; a bad one refused with the field, the old one kept.
#[test]
#[ignore = "starts the appliance on loopback sockets; run with --include-ignored (CI does)"]
fn load_balancer_document_status_and_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let rt = write_runtime(dir.path());
    let a = Appliance::start(&rt);
    let doc =
        json(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/loadbalancer.json")).unwrap());
    let (code, body) = put(&a, doc.to_string().as_bytes(), "application/json");
    assert_eq!(code, 200, "{body}");
    let st = json(&get(&a, "/v1/loadbalancer/status").1);
    assert_eq!(st["listeners"][0]["vip"], "192.168.0.137");
    assert_eq!(st["listeners"][0]["protocol_port"], 80);
    let pool = &st["pools"][0];
    assert_eq!(pool["lb_algorithm"], "ROUND_ROBIN");
    assert_eq!(pool["healthmonitor"]["kind"], "HTTP GET /");
    let members: Vec<(&str, &str, u64)> = pool["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["address"].as_str().unwrap(), m["state"].as_str().unwrap(), m["weight"].as_u64().unwrap()))
        .collect();
    assert_eq!(members, [("192.168.0.194", "active", 1), ("192.168.0.195", "active", 2)]);
    let metrics = get(&a, "/metrics").1;
    assert!(metrics.contains("astara_dp_lb_member_up{pool=\"255c4d63-6199-4afc-abec-48c5ab46ac2e\""), "{metrics}");

    let mut bad = doc.clone();
    bad["services"]["loadbalancer"]["listeners"][0]["default_pool"]["lb_algorithm"] = "FASTEST".into();
    let (code, body) = put(&a, bad.to_string().as_bytes(), "application/json");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("default_pool.lb_algorithm: FASTEST"), "{body}");
    let after = json(&get(&a, "/v1/loadbalancer/status").1);
    assert_eq!(after["pools"][0]["lb_algorithm"], "ROUND_ROBIN", "the document in force is kept");
}
