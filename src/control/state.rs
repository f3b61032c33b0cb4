//! The control side's state: the document in force, applying a new one
//! (validate, compile, publish with one pointer swap, persist), and what the
//! API reports (interfaces, routes, status, statistics, metrics).

use super::model::{AstaraConfig, ConfigError, NetworkType};
use super::{CompileOptions, PortSpec, compile, describe_routes, empty_snapshot};
use crate::dataplane::query::{SessionFilter, SessionQuery};
use crate::dataplane::{Counters, STAGE_COUNTERS, Snapshots, WorkerStats, snapshots};
use crate::port::{Port, PortStats};
use crate::stage::AdjKind;
use arc_swap::ArcSwapOption;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A refused document: the HTTP status and a reason a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl From<ConfigError> for ApplyError {
    fn from(e: ConfigError) -> ApplyError {
        let status = if matches!(e, ConfigError::Unsupported(_)) { 400 } else { 422 };
        ApplyError { status, message: e.to_string() }
    }
}

/// The document in force and what was compiled from it.
pub struct Applied {
    pub config: Arc<AstaraConfig>,
    pub routes: Vec<(bool, u128, u8, u32)>,
    pub warnings: Vec<String>,
    pub generation: u64,
}

pub struct Control {
    ports: Vec<PortSpec>,
    port_objs: Vec<Arc<dyn Port>>,
    base: CompileOptions,
    snapshots: Snapshots,
    workers: Mutex<Vec<Arc<WorkerStats>>>,
    /// Serialises session listings (each worker takes one at a time).
    listing: Mutex<()>,
    /// Read without locking (liveness must never wait for an apply).
    applied: ArcSwapOption<Applied>,
    /// One apply at a time; holds the snapshots replaced but perhaps still
    /// in a worker's hands, so that freeing them (unmapping tables) happens
    /// here and never on a worker.
    apply_lock: Mutex<Vec<Arc<crate::stage::Snapshot>>>,
    state_file: Option<PathBuf>,
    /// Neighbours the host stack learned (ARP/ND), merged into every
    /// snapshot published, whether for a new document or a new neighbour.
    learned: Mutex<crate::table::NeighborTable>,
    /// Load-balancer members out of their pools (failed health checks),
    /// applied to every snapshot published.
    lb_down: Mutex<std::collections::HashSet<String>>,
    /// The health checker's view of every checked member.
    lb_health: Mutex<std::collections::BTreeMap<String, super::health::MemberHealth>>,
    host: ArcSwapOption<super::host::HostStats>,
    generation: AtomicU64,
    n_applied: AtomicU64,
    n_rejected: AtomicU64,
    n_unchanged: AtomicU64,
    n_persist_errors: AtomicU64,
    last_apply_ns: AtomicU64,
}

impl Control {
    /// `state_dir`: where the accepted document is kept (None: not kept).
    pub fn new(
        ports: Vec<PortSpec>,
        port_objs: Vec<Arc<dyn Port>>,
        base: CompileOptions,
        state_dir: Option<PathBuf>,
    ) -> Result<Arc<Control>, String> {
        let snap = empty_snapshot(&ports, 1).map_err(|e| e.to_string())?;
        Ok(Arc::new(Control {
            ports,
            port_objs,
            base,
            snapshots: snapshots(snap),
            workers: Mutex::new(Vec::new()),
            listing: Mutex::new(()),
            applied: ArcSwapOption::empty(),
            apply_lock: Mutex::new(Vec::new()),
            state_file: state_dir.map(|d| d.join("config.json")),
            learned: Mutex::new(crate::table::NeighborTable::new()),
            lb_down: Mutex::default(),
            lb_health: Mutex::default(),
            host: ArcSwapOption::empty(),
            generation: AtomicU64::new(1),
            n_applied: AtomicU64::new(0),
            n_rejected: AtomicU64::new(0),
            n_unchanged: AtomicU64::new(0),
            n_persist_errors: AtomicU64::new(0),
            last_apply_ns: AtomicU64::new(0),
        }))
    }

    pub fn snapshots(&self) -> Snapshots {
        self.snapshots.clone()
    }

    pub fn ports(&self) -> &[PortSpec] {
        &self.ports
    }

    pub fn set_workers(&self, w: Vec<Arc<WorkerStats>>) {
        *self.workers.lock().unwrap_or_else(|e| e.into_inner()) = w;
    }

    /// The host stack's counters, reported in `/metrics` and statistics.
    pub fn set_host_stats(&self, s: Arc<super::host::HostStats>) {
        self.host.store(Some(s));
    }

    pub fn applied(&self) -> Option<Arc<Applied>> {
        self.applied.load_full()
    }

    pub fn current(&self) -> Option<Arc<AstaraConfig>> {
        self.applied().map(|a| a.config.clone())
    }

    /// Parses, validates, compiles and publishes a JSON document.
    pub fn apply_json(&self, body: &[u8]) -> Result<Arc<AstaraConfig>, ApplyError> {
        let t0 = Instant::now();
        let r = AstaraConfig::from_json(body).map_err(ApplyError::from).and_then(|c| self.apply_timed(c, t0));
        if r.is_err() {
            self.n_rejected.fetch_add(1, Relaxed);
        }
        r
    }

    /// Validates, compiles and publishes a document. A refused document
    /// changes nothing; the same document again is accepted at once.
    pub fn apply(&self, cfg: AstaraConfig) -> Result<Arc<AstaraConfig>, ApplyError> {
        let r = self.apply_timed(cfg, Instant::now());
        if r.is_err() {
            self.n_rejected.fetch_add(1, Relaxed);
        }
        r
    }

    fn apply_timed(&self, cfg: AstaraConfig, t0: Instant) -> Result<Arc<AstaraConfig>, ApplyError> {
        let mut graveyard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Free what no worker holds any more (each worker drops its reference
        // at its next burst).
        graveyard.retain(|s| Arc::strong_count(s) > 1);
        if let Some(cur) = self.applied()
            && *cur.config == cfg
        {
            self.n_unchanged.fetch_add(1, Relaxed);
            return Ok(cur.config.clone());
        }
        let generation = self.generation.load(Relaxed) + 1;
        let opts = CompileOptions { generation, ..self.base.clone() };
        let compiled = compile(&cfg, &self.ports, &opts)?;
        for w in &compiled.warnings {
            log::warn!("config: {w}");
        }
        let config = Arc::new(cfg);
        let snap = compiled
            .snapshot
            .with_learned(&self.learned.lock().unwrap_or_else(|e| e.into_inner()))
            .with_lb_health(&self.lb_down.lock().unwrap_or_else(|e| e.into_inner()));
        graveyard.push(self.snapshots.swap(Arc::new(snap)));
        self.generation.store(generation, Relaxed);
        self.last_apply_ns.store(t0.elapsed().as_nanos() as u64, Relaxed);
        self.applied.store(Some(Arc::new(Applied {
            config: config.clone(),
            routes: compiled.routes,
            warnings: compiled.warnings,
            generation,
        })));
        self.n_applied.fetch_add(1, Relaxed);
        // The document is live: failing to keep a copy must not fail the push
        // (the orchestrator would reboot the appliance); it is logged and counted.
        if let Some(f) = &self.state_file
            && let Err(e) = persist(f, &config)
        {
            self.n_persist_errors.fetch_add(1, Relaxed);
            log::error!("could not keep the configuration in {}: {e}", f.display());
        }
        Ok(config)
    }

    /// Publishes the host stack's learned neighbours: the snapshot in force,
    /// with these neighbours (same generation: the document is unchanged).
    pub fn publish_learned(&self, learned: crate::table::NeighborTable) {
        let mut graveyard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        graveyard.retain(|s| Arc::strong_count(s) > 1);
        let next = self.snapshots.load().with_learned(&learned);
        *self.learned.lock().unwrap_or_else(|e| e.into_inner()) = learned;
        graveyard.push(self.snapshots.swap(Arc::new(next)));
    }

    /// Publishes the health checker's verdict: the snapshot in force, with
    /// the members in `down` out of their pools' tables.
    pub fn publish_health(&self, down: std::collections::HashSet<String>) {
        let mut graveyard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        graveyard.retain(|s| Arc::strong_count(s) > 1);
        let next = self.snapshots.load().with_lb_health(&down);
        *self.lb_down.lock().unwrap_or_else(|e| e.into_inner()) = down;
        graveyard.push(self.snapshots.swap(Arc::new(next)));
    }

    /// The health checker's latest view of the members it checks.
    pub fn set_lb_health(&self, view: std::collections::BTreeMap<String, super::health::MemberHealth>) {
        *self.lb_health.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// `GET /v1/loadbalancer/status`: listeners, pools and members with
    /// their state, health and per-member sessions and packets (summed
    /// over the workers).
    pub fn lb_status(&self) -> Value {
        let snap = self.snapshots.load_full();
        let lb = &snap.lb;
        let workers: Vec<Arc<WorkerStats>> = self.workers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let health = self.lb_health.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ip = |a: u32| std::net::Ipv4Addr::from(a).to_string();
        let pools: Vec<Value> = lb
            .pools
            .iter()
            .map(|p| {
                let members: Vec<Value> = p
                    .members
                    .iter()
                    .filter_map(|&i| lb.members.get(i as usize))
                    .map(|m| {
                        let c = workers.iter().map(|w| w.lb_member(m.slot)).fold([0u64; 3], |a, b| {
                            [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
                        });
                        let key = crate::stage::lb::member_key(&p.id, &m.id);
                        let state = match lb.slot_state(m.slot) {
                            crate::stage::lb::SLOT_ACTIVE => "active",
                            crate::stage::lb::SLOT_DRAINING => "draining",
                            _ if !m.healthy => "unhealthy",
                            _ => "no new flows (weight 0)",
                        };
                        json!({
                            "id": m.id, "address": ip(m.addr), "protocol_port": m.port, "weight": m.weight,
                            "admin_state_up": m.admin_up, "state": state,
                            "health": health.get(&key),
                            "sessions": c[0], "sessions_created": c[1], "packets": c[2],
                        })
                    })
                    .collect();
                json!({
                    "id": p.id, "lb_algorithm": p.algorithm.name(),
                    "maglev_size": p.table.as_ref().map(|t| t.size()),
                    "healthmonitor": p.monitor.as_ref().map(|h| json!({
                        "kind": match &h.kind { crate::stage::lb::CheckKind::Connect => "TCP connect".to_string(),
                                                crate::stage::lb::CheckKind::Ping => "ICMP echo".to_string(),
                                                crate::stage::lb::CheckKind::Http { method, path, .. } => format!("HTTP {method} {path}") },
                        "delay": h.delay, "timeout": h.timeout, "max_retries": h.max_retries,
                    })),
                    "members": members,
                })
            })
            .collect();
        let listeners: Vec<Value> = lb
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "id": l.id, "protocol": l.protocol, "vip": ip(l.addr), "protocol_port": l.port,
                    "pool": l.pool.and_then(|p| lb.pools.get(p as usize)).map(|p| p.id.clone()),
                })
            })
            .collect();
        json!({
            "listeners": listeners, "pools": pools,
            "source_translation": match lb.snat { crate::stage::lb::LbSnat::Always => "always", crate::stage::lb::LbSnat::Never => "never" },
            "drain_timeout": lb.drain_timeout,
        })
    }

    /// Applies the kept document, if any (at start).
    pub fn restore(&self) -> Option<Result<Arc<AstaraConfig>, String>> {
        let f = self.state_file.as_ref()?;
        let text = std::fs::read(f).ok()?;
        Some(self.apply_json(&text).map_err(|e| format!("{}: {e}", f.display())))
    }

    /// The first address of the management network (lowest, as the original).
    pub fn management_address(&self) -> Option<IpAddr> {
        let cfg = self.current()?;
        let mut addrs: Vec<IpAddr> = cfg
            .networks
            .iter()
            .filter(|n| n.network_type == NetworkType::Management)
            .flat_map(|n| n.interface.addresses.iter().map(|a| a.addr))
            .collect();
        addrs.sort();
        addrs.first().copied()
    }

    /// One interface as `GET /v1/system/interface(s)` shows it.
    pub fn interface(&self, name: &str) -> Option<Value> {
        let i = self.ports.iter().position(|p| p.name == name)?;
        let spec = &self.ports[i];
        let cfg = self.current();
        let net = cfg.as_ref().and_then(|c| {
            c.networks.iter().find(|n| n.interface.lladdr == Some(spec.mac) || n.interface.ifname == spec.name)
        });
        let up = self.port_objs.get(i).is_none_or(|p| p.link_up());
        let addresses: Vec<String> =
            net.map(|n| n.interface.addresses.iter().map(|a| a.to_string()).collect()).unwrap_or_default();
        let mtu = net.and_then(|n| n.interface.mtu).map_or(spec.mtu as u32, |m| m.min(spec.mtu as u32));
        let mut flags = vec!["BROADCAST", "MULTICAST"];
        if up {
            flags.insert(0, "UP");
            flags.push("RUNNING");
        }
        Some(json!({
            "ifname": spec.name,
            "lladdr": spec.mac.to_string(),
            "addresses": addresses,
            "mtu": mtu,
            "state": if up { "up" } else { "down" },
            "flags": flags,
            "groups": net.map(|n| n.interface.groups.clone()).unwrap_or_default(),
            "media": net.and_then(|n| n.interface.media.clone()).unwrap_or_default(),
            "description": net.and_then(|n| n.interface.description.clone()).unwrap_or_default(),
        }))
    }

    pub fn interfaces(&self) -> Vec<Value> {
        self.ports.iter().filter_map(|p| self.interface(&p.name)).collect()
    }

    /// Installed routes, for operators.
    pub fn routes(&self) -> Vec<Value> {
        let Some(a) = self.applied() else { return Vec::new() };
        let snap = self.snapshots.load();
        describe_routes(&snap, &a.routes)
            .into_iter()
            .map(|(dst, kind, ifname, via)| json!({"destination": dst, "type": kind, "interface": ifname, "via": via}))
            .collect()
    }

    /// `{"v4": .., "v6": ..}`: whether a default route of that family leads
    /// to a gateway whose MAC is known.
    pub fn status(&self) -> Value {
        let snap = self.snapshots.load();
        let reachable = |nh: u32| {
            snap.adj.get(nh as usize).is_some_and(|a| match a.kind {
                AdjKind::Gateway => a.mac.is_some(),
                AdjKind::Ecmp => true,
                _ => false,
            })
        };
        let v4 = self.applied().is_some() && reachable(snap.fib4.lookup(0x0101_0101));
        let v6 = self.applied().is_some() && reachable(snap.fib6.lookup(0x2001_4860_4860_u128 << 80 | 0x8888));
        json!({"v4": v4, "v6": v6})
    }

    /// The text `GET /v1/firewall/rules` answers (the liveness probe reads
    /// only the status): the policy the data plane enforces.
    pub fn rules_text(&self) -> String {
        let mut t = String::new();
        let generation = self.generation.load(Relaxed);
        let Some(a) = self.applied() else {
            let _ = writeln!(
                t,
                "# astara-dp: no configuration yet (snapshot {generation}); all ports down, nothing forwarded"
            );
            return t;
        };
        let c = &a.config;
        let _ =
            writeln!(t, "# astara-dp policy, snapshot {generation}, tenant {}", c.tenant_id.as_deref().unwrap_or(""));
        let _ = writeln!(t, "forward: routed between tenant networks; into the management network: drop");
        for an in &c.anchors {
            let _ = writeln!(t, "anchor {}:", an.name);
            for r in &an.rules {
                let _ = writeln!(t, "  {}", serde_json::to_string(r).unwrap_or_default());
            }
        }
        t
    }

    fn worker_counters(&self) -> Vec<Counters> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|w| w.read()).collect()
    }

    fn port_stats(&self) -> Vec<(String, PortStats)> {
        self.port_objs.iter().map(|p| (p.spec().name.clone(), p.stats())).collect()
    }

    /// `GET /v1/stats`.
    pub fn stats(&self) -> Value {
        let workers = self.worker_counters();
        let mut total = Counters::new(self.ports.len());
        for w in &workers {
            total.add(w);
        }
        json!({
            "generation": self.generation.load(Relaxed),
            "config": {
                "applied": self.n_applied.load(Relaxed),
                "rejected": self.n_rejected.load(Relaxed),
                "unchanged": self.n_unchanged.load(Relaxed),
                "persist_errors": self.n_persist_errors.load(Relaxed),
                "last_apply_seconds": self.last_apply_ns.load(Relaxed) as f64 / 1e9,
            },
            "ports": self.port_stats().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "workers": workers.iter().enumerate().map(|(i, c)| json!({
                "worker": i, "rx": c.rx, "tx": c.tx, "local": c.local, "dropped": c.dropped(),
                "bursts": c.bursts, "busy_cycles": c.busy_cycles, "idle_cycles": c.idle_cycles,
            })).collect::<Vec<_>>(),
            // tx: forwarded packets; injected: the host stack's frames.
            "totals": {
                "rx": total.rx, "tx": total.tx, "local": total.local, "dropped": total.dropped(),
                "injected": total.stage[crate::dataplane::counters::EXCEPTION_COUNTERS + crate::dataplane::PuntClass::COUNT + 1],
            },
            "drops": total.drop_list().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "stages": STAGE_COUNTERS.iter().zip(total.stage).collect::<std::collections::BTreeMap<_, _>>(),
        })
    }

    /// `GET /v1/sessions`: sessions of every worker matching `filter`, at
    /// most `limit` from each. Workers scan between bursts, a slice at a
    /// time, so a listing never stalls forwarding; it waits up to 10 s.
    pub fn sessions(&self, filter: &SessionFilter, limit: usize) -> Result<Value, String> {
        let _one_at_a_time = self.listing.lock().unwrap_or_else(|e| e.into_inner());
        let workers: Vec<Arc<WorkerStats>> = self.workers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for w in &workers {
            while w.queries.answer.pop().is_some() {}
            let q =
                Box::new(SessionQuery { filter: filter.clone(), out: Vec::with_capacity(limit), matched: 0, live: 0 });
            if w.queries.request.push(q).is_err() {
                return Err("a session listing is already in progress".into());
            }
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut answers: Vec<Option<Box<SessionQuery>>> = workers.iter().map(|_| None).collect();
        while answers.iter().any(|a| a.is_none()) && Instant::now() < deadline {
            for (w, a) in workers.iter().zip(answers.iter_mut()) {
                if a.is_none() {
                    *a = w.queries.answer.pop();
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let ip = |v6: bool, a: u128| {
            if v6 { std::net::Ipv6Addr::from(a).to_string() } else { std::net::Ipv4Addr::from(a as u32).to_string() }
        };
        let (mut list, mut matched, mut live, mut answered) = (Vec::new(), 0, 0, 0);
        for a in answers.into_iter().flatten() {
            answered += 1;
            matched += a.matched;
            live += a.live;
            for v in &a.out {
                let side = |t: (u128, u16, u128, u16)| json!({"src": ip(v.v6, t.0), "sport": t.1, "dst": ip(v.v6, t.2), "dport": t.3});
                list.push(json!({
                    "worker": v.worker, "protocol": v.proto, "original": side(v.original),
                    "reply": side(v.reply), "state": v.state, "nat": v.nat, "expires_in": v.expires_in,
                }));
            }
        }
        if answered < workers.len() {
            // Take back what was not answered, so the next listing can start.
            for w in &workers {
                let _ = w.queries.request.pop();
            }
        }
        Ok(json!({
            "sessions": list, "matched": matched, "live": live,
            "workers": workers.len(), "workers_answered": answered,
        }))
    }

    /// `GET /metrics`, Prometheus text format 0.0.4.
    pub fn metrics(&self) -> String {
        let mut m = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(m, "# HELP astara_dp_{name} {help}\n# TYPE astara_dp_{name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(m, "astara_dp_{name}{labels} {v}");
            }
        };
        let ports = self.port_stats();
        let per_port = |f: fn(&PortStats) -> u64| -> Vec<(String, f64)> {
            ports.iter().map(|(n, s)| (format!("{{port=\"{}\"}}", escape(n)), f(s) as f64)).collect()
        };
        family("port_rx_packets_total", "counter", "Packets received per port.", per_port(|s| s.rx_packets));
        family("port_rx_bytes_total", "counter", "Bytes received per port.", per_port(|s| s.rx_bytes));
        family(
            "port_rx_dropped_total",
            "counter",
            "Packets a port backend lost on receive.",
            per_port(|s| s.rx_dropped),
        );
        family("port_tx_packets_total", "counter", "Packets transmitted per port.", per_port(|s| s.tx_packets));
        family("port_tx_bytes_total", "counter", "Bytes transmitted per port.", per_port(|s| s.tx_bytes));
        family(
            "port_tx_dropped_total",
            "counter",
            "Packets a port backend lost on transmit.",
            per_port(|s| s.tx_dropped),
        );
        let workers = self.worker_counters();
        let per_worker = |f: fn(&Counters) -> u64| -> Vec<(String, f64)> {
            workers.iter().enumerate().map(|(i, c)| (format!("{{worker=\"{i}\"}}"), f(c) as f64)).collect()
        };
        family("worker_rx_packets_total", "counter", "Packets received per worker.", per_worker(|c| c.rx));
        family("worker_tx_packets_total", "counter", "Packets transmitted per worker.", per_worker(|c| c.tx));
        family("worker_local_packets_total", "counter", "Packets for the appliance itself.", per_worker(|c| c.local));
        family("worker_busy_cycles_total", "counter", "Cycles spent on bursts.", per_worker(|c| c.busy_cycles));
        family(
            "worker_idle_cycles_total",
            "counter",
            "Cycles spent polling empty queues.",
            per_worker(|c| c.idle_cycles),
        );
        let stage_of = |name: &str| STAGE_COUNTERS.iter().position(|k| *k == name).unwrap_or(0);
        let (in_use, mappings) = (stage_of("conntrack: sessions in use"), stage_of("nat: port mappings in use"));
        let per_worker_stage = |k: usize| -> Vec<(String, f64)> {
            workers.iter().enumerate().map(|(i, c)| (format!("{{worker=\"{i}\"}}"), c.stage[k] as f64)).collect()
        };
        family("sessions_in_use", "gauge", "Sessions in the worker's table.", per_worker_stage(in_use));
        let caps: Vec<(String, f64)> = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("{{worker=\"{i}\"}}"), w.session_capacity.load(Relaxed) as f64))
            .collect();
        family("sessions_capacity", "gauge", "Session table capacity per worker.", caps);
        family("nat_port_mappings", "gauge", "Masquerade port mappings per worker.", per_worker_stage(mappings));
        let mut total = Counters::new(self.ports.len());
        for w in &workers {
            total.add(w);
        }
        let drops = crate::stage::DropReason::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", escape(r.name())), total.drops[*r as usize] as f64))
            .collect();
        family("drops_total", "counter", "Packets dropped, by reason.", drops);
        let stages = STAGE_COUNTERS
            .iter()
            .zip(total.stage)
            .map(|(k, v)| (format!("{{counter=\"{}\"}}", escape(k)), v as f64))
            .collect();
        family("stage_packets_total", "counter", "Per-stage packet counters.", stages);
        if let Some(h) = self.host.load_full() {
            let rows = h
                .list(&total.stage)
                .into_iter()
                .map(|(k, v)| (format!("{{counter=\"{}\"}}", escape(k)), v as f64))
                .collect();
            family(
                "host_stack_total",
                "counter",
                "What the host stack did (ARP and echo replies include those the workers sent).",
                rows,
            );
        }
        let lb = self.lb_status();
        let mut rows: [Vec<(String, f64)>; 4] = Default::default();
        for p in lb["pools"].as_array().into_iter().flatten() {
            for mm in p["members"].as_array().into_iter().flatten() {
                let labels = format!(
                    "{{pool=\"{}\",member=\"{}\",address=\"{}:{}\"}}",
                    escape(p["id"].as_str().unwrap_or_default()),
                    escape(mm["id"].as_str().unwrap_or_default()),
                    mm["address"].as_str().unwrap_or_default(),
                    mm["protocol_port"]
                );
                let up = mm["state"] == "active";
                rows[0].push((labels.clone(), if up { 1.0 } else { 0.0 }));
                for (k, f) in ["sessions", "sessions_created", "packets"].iter().enumerate() {
                    rows[k + 1].push((labels.clone(), mm[*f].as_u64().unwrap_or(0) as f64));
                }
            }
        }
        if !rows[0].is_empty() {
            let [up, sessions, created, packets] = rows;
            family("lb_member_up", "gauge", "1 when the member takes new flows (admin up, healthy).", up);
            family("lb_member_sessions", "gauge", "Sessions pinned to the member.", sessions);
            family("lb_member_sessions_created_total", "counter", "Sessions given to the member.", created);
            family("lb_member_packets_total", "counter", "Packets of the member's sessions.", packets);
        }
        family(
            "snapshot_generation",
            "gauge",
            "Generation of the configuration snapshot in force.",
            vec![(String::new(), self.generation.load(Relaxed) as f64)],
        );
        family(
            "config_apply_seconds",
            "gauge",
            "Time the last accepted push took, received to live.",
            vec![(String::new(), self.last_apply_ns.load(Relaxed) as f64 / 1e9)],
        );
        family(
            "config_pushes_total",
            "counter",
            "Configuration pushes by result.",
            vec![
                ("{result=\"applied\"}".into(), self.n_applied.load(Relaxed) as f64),
                ("{result=\"unchanged\"}".into(), self.n_unchanged.load(Relaxed) as f64),
                ("{result=\"rejected\"}".into(), self.n_rejected.load(Relaxed) as f64),
            ],
        );
        m
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes the document atomically: temp file, fsync, rename, fsync the
/// directory, so a crash leaves either the old or the new copy.
fn persist(path: &Path, cfg: &AstaraConfig) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(cfg).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ports_from_config;

    fn router() -> (Vec<u8>, Vec<PortSpec>) {
        let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/router.json")).unwrap();
        let cfg = AstaraConfig::from_json(&text).unwrap();
        (text, ports_from_config(&cfg))
    }

    #[test]
    fn apply_reject_repush_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let (text, ports) = router();
        let c = Control::new(ports.clone(), Vec::new(), CompileOptions::default(), Some(dir.path().into())).unwrap();
        assert!(c.current().is_none());
        assert_eq!(c.status(), json!({"v4": false, "v6": false}));
        c.apply_json(&text).unwrap();
        assert_eq!(c.snapshots().load().generation, 2);
        // Same document again: accepted, nothing recompiled.
        c.apply_json(&text).unwrap();
        assert_eq!(c.snapshots().load().generation, 2);
        // Bad documents change nothing.
        let e = c.apply_json(b"{not json").unwrap_err();
        assert_eq!(e.status, 422);
        let e = c.apply_json(br#"{"tenant_id": "t", "hostname": "h", "services": {"vpnaas": {}}}"#).unwrap_err();
        assert_eq!(e.status, 400);
        let bad = String::from_utf8(text.clone()).unwrap().replace("\"192.168.2.254\"]", "\"172.31.1.1\"]");
        assert_eq!(c.apply_json(bad.as_bytes()).unwrap_err().status, 422);
        assert_eq!(c.snapshots().load().generation, 2);
        assert_eq!(c.management_address(), Some("fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0".parse().unwrap()));
        let s = c.stats();
        assert_eq!((s["config"]["applied"].as_u64(), s["config"]["unchanged"].as_u64()), (Some(1), Some(1)));
        assert_eq!(s["config"]["rejected"], 3);
        assert!(c.metrics().contains("astara_dp_config_pushes_total{result=\"rejected\"} 3"));
        assert!(c.routes().iter().any(|r| r["destination"] == "10.30.0.0/16" && r["type"] == "ecmp"));
        assert_eq!(c.interface("ge1").unwrap()["addresses"], json!(["203.0.113.10/24", "2001:db8:ff::10/64"]));
        assert!(c.interface("ge9").is_none());
        // A new control restores the kept document.
        let c2 = Control::new(ports, Vec::new(), CompileOptions::default(), Some(dir.path().into())).unwrap();
        c2.restore().unwrap().unwrap();
        assert_eq!(c2.current().unwrap(), c.current().unwrap());
        assert!(!dir.path().join("config.json.tmp").exists());
    }
}
