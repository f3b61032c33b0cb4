//! `astara-dp ctl`: the API for a person at the console.

use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(3)).timeout(Duration::from_secs(90)).build()
}

/// The whole body (route listings of large tables exceed ureq's 10 MB
/// `into_string` limit, so it is read as a stream).
fn read_all(resp: ureq::Response) -> std::io::Result<String> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut resp.into_reader(), &mut s)?;
    Ok(s)
}

fn body(r: Result<ureq::Response, ureq::Error>, url: &str) -> Result<String, String> {
    match r {
        Ok(resp) => read_all(resp).map_err(|e| format!("{url}: {e}")),
        Err(ureq::Error::Status(code, resp)) => {
            Err(format!("{url}: HTTP {code}: {}", read_all(resp).unwrap_or_default().trim_end()))
        }
        Err(e) => Err(format!("{url}: {e}")),
    }
}

fn get(api: &str, path: &str) -> Result<String, String> {
    let url = format!("{}{path}", api.trim_end_matches('/'));
    body(agent().get(&url).call(), &url)
}

fn get_json(api: &str, path: &str) -> Result<Value, String> {
    serde_json::from_str(&get(api, path)?).map_err(|e| format!("{path}: not JSON: {e}"))
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Runs one `ctl` command; `args` are the words after `ctl`.
pub fn run(api: &str, args: &[String]) -> Result<(), String> {
    let words: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    match words.as_slice() {
        ["status"] => {
            let s = get_json(api, "/v1/status/")?;
            let st = get_json(api, "/v1/stats")?;
            println!("v4 upstream reachable: {}", s["v4"]);
            println!("v6 upstream reachable: {}", s["v6"]);
            println!("snapshot generation:   {}", st["generation"]);
            println!(
                "config pushes:         {} applied, {} unchanged, {} rejected (last apply {:.3} ms)",
                st["config"]["applied"],
                st["config"]["unchanged"],
                st["config"]["rejected"],
                st["config"]["last_apply_seconds"].as_f64().unwrap_or(0.0) * 1e3
            );
            let t = &st["totals"];
            println!(
                "packets:               {} rx, {} tx, {} local, {} dropped",
                t["rx"], t["tx"], t["local"], t["dropped"]
            );
        }
        ["interfaces"] => {
            let v = get_json(api, "/v1/system/interfaces")?;
            println!("{:<8}{:<6}{:<20}{:<7}addresses", "name", "state", "lladdr", "mtu");
            for i in v["interfaces"].as_array().into_iter().flatten() {
                let addrs: Vec<&str> =
                    i["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
                println!(
                    "{:<8}{:<6}{:<20}{:<7}{}",
                    i["ifname"].as_str().unwrap_or(""),
                    i["state"].as_str().unwrap_or(""),
                    i["lladdr"].as_str().unwrap_or(""),
                    i["mtu"],
                    addrs.join(" ")
                );
            }
        }
        ["routes"] => {
            let v = get_json(api, "/v1/routes")?;
            println!("{:<44}{:<11}{:<10}via", "destination", "type", "interface");
            for r in v["routes"].as_array().into_iter().flatten() {
                let via: Vec<&str> = r["via"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
                println!(
                    "{:<44}{:<11}{:<10}{}",
                    r["destination"].as_str().unwrap_or(""),
                    r["type"].as_str().unwrap_or(""),
                    r["interface"].as_str().unwrap_or(""),
                    via.join(", ")
                );
            }
        }
        ["sessions", opts @ ..] => sessions(api, opts)?,
        ["lb"] => lb(api)?,
        ["stats"] => println!("{}", pretty(&get_json(api, "/v1/stats")?)),
        ["metrics"] => print!("{}", get(api, "/metrics")?),
        ["config", "get"] => println!("{}", pretty(&get_json(api, "/v1/system/config")?)),
        ["config", "put", file] => {
            let text = std::fs::read(Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
            let url = format!("{}/v1/system/config", api.trim_end_matches('/'));
            let r = agent().put(&url).set("Content-Type", "application/json").send_bytes(&text);
            body(r, &url)?;
            println!("applied {file}");
        }
        _ => {
            return Err("usage: astara-dp ctl [--api URL] status | interfaces | routes | sessions [--proto P] [--addr IP] [--port N] [--limit N] | lb | stats | metrics | config get | config put FILE".into());
        }
    }
    Ok(())
}

/// `ctl sessions`: the listing as a table, filters passed to the API.
fn sessions(api: &str, opts: &[&str]) -> Result<(), String> {
    let mut query = Vec::new();
    let mut it = opts.iter();
    while let Some(&flag) = it.next() {
        let key = match flag {
            "--proto" => "proto",
            "--addr" => "addr",
            "--port" => "port",
            "--limit" => "limit",
            f => return Err(format!("sessions: unknown option {f}")),
        };
        let v = it.next().ok_or_else(|| format!("sessions: {flag} needs a value"))?;
        if !v.chars().all(|c| c.is_ascii_alphanumeric() || ".:-".contains(c)) {
            return Err(format!("sessions: bad value for {flag}: {v}"));
        }
        query.push(format!("{key}={v}"));
    }
    let path = if query.is_empty() { "/v1/sessions".to_string() } else { format!("/v1/sessions?{}", query.join("&")) };
    let v = get_json(api, &path)?;
    let side = |s: &Value| {
        format!(
            "{}:{} > {}:{}",
            s["src"].as_str().unwrap_or(""),
            s["sport"],
            s["dst"].as_str().unwrap_or(""),
            s["dport"]
        )
    };
    println!("{:<7}{:<6}{:<13}{:<16}{:<48}{:<48}expires", "worker", "proto", "state", "nat", "original", "reply");
    for s in v["sessions"].as_array().into_iter().flatten() {
        println!(
            "{:<7}{:<6}{:<13}{:<16}{:<48}{:<48}{}s",
            s["worker"],
            s["protocol"],
            s["state"].as_str().unwrap_or(""),
            s["nat"].as_str().unwrap_or(""),
            side(&s["original"]),
            side(&s["reply"]),
            s["expires_in"]
        );
    }
    println!(
        "{} listed, {} matched, {} live sessions; {} of {} workers answered",
        v["sessions"].as_array().map_or(0, |a| a.len()),
        v["matched"],
        v["live"],
        v["workers_answered"],
        v["workers"]
    );
    Ok(())
}

/// `ctl lb`: listeners, then each pool's members with state, health,
/// sessions and packets.
fn lb(api: &str) -> Result<(), String> {
    let v = get_json(api, "/v1/loadbalancer/status")?;
    let listeners = v["listeners"].as_array().cloned().unwrap_or_default();
    if listeners.is_empty() {
        println!("no load balancer configured");
        return Ok(());
    }
    println!(
        "source translation: {}; drain timeout {} s",
        v["source_translation"].as_str().unwrap_or(""),
        v["drain_timeout"]
    );
    println!("{:<40}{:<8}{:<24}pool", "listener", "proto", "vip");
    for l in &listeners {
        println!(
            "{:<40}{:<8}{:<24}{}",
            l["id"].as_str().unwrap_or(""),
            l["protocol"].as_str().unwrap_or(""),
            format!("{}:{}", l["vip"].as_str().unwrap_or(""), l["protocol_port"]),
            l["pool"].as_str().unwrap_or("-")
        );
    }
    for p in v["pools"].as_array().into_iter().flatten() {
        let hm = &p["healthmonitor"];
        let check = if hm.is_null() {
            "no health monitor".to_string()
        } else {
            format!(
                "{} every {} s, timeout {} s, down after {}",
                hm["kind"].as_str().unwrap_or(""),
                hm["delay"],
                hm["timeout"],
                hm["max_retries"]
            )
        };
        println!("\npool {} ({}; {check})", p["id"].as_str().unwrap_or(""), p["lb_algorithm"].as_str().unwrap_or(""));
        println!(
            "{:<40}{:<24}{:<7}{:<12}{:<28}{:>9}{:>10}{:>12}",
            "member", "address", "weight", "state", "health", "sessions", "created", "packets"
        );
        for m in p["members"].as_array().into_iter().flatten() {
            let h = &m["health"];
            let health = if h.is_null() {
                "-".to_string()
            } else {
                format!(
                    "{} ({})",
                    if h["up"].as_bool().unwrap_or(false) { "up" } else { "down" },
                    h["last_result"].as_str().unwrap_or("")
                )
            };
            println!(
                "{:<40}{:<24}{:<7}{:<12}{:<28}{:>9}{:>10}{:>12}",
                m["id"].as_str().unwrap_or(""),
                format!("{}:{}", m["address"].as_str().unwrap_or(""), m["protocol_port"]),
                m["weight"],
                m["state"].as_str().unwrap_or(""),
                health,
                m["sessions"],
                m["sessions_created"],
                m["packets"]
            );
        }
    }
    Ok(())
}
