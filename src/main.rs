//! The `astara-dp` command line.

use astara_dp::app::{self, bench, replay};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "astara-dp", version, about = "Userspace fast-path data plane for OpenStack Astara appliances")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole pipeline on in-memory replay ports and report Mpps,
    /// ns and cycles per packet, stage counters and drops.
    Bench {
        /// Scenario file (pktgen-scenarios/*.toml).
        scenario: PathBuf,
        /// Worker threads (each pinned to its own core when possible).
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// How long to run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Packets per burst (1..=256).
        #[arg(long, default_value_t = astara_dp::packet::DEFAULT_BURST)]
        burst: usize,
        /// Also write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
        /// Push the configuration again every SECS seconds during the run
        /// (alternating with a variant, so each push recompiles).
        #[arg(long, value_name = "SECS")]
        push_every: Option<f64>,
        /// Measure only after this many seconds (sessions set up, caches
        /// warm); the run lasts warm-up + seconds.
        #[arg(long, default_value_t = 0.0, value_name = "SECS")]
        warmup: f64,
        /// Spread frames over workers by flow owner instead of by the
        /// symmetric RSS hash (no cross-worker handoff: the reference).
        #[arg(long)]
        steer_by_owner: bool,
        /// Attach the host stack (punt/inject rings, ARP, ICMP) as `run`
        /// does; with a scenario's `arp_every` it answers those requests.
        #[arg(long)]
        host_stack: bool,
        /// Replay the first pass over the pattern in a scrambled order, so
        /// that later passes meet the sessions in no particular order, not
        /// in the order they were created (as a router's flows arrive).
        #[arg(long)]
        scramble: bool,
    },
    /// Write a scenario's traffic to a pcap file.
    Gen {
        scenario: PathBuf,
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
        /// Number of packets (the pattern repeats); default one pattern.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Run the appliance: ports from the runtime file, the orchestrator's API,
    /// the workers. Stops on SIGINT or SIGTERM.
    Run {
        #[arg(long)]
        runtime: PathBuf,
        /// Apply this Astara document at start (else the last one kept).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Talk to a running appliance: status | interfaces | routes | stats |
    /// metrics | config get | config put FILE.
    Ctl {
        #[arg(long, default_value = "http://127.0.0.1:5000")]
        api: String,
        /// status | interfaces | routes | sessions [--proto P] [--addr IP]
        /// [--port N] [--limit N] | stats | metrics | config get | config put FILE
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Run captures through the appliance, one packet at a time, and write
    /// one capture per egress interface plus summary.json.
    Replay {
        /// Astara configuration document (JSON).
        #[arg(long)]
        config: PathBuf,
        /// IFNAME=FILE.pcap, one per input (pcap or pcapng).
        #[arg(long = "in", required = true, value_parser = replay::parse_input)]
        inputs: Vec<(String, PathBuf)>,
        #[arg(long)]
        out_dir: PathBuf,
        /// Pin a neighbour: PORT:IP=MAC (a gateway with no allocation).
        #[arg(long = "neighbor", value_parser = app::parse_neighbor)]
        neighbors: Vec<astara_dp::control::StaticNeighbor>,
        /// Session table size.
        #[arg(long, default_value_t = 65536)]
        sessions: usize,
        /// RFC 4787 filtering: address-and-port-dependent or endpoint-independent.
        #[arg(long, default_value = "address-and-port-dependent", value_parser = str::parse::<astara_dp::stage::Filtering>)]
        filtering: astara_dp::stage::Filtering,
        /// A new document taking effect at a capture time: SECONDS=FILE.json
        /// (seconds since the epoch, as the capture's timestamps); repeatable.
        #[arg(long = "config-at", value_parser = replay::parse_change)]
        changes: Vec<(f64, PathBuf)>,
        /// Load balancer source translation: always or never.
        #[arg(long, default_value = "always", value_parser = str::parse::<astara_dp::stage::lb::LbSnat>)]
        lb_snat: astara_dp::stage::lb::LbSnat,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The appliance logs at its runtime file's level; tools only warn.
    let level = match &cli.cmd {
        Cmd::Run { runtime, .. } => {
            astara_dp::control::runtime::Runtime::load(runtime).map_or("info".into(), |r| r.log_level)
        }
        _ => "warn".to_string(),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("astara-dp: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.cmd {
        Cmd::Bench {
            scenario,
            cores,
            seconds,
            burst,
            json,
            quiet,
            push_every,
            warmup,
            steer_by_owner,
            host_stack,
            scramble,
        } => {
            let o = bench::BenchOptions {
                cores,
                seconds,
                burst,
                json,
                progress: !quiet,
                push_every,
                warmup,
                steer_by_owner,
                host_stack,
                scramble,
                ..Default::default()
            };
            let r = bench::run(&scenario, &o)?;
            Ok(if r.check_passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Gen { scenario, out, count } => {
            let p = app::prepare(&scenario)?;
            let n = count.unwrap_or(p.traffic.frames.len());
            let frames: Vec<Vec<u8>> = p.traffic.frames.iter().cycle().take(n).cloned().collect();
            replay::write_capture(&out, &frames)?;
            eprintln!("wrote {} packets to {}", frames.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { runtime, config } => {
            app::run::run(&runtime, config.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ctl { api, command } => {
            app::ctl::run(&api, &command)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay { config, inputs, out_dir, neighbors, sessions, filtering, changes, lb_snat } => {
            let s = replay::run(&replay::ReplayOptions {
                config,
                inputs,
                out_dir: out_dir.clone(),
                neighbors,
                sessions,
                filtering,
                changes,
                lb_snat,
            })?;
            for w in &s.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!(
                "{} packets: {} forwarded, {} local, {} dropped; captures and summary.json in {}",
                s.packets,
                s.forwarded,
                s.local,
                s.dropped,
                out_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
