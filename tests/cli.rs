//! The `astara-dp` binary as a newcomer runs it: bench, gen and replay, and
//! the errors a person gets for bad arguments and bad documents.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_astara-dp"))
}

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn bench_runs_and_checks_itself() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let o = bin()
        .args(["bench", "--seconds", "0.5", "--quiet", "--json"])
        .arg(&json)
        .arg(repo("pktgen-scenarios/route-64b-1k.toml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    for want in ["worker", "Mpps", "ns/pkt", "cycles/pkt", "check: PASS", "drops: none"] {
        assert!(out.contains(want), "missing '{want}' in:\n{out}");
    }
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(r["total_packets"].as_u64().unwrap() > 0);
    assert_eq!(r["total_packets"], r["forwarded"]);
    assert_eq!(r["check_passed"], true);
}

/// Scenarios over `configs/router.json` the shipped ones do not cover: the
/// bench's reference model must know floating IPs and the anchors, or it
/// reports FAIL for what the router does right.
#[test]
fn bench_checks_floating_ips_and_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let config = repo("configs/router.json");
    // (name, ingress, protocol, source, destination port, destination,
    // forwarded: all or none)
    let cases = [
        ("floating-in", "ge1", "udp", "100.64.0.0/24", 8080, "203.0.113.50/32", true),
        ("hairpin-db", "ge2", "tcp", "192.168.1.0/24", 5432, "203.0.113.51/32", true),
        ("db-postgres", "ge2", "tcp", "192.168.1.0/24", 5432, "192.168.2.7/32", true),
        ("db-udp", "ge2", "udp", "192.168.1.0/24", 53, "192.168.2.7/32", false),
        ("blocked-nets", "ge1", "udp", "198.51.100.0/24", 8080, "203.0.113.50/32", false),
    ];
    for (name, ingress, proto, src, dport, dst, forwarded) in cases {
        let scenario = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &scenario,
            format!(
                "name = \"{name}\"\nconfig = \"{}\"\nseed = 3\n[traffic]\ningress = \"{ingress}\"\nflows = 64\n\
                 protocol = \"{proto}\"\nsrc = \"{src}\"\nsport = [1024, 9000]\ndport = [{dport}, {dport}]\n\
                 dst = \"{dst}\"\nsize = 64\n",
                config.display()
            ),
        )
        .unwrap();
        let json = dir.path().join(format!("{name}.json"));
        let o =
            bin().args(["bench", "--seconds", "0.3", "--quiet", "--json"]).arg(&json).arg(&scenario).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{name}: {out}\n{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains("check: PASS"), "{name}: {out}");
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let total = r["total_packets"].as_u64().unwrap();
        assert!(total > 0, "{name}");
        assert_eq!(r["forwarded"].as_u64().unwrap(), if forwarded { total } else { 0 }, "{name}: {out}");
        if !forwarded {
            assert!(out.contains("firewall: blocked by rule"), "{name}: {out}");
        }
    }
}

/// Each command's line in `--help` says what that command does.
#[test]
fn help_describes_each_command() {
    let o = bin().arg("--help").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    let line = |cmd: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(cmd))
            .unwrap_or_else(|| panic!("no '{cmd}' in:\n{out}"))
            .to_string()
    };
    for (cmd, says) in [
        ("bench", "in-memory"),
        ("gen", "pcap"),
        ("run", "Run the appliance"),
        ("ctl", "running appliance"),
        ("replay", "captures"),
    ] {
        let l = line(cmd);
        assert!(l.contains(says), "'{cmd}': {l}");
    }
    assert!(!line("run").contains("captures"), "{out}");
}

/// `--scramble`: the first pass opens the flows in another order; the
/// reference model's check still holds, with one worker and with two.
/// (A run shorter than the first pass is `expected_counts`' unit test.)
#[test]
fn bench_scrambled_opening_checks_itself() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("lb-small.toml");
    std::fs::write(
        &scenario,
        format!(
            "name = \"lb-small\"\nconfig = \"{}\"\nseed = 5\nlb_snat = \"never\"\n[traffic]\ningress = \"ge1\"\n\
             flows = 20000\nprotocol = \"tcp\"\nsrc = \"10.0.0.0/8\"\nsport = [1024, 65000]\ndport = [80, 80]\n\
             dst = \"192.168.0.137/32\"\nsize = 64\n",
            repo("configs/loadbalancer.json").display()
        ),
    )
    .unwrap();
    for cores in ["1", "2"] {
        let json = dir.path().join("r.json");
        let o = bin()
            .args(["bench", "--scramble", "--quiet", "--cores", cores, "--seconds", "0.5", "--json"])
            .arg(&json)
            .arg(&scenario)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{cores}: {out}\n{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains("first pass over its frames scrambled"), "{out}");
        assert!(out.contains("check: PASS"), "{cores}: {out}");
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(r["scrambled"], true);
        // Every flow opened once, whichever order: a session each.
        assert_eq!(r["stages"]["conntrack: sessions created"], 20_000, "{out}");
    }
}

#[test]
fn bench_with_two_workers_spreads_flows() {
    let o = bin()
        .args(["bench", "--seconds", "0.5", "--quiet", "--cores", "2", "--burst", "64"])
        .arg(repo("pktgen-scenarios/route-64b-1k.toml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    let rows: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with(['0', '1'])).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(out.contains("check: PASS"));
}

#[test]
fn gen_writes_a_capture_etherparse_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.pcap");
    let o = bin()
        .arg("gen")
        .arg(repo("pktgen-scenarios/route-imix.toml"))
        .arg("-o")
        .arg(&out)
        .args(["--count", "100"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(&out).unwrap()).unwrap();
    let mut sizes = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        etherparse::SlicedPacket::from_ethernet(&p.data).unwrap();
        sizes.push(p.data.len() + 4);
    }
    assert_eq!(sizes.len(), 100);
    // 8 whole 7:4:1 cycles of 12 (56 x 64 B) plus 64, 570, 64, 64.
    assert_eq!(sizes.iter().filter(|&&s| s == 64).count(), 59);
    assert_eq!(sizes.iter().filter(|&&s| s == 570).count(), 33);
    assert_eq!(sizes.iter().filter(|&&s| s == 1518).count(), 8);
}

#[test]
fn clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"tenant_id": "t", "hostname": "h", "networks": [{"network_id": "n", "interface": {"ifname": "ge1", "addresses": ["10.0.0.300/24"]}}]}"#).unwrap();
    let o = bin()
        .arg("replay")
        .arg("--config")
        .arg(&bad)
        .args(["--in", "ge1=/dev/null", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("networks[0].interface.addresses[0]"), "{err}");

    let o = bin()
        .args(["replay", "--config"])
        .arg(repo("configs/router.json"))
        .args(["--in", "ge9=/dev/null", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ge9: no such interface"));

    let o = bin()
        .args(["replay", "--config"])
        .arg(repo("configs/router.json"))
        .args(["--in", "nonsense", "--out-dir", "/tmp"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("IFNAME=FILE"));

    // A later document that does not compile fails the run at once, named.
    let o = bin()
        .args(["replay", "--config"])
        .arg(repo("configs/router.json"))
        .arg("--config-at")
        .arg(format!("5={}", bad.display()))
        .args(["--in", "ge1=/dev/null", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.json"), "{}", String::from_utf8_lossy(&o.stderr));
    for (flag, value, says) in
        [("--config-at", "soon=x.json", "not a time in seconds"), ("--lb-snat", "sometimes", "always or never")]
    {
        let o = bin()
            .args(["replay", "--config"])
            .arg(repo("configs/loadbalancer.json"))
            .args([flag, value, "--in", "ge1=/dev/null", "--out-dir", "/tmp"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{flag}: {err}");
    }

    let o = bin().args(["bench", "/nonexistent.toml"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.toml"));
}
