//! `astara-dp run`: the appliance. Builds the ports of the runtime file,
//! restores (or loads) the document, starts the pinned workers, and serves
//! the orchestrator's API on the control thread until SIGINT or SIGTERM.

use crate::control::CompileOptions;
use crate::control::api::router;
use crate::control::host::HostStack;
use crate::control::runtime::{Backend, Runtime};
use crate::control::state::Control;
use crate::dataplane::{Exception, PuntLimits};
use crate::dataplane::{Worker, WorkerConfig, WorkerStats};
use crate::packet::{Mac, Pkt, WorkerBuf, rss_hash};
#[cfg(feature = "dpdk")]
use crate::port::dpdk;
use crate::port::null::NullTx;
use crate::port::pcap::{Frames, PcapTx, ReplayRx, read_capture};
use crate::port::{Port, PortSpec, QueueCounters, RxQueue, SoftPort, TxQueue, af_packet};
use crate::stage::ConntrackConfig;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The management prefix Astara uses by default (ASTARA.md).
const DEFAULT_MGMT_PREFIX: u128 = 0xfdca_3ba5_a17a_acda << 64;

/// The SLAAC address of `mac` on the default management prefix (RFC 4291
/// modified EUI-64): what the appliance holds before any document arrives.
pub fn default_management_address(mac: Mac) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(DEFAULT_MGMT_PREFIX | mac.eui64() as u128))
}

type WorkerQueues<P = Pkt> = (Vec<(u16, Box<dyn RxQueue<P>>)>, Vec<Option<Box<dyn TxQueue<P>>>>);

/// `out.pcap` for worker 0, `out-w1.pcap` for worker 1, ...
fn per_worker_path(p: &Path, w: usize) -> PathBuf {
    if w == 0 {
        return p.to_path_buf();
    }
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = p.extension().and_then(|s| s.to_str()).unwrap_or("pcap");
    p.with_file_name(format!("{stem}-w{w}.{ext}"))
}

/// Every worker's queues, and one port object per port.
struct BuiltPorts<P: WorkerBuf = Pkt> {
    queues: Vec<WorkerQueues<P>>,
    objs: Vec<Arc<dyn Port>>,
    /// The ports' specs, with what the backends read from the system.
    specs: Vec<PortSpec>,
}

fn build_ports(rt: &Runtime, workers: usize) -> Result<BuiltPorts, String> {
    let mut queues: Vec<WorkerQueues> = (0..workers).map(|_| (Vec::new(), Vec::new())).collect();
    let mut objs: Vec<Arc<dyn Port>> = Vec::new();
    for (pi, (pc, spec)) in rt.ports.iter().zip(rt.port_specs()).enumerate() {
        let (mut rxc, mut txc): (Vec<Arc<QueueCounters>>, Vec<Arc<QueueCounters>>) = (Vec::new(), Vec::new());
        let (rx, looping, tx) = match &pc.backend {
            Backend::Null => (None, false, None),
            Backend::Pcap { rx, looping, tx } => (rx.as_ref(), *looping, tx.as_ref()),
            Backend::AfPacket { interface } => {
                let (port, rxs, txs) = af_packet::open(interface, spec, workers, 0x4144 + pi as u16)
                    .map_err(|e| format!("ports[{pi}] ({}): {e}", pc.name))?;
                for (w, (r, t)) in rxs.into_iter().zip(txs).enumerate() {
                    queues[w].0.push((pi as u16, Box::new(r)));
                    queues[w].1.push(Some(Box::new(t)));
                }
                log::info!("{}: af_packet on {interface}, mac {}, mtu {}", pc.name, port.spec().mac, port.spec().mtu);
                objs.push(Arc::new(port));
                continue;
            }
            Backend::Kernel { interface } => {
                kernel_port(pi, &pc.name, interface, spec, &mut queues, &mut objs)?;
                continue;
            }
            Backend::Dpdk { .. } => return Err(format!("ports[{pi}] ({}): a dpdk port among others", pc.name)),
        };
        if let Some(f) = rx {
            let frames = read_capture(&rt.path(f)).map_err(|e| format!("ports[{pi}].rx: {e}"))?;
            // Software RSS: each worker replays the flows that hash to it.
            let mut parts: Vec<Vec<&[u8]>> = vec![Vec::new(); workers];
            for f in &frames {
                parts[rss_hash(&f.data) as usize % workers].push(&f.data);
            }
            for (w, part) in parts.into_iter().enumerate() {
                let (packed, too_big) = Frames::pack(part);
                if too_big > 0 {
                    log::warn!("{}: {too_big} frames larger than a buffer are skipped", pc.name);
                }
                let q = ReplayRx::new(packed, looping);
                rxc.push(q.counters().clone());
                queues[w].0.push((pi as u16, Box::new(q)));
            }
        }
        for (w, wq) in queues.iter_mut().enumerate() {
            let q: Box<dyn TxQueue> = match tx {
                Some(f) => {
                    let path = per_worker_path(&rt.path(f), w);
                    Box::new(PcapTx::create(&path).map_err(|e| format!("ports[{pi}].tx: {e}"))?)
                }
                None => Box::new(NullTx::default()),
            };
            txc.push(q.counters().clone());
            wq.1.push(Some(q));
        }
        objs.push(Arc::new(SoftPort::new(spec, rxc, txc)));
    }
    let specs = objs.iter().map(|p| p.spec().clone()).collect();
    Ok(BuiltPorts { queues, objs, specs })
}

/// A port the kernel keeps: reported, no queues.
fn kernel_port<P: WorkerBuf>(
    pi: usize,
    name: &str,
    interface: &str,
    spec: PortSpec,
    queues: &mut [WorkerQueues<P>],
    objs: &mut Vec<Arc<dyn Port>>,
) -> Result<(), String> {
    let port = af_packet::KernelPort::open(interface, spec).map_err(|e| format!("ports[{pi}] ({name}): {e}"))?;
    for wq in queues.iter_mut() {
        wq.1.push(None);
    }
    log::info!("{name}: kernel interface {interface}, mac {}", port.spec().mac);
    objs.push(Arc::new(port));
    Ok(())
}

/// The ports of an appliance on DPDK: DPDK ethdevs, plus kernel-kept and
/// null ports.
#[cfg(feature = "dpdk")]
fn build_dpdk_ports(rt: &Runtime, workers: usize) -> Result<BuiltPorts<dpdk::Mbuf>, String> {
    let mut queues: Vec<WorkerQueues<dpdk::Mbuf>> = (0..workers).map(|_| (Vec::new(), Vec::new())).collect();
    let mut objs: Vec<Arc<dyn Port>> = Vec::new();
    for (pi, (pc, spec)) in rt.ports.iter().zip(rt.port_specs()).enumerate() {
        match &pc.backend {
            Backend::Dpdk { device } => {
                let (port, rxs, txs) =
                    dpdk::open(device, spec, workers).map_err(|e| format!("ports[{pi}] ({}): {e}", pc.name))?;
                for (w, (r, t)) in rxs.into_iter().zip(txs).enumerate() {
                    if let Some(r) = r {
                        queues[w].0.push((pi as u16, Box::new(r)));
                    }
                    queues[w].1.push(Some(Box::new(t)));
                }
                objs.push(Arc::new(port));
            }
            Backend::Kernel { interface } => kernel_port(pi, &pc.name, interface, spec, &mut queues, &mut objs)?,
            Backend::Null => {
                let mut txc = Vec::new();
                for wq in queues.iter_mut() {
                    let q = NullTx::default();
                    txc.push(TxQueue::<dpdk::Mbuf>::counters(&q).clone());
                    wq.1.push(Some(Box::new(q)));
                }
                objs.push(Arc::new(SoftPort::new(spec, Vec::new(), txc)));
            }
            _ => return Err(format!("ports[{pi}] ({}): only dpdk, kernel and null ports go with DPDK", pc.name)),
        }
    }
    let specs = objs.iter().map(|p| p.spec().clone()).collect();
    Ok(BuiltPorts { queues, objs, specs })
}

#[cfg(feature = "dpdk")]
fn dpdk_env(rt: &Runtime) -> dpdk::DpdkEnv {
    let d = &rt.dpdk;
    dpdk::DpdkEnv {
        eal_args: d.eal_args.clone(),
        mbufs: d.mbufs,
        mbuf_cache: d.mbuf_cache,
        rx_desc: d.rx_desc,
        tx_desc: d.tx_desc,
        rx_checksum_offload: d.rx_checksum_offload,
    }
}

pub fn run(runtime: &Path, config: Option<&Path>) -> Result<(), String> {
    let rt = Runtime::load(runtime)?;
    // (`port_specs` takes the same bound; said once, here.)
    for p in &rt.ports {
        if let Some(mtu) = p.mtu {
            crate::packet::port_mtu(&p.name, mtu, "the runtime file's");
        }
    }
    let n = rt.workers.cores.len().max(1);
    if rt.ports.iter().any(|p| matches!(p.backend, Backend::Dpdk { .. })) {
        #[cfg(feature = "dpdk")]
        {
            dpdk::init(&dpdk_env(&rt))?;
            let r = build_dpdk_ports(&rt, n).and_then(|ports| run_with(&rt, config, ports));
            // Every worker has stopped and every mbuf is back: release the
            // devices and the EAL's memory.
            dpdk::shutdown();
            return r;
        }
        #[cfg(not(feature = "dpdk"))]
        return Err(
            "ports with backend = \"dpdk\" need a build with DPDK: cargo build --release --features dpdk".into()
        );
    }
    let ports = build_ports(&rt, n)?;
    run_with(&rt, config, ports)
}

/// The appliance over built ports, until SIGINT or SIGTERM.
fn run_with<P: WorkerBuf + Send>(rt: &Runtime, config: Option<&Path>, ports: BuiltPorts<P>) -> Result<(), String> {
    let cores = rt.workers.cores.clone();
    let n = cores.len().max(1);
    let BuiltPorts { queues, objs: port_objs, specs } = ports;
    let base = CompileOptions {
        tbl8_groups: rt.tables.tbl8_groups,
        lpm6_groups: rt.tables.lpm6_groups,
        neighbors: rt.static_neighbors(),
        generation: 1,
        filtering: rt.conntrack.filtering()?,
        lb: rt.lb.options()?,
    };
    let conntrack = ConntrackConfig {
        capacity: rt.conntrack.sessions_per_worker,
        timeouts: rt.conntrack.timeouts()?,
        worker: 0,
        workers: n,
        seed: None,
    };
    let control = Control::new(specs, port_objs, base, Some(rt.path(&rt.state_dir)))?;
    match config {
        Some(f) => {
            let text = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            control.apply_json(&text).map_err(|e| format!("{}: {}", f.display(), e.message))?;
            log::info!("applied {}", f.display());
        }
        None => match control.restore() {
            Some(Ok(_)) => log::info!("restored the last accepted configuration"),
            Some(Err(e)) => log::warn!("kept configuration not applied: {e}"),
            None => log::info!("no configuration yet: waiting for the orchestrator"),
        },
    }

    let stop = Arc::new(AtomicBool::new(false));
    // Several workers: each flow is processed by the worker that owns it.
    let handoff = (n > 1).then(|| Arc::new(crate::dataplane::Handoff::<P>::new(n, 1024)));
    // The exception path: every worker punts to the host stack and sends
    // what it injects.
    let exception = Arc::new(Exception::new(n, 1024, PuntLimits::default()));
    let mut handles = Vec::new();
    let mut stats = Vec::new();
    for (w, (rx, tx)) in queues.into_iter().enumerate() {
        let st = Arc::new(WorkerStats::new(rt.ports.len()));
        let worker = Worker {
            cfg: WorkerConfig {
                id: w,
                core: cores.get(w).copied(),
                burst: rt.burst,
                pool_size: rt.pool_size,
                conntrack,
            },
            rx,
            tx,
            snapshots: control.snapshots(),
            stats: st.clone(),
            stop: stop.clone(),
            handoff: handoff.clone(),
            exception: Some(exception.clone()),
        };
        handles.push(worker.spawn().map_err(|e| format!("cannot start worker {w}: {e}"))?);
        stats.push(st);
    }
    control.set_workers(stats);
    // The host stack and the API threads start below: not on a worker's CPU.
    if crate::dataplane::keep_off_cores(&cores) {
        log::info!("control threads kept off the workers' cores {cores:?}");
    }
    let host = HostStack::new(exception.clone(), control.clone());
    control.set_host_stats(host.stats());
    let host = host.spawn(stop.clone()).map_err(|e| format!("cannot start the host stack: {e}"))?;

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the control runtime: {e}"))?;
    let served = tokio.block_on(serve(control.clone(), rt));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let _ = host.join();
    served
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    log::info!("stopping");
}

async fn serve(control: Arc<Control>, rt: &Runtime) -> Result<(), String> {
    let mut stop = Box::pin(shutdown());
    let listener = loop {
        let ip = match rt.api.listen.as_str() {
            "management" => control.management_address().unwrap_or_else(|| {
                let mgmt = control.ports().iter().find(|p| p.name == "ge0").or(control.ports().first());
                default_management_address(mgmt.map_or(Mac::ZERO, |p| p.mac))
            }),
            a => a.parse().map_err(|_| format!("api.listen: bad address {a}"))?,
        };
        let addr = SocketAddr::new(ip, rt.api.port);
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            // The management address may not be configured yet: keep trying.
            Err(e) => log::warn!("cannot listen on {addr}: {e}; retrying in 2 s"),
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("astara-dp: API listening on http://{}", fmt_addr(addr));
    axum::serve(listener, router(control)).with_graceful_shutdown(stop).await.map_err(|e| format!("API server: {e}"))
}

fn fmt_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
        SocketAddr::V4(v) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaac_address_of_the_management_port() {
        // configs/router.json's ge0: fa:16:3e:e0:e1:b0 -> ...:f816:3eff:fee0:e1b0
        let mac: Mac = "fa:16:3e:e0:e1:b0".parse().unwrap();
        assert_eq!(
            default_management_address(mac),
            "fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(per_worker_path(Path::new("/x/out.pcap"), 2), Path::new("/x/out-w2.pcap"));
    }
}
