//! `astara-dp replay`: the appliance as a function from captures to
//! captures. Input captures are merged by timestamp (ties in `--in` order,
//! then capture order) and each packet goes alone through the same pipeline
//! the workers run; every egress interface gets a capture in the output
//! directory, packets for the appliance itself go to `punt.pcap`, and
//! `summary.json` counts everything by reason. Deterministic by design.

use super::load_config;
use crate::control::{CompileOptions, StaticNeighbor, compile, ports_from_config};
use crate::dataplane::{Counters, Pipeline, STAGE_COUNTERS, dispatch};
use crate::packet::{Burst, MAX_FRAME, PacketBuf, Pkt, Pool, Verdict};
use crate::port::pcap::{CaptureWriter, read_capture};
use crate::stage::{ConntrackConfig, DropReason, Filtering};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub config: PathBuf,
    /// (interface name, capture file), in priority order for equal timestamps.
    pub inputs: Vec<(String, PathBuf)>,
    pub out_dir: PathBuf,
    pub neighbors: Vec<StaticNeighbor>,
    /// Session table capacity.
    pub sessions: usize,
    pub filtering: Filtering,
    /// Documents taking effect at capture times (seconds since the epoch),
    /// in order; the ports stay those of `config`.
    pub changes: Vec<(f64, PathBuf)>,
    pub lb_snat: crate::stage::lb::LbSnat,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            config: PathBuf::new(),
            inputs: Vec::new(),
            out_dir: PathBuf::new(),
            neighbors: Vec::new(),
            sessions: 65536,
            filtering: Filtering::default(),
            changes: Vec::new(),
            lb_snat: Default::default(),
        }
    }
}

/// Parses `SECONDS=FILE` (a document change for replay).
pub fn parse_change(s: &str) -> Result<(f64, PathBuf), String> {
    let (t, f) = s.split_once('=').ok_or_else(|| format!("'{s}' is not SECONDS=FILE.json"))?;
    let t: f64 = t.parse().map_err(|_| format!("'{t}' is not a time in seconds"))?;
    if !t.is_finite() || t < 0.0 || f.is_empty() {
        return Err(format!("'{s}' is not SECONDS=FILE.json"));
    }
    Ok((t, PathBuf::from(f)))
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct InterfaceCounts {
    pub rx: u64,
    pub tx: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    pub packets: u64,
    pub forwarded: u64,
    pub local: u64,
    pub dropped: u64,
    pub drops: BTreeMap<String, u64>,
    pub interfaces: BTreeMap<String, InterfaceCounts>,
    /// Stage counters that are not zero (sessions, translations, ...).
    pub counters: BTreeMap<String, u64>,
    pub warnings: Vec<String>,
}

/// Parses `IFNAME=FILE`.
pub fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    let (i, f) = s.split_once('=').ok_or_else(|| format!("'{s}' is not IFNAME=FILE.pcap"))?;
    if i.is_empty() || f.is_empty() {
        return Err(format!("'{s}' is not IFNAME=FILE.pcap"));
    }
    Ok((i.to_string(), PathBuf::from(f)))
}

pub fn run(o: &ReplayOptions) -> Result<ReplaySummary, String> {
    let cfg = load_config(&o.config)?;
    let ports = ports_from_config(&cfg);
    let lb = crate::control::lb::LbOptions { snat: o.lb_snat, ..Default::default() };
    let mut opts = CompileOptions { neighbors: o.neighbors.clone(), filtering: o.filtering, lb, ..Default::default() };
    let compiled = compile(&cfg, &ports, &opts).map_err(|e| format!("{}: {e}", o.config.display()))?;
    let mut snap = compiled.snapshot;
    let mut warnings = compiled.warnings;
    // Later documents, compiled up front (a bad one fails the run).
    let mut changes = Vec::new();
    for (t, f) in &o.changes {
        opts.generation += 1;
        let c = compile(&load_config(f)?, &ports, &opts).map_err(|e| format!("{}: {e}", f.display()))?;
        warnings.extend(c.warnings);
        changes.push((std::time::Duration::from_secs_f64(*t), c.snapshot));
    }
    changes.sort_by_key(|c| c.0);
    let mut changes = changes.into_iter().peekable();

    // Every packet, tagged with (timestamp, input rank, position) for a stable merge.
    let mut packets = Vec::new();
    for (rank, (ifname, file)) in o.inputs.iter().enumerate() {
        let port = ports
            .iter()
            .position(|p| &p.name == ifname)
            .ok_or_else(|| format!("--in {ifname}: no such interface in {}", o.config.display()))?;
        for (seq, f) in read_capture(file).map_err(|e| e.to_string())?.into_iter().enumerate() {
            packets.push((f.ts, rank, seq, port as u16, f.data));
        }
    }
    packets.sort_by_key(|p| (p.0, p.1, p.2));

    std::fs::create_dir_all(&o.out_dir).map_err(|e| format!("{}: {e}", o.out_dir.display()))?;
    let mut writers = Vec::new();
    for p in &ports {
        writers.push(CaptureWriter::create(&o.out_dir.join(format!("{}.pcap", p.name))).map_err(|e| e.to_string())?);
    }
    let mut punt = CaptureWriter::create(&o.out_dir.join("punt.pcap")).map_err(|e| e.to_string())?;

    // Fixed keys: the same captures give the same translated ports.
    let ct = ConntrackConfig { capacity: o.sessions, seed: Some(0x00a5_7a2a), ..Default::default() };
    let mut pipeline = Pipeline::new(ct);
    let mut pool = Pool::new(4);
    let mut burst: Burst = Burst::new(1);
    let mut staging: Vec<Vec<Pkt>> = (0..ports.len()).map(|_| Vec::with_capacity(1)).collect();
    let mut c = Counters::new(ports.len());
    for (ts, _, _, port, data) in packets {
        while let Some((_, next)) = changes.next_if(|(at, _)| *at <= ts) {
            snap = next;
        }
        c.rx += 1;
        c.port_rx[port as usize] += 1;
        if data.len() > MAX_FRAME {
            c.drop(DropReason::Oversize, 1);
            continue;
        }
        let mut pkt = pool.alloc().unwrap_or_default();
        pkt.fill(&data);
        let _ = burst.push(pkt, port);
        // Session time follows the capture (whole seconds).
        pipeline.set_now(ts.as_secs().min(u32::MAX as u64) as u32);
        pipeline.process(&snap, &mut burst);
        if burst.meta(0).verdict == Verdict::Local {
            punt.write(ts, burst.pkt(0).data()).map_err(|e| e.to_string())?;
        }
        dispatch(&mut burst, &mut staging, &mut pool, &mut c);
        for (i, st) in staging.iter_mut().enumerate() {
            for p in st.drain(..) {
                writers[i].write(ts, p.data()).map_err(|e| e.to_string())?;
                c.tx += 1;
                c.port_tx[i] += 1;
                p.release(&mut pool);
            }
        }
    }
    for w in writers {
        w.finish().map_err(|e| e.to_string())?;
    }
    punt.finish().map_err(|e| e.to_string())?;

    let summary = ReplaySummary {
        packets: c.rx,
        forwarded: c.tx,
        local: c.local,
        dropped: c.dropped(),
        drops: c.drop_list().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        interfaces: ports
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), InterfaceCounts { rx: c.port_rx[i], tx: c.port_tx[i] }))
            .collect(),
        counters: STAGE_COUNTERS
            .iter()
            .zip(pipeline.stage_counters())
            .filter(|(_, v)| *v != 0)
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        warnings,
    };
    let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    std::fs::write(o.out_dir.join("summary.json"), text + "\n").map_err(|e| format!("{}: {e}", o.out_dir.display()))?;
    Ok(summary)
}

/// Writes `frames` as a capture stamped 1 µs apart (inputs for replay).
pub fn write_capture(path: &Path, frames: &[Vec<u8>]) -> Result<(), String> {
    let mut w = CaptureWriter::create(path).map_err(|e| e.to_string())?;
    for (i, f) in frames.iter().enumerate() {
        w.write(std::time::Duration::from_micros(1_000_000 + i as u64), f).map_err(|e| e.to_string())?;
    }
    w.finish().map_err(|e| e.to_string())
}
