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
            return Err("usage: astara-dp ctl [--api URL] status | interfaces | routes | stats | metrics | config get | config put FILE".into());
        }
    }
    Ok(())
}
