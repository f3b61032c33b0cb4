//! The DPDK backend (feature `dpdk`), through the real `astara-dp run` over
//! DPDK virtual devices, one process (one EAL) per run:
//!
//! - golden run: the same hand-built captures go through `replay` and
//!   through DPDK `net_pcap` ports; the frames each interface sent must be
//!   the same, byte for byte;
//! - a bad EAL argument and a missing device fail fast with a clear error;
//! - start/stop cycles on hugepages return every hugepage.
//!
//! (The real-client run over `net_af_packet` is in `tests/netns.rs`.)

use etherparse::PacketBuilder;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GE1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0xa0, 0x80, 0x82];
const GE2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01];
const GE3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x02];
const OUTSIDE_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x09];
const HOST6_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x01, 0x06];
const HOST5_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x01, 0x05];
const HOST7_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0x07];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_astara-dp"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn udp4(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, ttl)
        .udp(sport, dport)
        .write(&mut v, format!("dpdk-{sport}").as_bytes())
        .unwrap();
    v
}

fn tcp4(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = pcap_file::pcap::PcapWriter::new(f).unwrap();
    for (i, fr) in frames.iter().enumerate() {
        let ts = Duration::from_micros(1_000_000 + 10 * i as u64);
        w.write_packet(&pcap_file::pcap::PcapPacket::new(ts, fr.len() as u32, fr)).unwrap();
    }
}

fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut v = Vec::new();
    while let Some(p) = r.next_packet() {
        v.push(p.unwrap().data.into_owned());
    }
    v
}

/// Frames the host stack sends on its own (gratuitous ARP, ARP requests,
/// IPv6 neighbour discovery and router advertisements): `run` has a host
/// stack, `replay` has none.
fn host_stack_frame(f: &[u8]) -> bool {
    f.len() < 14 || f[12..14] == [0x08, 0x06] || f[0] == 0x33 && f[1] == 0x33 || icmp_error_from_router(f)
}

/// An ICMPv4 error the host stack sent from one of router.json's addresses
/// (type 3 or 11).
fn icmp_error_from_router(f: &[u8]) -> bool {
    let routers: [[u8; 4]; 3] = [[192, 168, 1, 1], [192, 168, 2, 1], [203, 0, 113, 10]];
    f.len() >= 35 && f[12..14] == [0x08, 0x00] && f[23] == 1 && routers.iter().any(|r| f[26..30] == *r) && {
        let ihl = (f[14] & 0xf) as usize * 4;
        f.get(14 + ihl).is_some_and(|t| *t == 3 || *t == 11)
    }
}

/// Kills the child on drop (a failed assertion must not leave a DPDK
/// process running).
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Running {
    fn stop(mut self) -> std::process::Output {
        let mut child = self.0.take().unwrap();
        // SAFETY: sends SIGTERM to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("astara-dp did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    }
}

/// `astara-dp run` with runtime file `rt` and configs/router.json.
fn start(rt: &Path) -> Running {
    let child = bin()
        .arg("run")
        .arg("--runtime")
        .arg(rt)
        .arg("--config")
        .arg(repo().join("configs/router.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running(Some(child))
}

fn get_json(api: u16, path: &str) -> Option<serde_json::Value> {
    let r = ureq::get(&format!("http://127.0.0.1:{api}{path}")).timeout(Duration::from_secs(2)).call().ok()?;
    serde_json::from_str(&r.into_string().ok()?).ok()
}

fn port_counter(stats: &serde_json::Value, port: &str, k: &str) -> u64 {
    stats["ports"][port][k].as_u64().unwrap_or(0)
}

/// The runtime file of router.json's four ports, ge1..ge3 on DPDK devices.
/// With `workers` workers (one unpinned, or pinned to CPUs 0, 1, ...).
fn runtime(dir: &Path, api: u16, eal: &[String], dpdk_ports: &[(&str, &str)], workers: usize) -> PathBuf {
    let cores: Vec<usize> = if workers == 1 { Vec::new() } else { (0..workers).collect() };
    let macs = [
        ("ge0", "fa:16:3e:e0:e1:b0"),
        ("ge1", "fa:16:3e:a0:80:82"),
        ("ge2", "fa:16:3e:11:22:01"),
        ("ge3", "fa:16:3e:11:22:02"),
    ];
    let mut t = format!(
        "log_level = \"info\"\nstate_dir = \"state\"\n[api]\nlisten = \"127.0.0.1\"\nport = {api}\n[workers]\ncores = {cores:?}\n[dpdk]\neal_args = {eal:?}\nmbufs = 8191\n"
    );
    for (name, mac) in macs {
        match dpdk_ports.iter().find(|(n, _)| *n == name) {
            Some((_, dev)) => {
                t += &format!("[[ports]]\nname = \"{name}\"\nmac = \"{mac}\"\nbackend = \"dpdk\"\ndevice = \"{dev}\"\n")
            }
            None => t += &format!("[[ports]]\nname = \"{name}\"\nmac = \"{mac}\"\nbackend = \"null\"\n"),
        }
    }
    t += "[[neighbors]]\nport = \"ge1\"\nip = \"203.0.113.1\"\nmac = \"02:00:5e:00:00:01\"\n";
    let p = dir.join("runtime.toml");
    std::fs::write(&p, t).unwrap();
    p
}

fn eal_base() -> Vec<String> {
    // No hugepages needed, no PCI probing, no shared files: runs beside
    // anything else.
    ["--no-huge", "-m", "512", "--no-pci", "--no-telemetry"].iter().map(|s| s.to_string()).collect()
}

#[test]
#[ignore = "needs DPDK (libdpdk-dev, --features dpdk)"]
fn dpdk_net_pcap_agrees_with_replay_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // ge2 (web, 192.168.1.0/24): masquerade out of ge1; PostgreSQL SYNs to
    // db (ge3), which the anchors let through; TTL expiry; UDP to db, which
    // the anchors block.
    let mut ge2 = Vec::new();
    for i in 0..40u16 {
        ge2.push(udp4(HOST6_MAC, GE2_MAC, [192, 168, 1, 6], [198, 51, 100, 10 + (i % 5) as u8], 30000 + i, 53, 64));
    }
    for i in 0..20u16 {
        ge2.push(tcp4(HOST6_MAC, GE2_MAC, [192, 168, 1, 6], [192, 168, 2, 7], 31000 + i, 5432));
    }
    ge2.push(udp4(HOST6_MAC, GE2_MAC, [192, 168, 1, 6], [198, 51, 100, 1], 32000, 53, 1));
    ge2.push(udp4(HOST6_MAC, GE2_MAC, [192, 168, 1, 6], [192, 168, 2, 7], 33000, 22, 64));
    // The floating IP's owner talks out: SNAT to 203.0.113.50.
    for i in 0..10u16 {
        ge2.push(udp4(HOST5_MAC, GE2_MAC, [192, 168, 1, 5], [198, 51, 100, 20], 34000 + i, 123, 64));
    }
    // ge1 (public): to the floating IP of 192.168.1.5 (DNAT), from outside
    // the anchors' blocked-nets.
    let mut ge1 = Vec::new();
    for i in 0..30u16 {
        ge1.push(udp4(OUTSIDE_MAC, GE1_MAC, [100, 64, 0, 99], [203, 0, 113, 50], 40000 + i, 8080, 60));
    }
    // ge3 (db): back to web.
    let mut ge3 = Vec::new();
    for i in 0..25u16 {
        ge3.push(udp4(HOST7_MAC, GE3_MAC, [192, 168, 2, 7], [192, 168, 1, 6], 7000, 35000 + i, 64));
    }
    let empty = d.join("empty.pcap");
    write_pcap(&empty, &[]);
    for (name, frames) in [("ge1", &ge1), ("ge2", &ge2), ("ge3", &ge3)] {
        write_pcap(&d.join(format!("in-{name}.pcap")), frames);
    }

    // The reference: replay, one packet at a time.
    let out = d.join("replay");
    let mut cmd = bin();
    cmd.arg("replay").arg("--config").arg(repo().join("configs/router.json")).arg("--out-dir").arg(&out);
    cmd.arg("--neighbor").arg("ge1:203.0.113.1=02:00:5e:00:00:01");
    for n in ["ge1", "ge2", "ge3"] {
        cmd.arg("--in").arg(format!("{n}={}", d.join(format!("in-{n}.pcap")).display()));
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "replay: {}", String::from_utf8_lossy(&o.stderr));

    // DPDK: the same captures on net_pcap devices.
    let mut eal = eal_base();
    for (i, n) in ["ge1", "ge2", "ge3"].iter().enumerate() {
        eal.push("--vdev".into());
        eal.push(format!(
            "net_pcap{i},rx_pcap={},tx_pcap={}",
            d.join(format!("in-{n}.pcap")).display(),
            d.join(format!("dpdk-{n}.pcap")).display()
        ));
    }
    let api = free_port();
    let rt = runtime(d, api, &eal, &[("ge1", "net_pcap0"), ("ge2", "net_pcap1"), ("ge3", "net_pcap2")], 1);
    let run = start(&rt);
    let want_rx = (ge1.len() + ge2.len() + ge3.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Some(s) = get_json(api, "/v1/stats") {
            let rx: u64 = ["ge1", "ge2", "ge3"].iter().map(|p| port_counter(&s, p, "rx_packets")).sum();
            if rx == want_rx {
                break;
            }
            last = Some(s);
        }
        assert!(Instant::now() < deadline, "not every frame was received in 30 s: {last:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The API reports what the devices are: the configured MACs, link up.
    let ifs = get_json(api, "/v1/system/interfaces").unwrap();
    let text = ifs.to_string();
    assert!(text.contains("fa:16:3e:a0:80:82") && text.contains("fa:16:3e:11:22:02"), "{text}");
    std::thread::sleep(Duration::from_millis(300));
    let o = run.stop();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "run failed: {log}");

    let (mut compared, mut errors) = (0, 0);
    for n in ["ge1", "ge2", "ge3"] {
        let mut want = read_pcap(&out.join(format!("{n}.pcap")));
        let all = read_pcap(&d.join(format!("dpdk-{n}.pcap")));
        errors += all.iter().filter(|f| icmp_error_from_router(f)).count();
        let mut got: Vec<Vec<u8>> = all.into_iter().filter(|f| !host_stack_frame(f)).collect();
        // Each interface's frames in a canonical order: bursts from several
        // ports interleave differently from replay's timestamp order.
        want.sort();
        got.sort();
        assert_eq!(got.len(), want.len(), "{n}: {} frames from DPDK, {} from replay\n{log}", got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{n}: frame {i} differs");
        }
        compared += got.len();
    }
    // 40 masqueraded + 10 floating out on ge1; 20 to db on ge3; 30 floating
    // in + 25 from db on ge2: everything but the TTL-expired and the
    // blocked UDP.
    assert_eq!(compared, 40 + 10 + 20 + 30 + 25, "{log}");
    // The two dropped ones were answered by the host stack, as the kernel
    // would: time exceeded and administratively prohibited.
    assert_eq!(errors, 2, "{log}");
}

#[test]
#[ignore = "needs DPDK (libdpdk-dev, --features dpdk)"]
fn dpdk_bad_eal_argument_fails_fast_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut eal = eal_base();
    eal.push("--no-such-eal-option".into());
    let rt = runtime(dir.path(), free_port(), &eal, &[("ge1", "net_null0")], 1);
    let t = Instant::now();
    let o = bin().arg("run").arg("--runtime").arg(&rt).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("DPDK EAL initialisation failed") && err.contains("--no-such-eal-option"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());

    // A device the EAL does not have: named, with what exists.
    let mut eal = eal_base();
    eal.extend(["--vdev".to_string(), "net_null0".to_string()]);
    let rt = runtime(dir.path(), free_port(), &eal, &[("ge1", "net_null0"), ("ge2", "net_null7")], 1);
    let o = bin().arg("run").arg("--runtime").arg(&rt).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("no DPDK device named net_null7") && err.contains("found: net_null0"), "{err}");
}

fn hugepages_free() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    m.lines().find_map(|l| l.strip_prefix("HugePages_Free:")).and_then(|v| v.trim().parse().ok())
}

/// Reserves 2 MB hugepages and mounts hugetlbfs if needed (root).
fn reserve_hugepages(n: u64) -> bool {
    let p = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    let have: u64 = std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    if have < n && std::fs::write(p, n.to_string()).is_err() {
        return false;
    }
    let mounted = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| m.contains("hugetlbfs"));
    if !mounted {
        let _ = std::fs::create_dir_all("/dev/hugepages");
        let ok = Command::new("mount").args(["-t", "hugetlbfs", "nodev", "/dev/hugepages"]).status();
        if !ok.is_ok_and(|s| s.success()) {
            return false;
        }
    }
    hugepages_free().is_some_and(|f| f >= 64)
}

#[test]
#[ignore = "needs root (hugepages) and DPDK (libdpdk-dev, --features dpdk)"]
fn dpdk_start_stop_cycles_return_every_hugepage() {
    assert!(reserve_hugepages(256), "cannot reserve 2 MB hugepages");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let frames: Vec<Vec<u8>> =
        (0..64u16).map(|i| udp4(HOST6_MAC, GE2_MAC, [192, 168, 1, 6], [198, 51, 100, 7], 20000 + i, 9, 64)).collect();
    write_pcap(&d.join("in.pcap"), &frames);
    let before = hugepages_free().unwrap();
    for cycle in 0..3 {
        // On hugepages (the EAL's default --in-memory), with a looping
        // capture so the workers are busy when the stop comes.
        let eal: Vec<String> = [
            "--no-pci",
            "--no-telemetry",
            "-m",
            "128",
            "--vdev",
            // Two queue pairs: each worker needs a TX queue of its own
            // (net_pcap has one per rx_pcap given).
            &format!("net_pcap0,rx_pcap={0},rx_pcap={0},infinite_rx=1", d.join("in.pcap").display()),
            "--vdev",
            "net_null0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let api = free_port();
        // Two workers: net_pcap has one RX queue, so the first worker
        // receives and hands flows to the other (mbufs cross threads, and
        // some are still on the rings when the stop comes).
        let rt = runtime(d, api, &eal, &[("ge1", "net_null0"), ("ge2", "net_pcap0")], 2);
        let run = start(&rt);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = get_json(api, "/v1/stats")
                && port_counter(&s, "ge1", "tx_packets") > 10_000
            {
                break;
            }
            assert!(Instant::now() < deadline, "cycle {cycle}: no traffic forwarded in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let in_use = before - hugepages_free().unwrap();
        assert!(in_use > 0, "cycle {cycle}: the EAL runs on hugepages");
        let o = run.stop();
        assert!(o.status.success(), "cycle {cycle}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(hugepages_free().unwrap(), before, "cycle {cycle}: hugepages not returned");
        let files = std::fs::read_dir("/dev/hugepages").map(|r| r.count()).unwrap_or(0);
        assert_eq!(files, 0, "cycle {cycle}: hugepage files left in /dev/hugepages");
    }
}
