//! The metadata proxy: instances reach `http://169.254.169.254/` through
//! the router, which terminates those TCP connections (the data path punts
//! them, `Punt::Metadata`) on a `smoltcp` stack and forwards each HTTP
//! request to the orchestrator's metadata service,
//! `[orchestrator.address]:orchestrator.metadata_port`, adding the headers
//! the original appliance's proxy added: `X-Forwarded-For` (the instance's
//! address), `X-Instance-ID` (the `device_id` of its allocation),
//! `X-Quantum-Network-ID` and `X-Tenant-ID`. Headers of those names sent by
//! the instance are removed first, so an instance cannot pose as another.
//!
//! One request per connection (the response is followed by FIN). The
//! orchestrator is reached with a kernel socket (the management network is
//! the kernel's), on a short-lived thread per request so a slow
//! orchestrator never holds up the host stack; an unreachable one is
//! answered with 502 within the connect timeout.

use super::model::AstaraConfig;
use crate::packet::{Mac, Meta, PacketBuf, Pkt};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::time::{Duration, Instant};

pub const METADATA_ADDR: [u8; 4] = [169, 254, 169, 254];
const LISTENERS: usize = 8;
const MAX_CONNECTIONS: usize = 256;
const MAX_REQUEST: usize = 16 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(20);

/// IP packets in and out of the smoltcp interface.
#[derive(Default)]
pub(crate) struct Queues {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

pub(crate) struct Rx(Vec<u8>);
pub(crate) struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: SInstant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: SInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1500;
        c
    }
}

enum State {
    Listening,
    Reading { since: Instant, buf: Vec<u8> },
    Waiting(Receiver<Vec<u8>>),
    Writing { data: Vec<u8>, at: usize },
    Closing,
}

struct Conn {
    handle: SocketHandle,
    state: State,
}

/// Where an instance is: the port it came in on and its MAC.
#[derive(Clone, Copy)]
struct Client {
    port: u16,
    mac: Mac,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct MetadataStats {
    pub requests: u64,
    pub upstream_errors: u64,
    pub refused: u64,
}

pub struct MetadataProxy {
    iface: Interface,
    dev: Queues,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    clients: HashMap<u32, Client>,
    start: Instant,
    pub stats: MetadataStats,
}

impl Default for MetadataProxy {
    fn default() -> Self {
        Self::new()
    }
}

impl MetadataProxy {
    pub fn new() -> MetadataProxy {
        let mut dev = Queues::default();
        let start = Instant::now();
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, SInstant::from_millis(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(METADATA_ADDR)), 32));
        });
        // Every instance is "reachable": the host stack puts the Ethernet
        // header on what smoltcp sends, from the clients table.
        let _ = iface.routes_mut().add_default_ipv4_route(Ipv4Address::from(METADATA_ADDR));
        let mut p = MetadataProxy {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            conns: Vec::new(),
            clients: HashMap::new(),
            start,
            stats: MetadataStats::default(),
        };
        for _ in 0..LISTENERS {
            p.listen();
        }
        p
    }

    fn listen(&mut self) {
        let mut s =
            tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 16 << 10]), tcp::SocketBuffer::new(vec![0; 64 << 10]));
        if s.listen(80).is_ok() {
            let handle = self.sockets.add(s);
            self.conns.push(Conn { handle, state: State::Listening });
        }
    }

    fn now(&self) -> SInstant {
        SInstant::from_millis(self.start.elapsed().as_millis() as i64)
    }

    /// Takes a punted frame (TCP to 169.254.169.254:80 from an instance).
    pub fn deliver(&mut self, pkt: &Pkt, m: &Meta) {
        let d = pkt.data();
        let l3 = m.l3_off as usize;
        if d.len() < l3 + 20 || d.len() < 12 {
            return;
        }
        let mac = Mac(d[6..12].try_into().unwrap_or_default());
        self.clients.insert(m.src as u32, Client { port: m.in_port, mac });
        let total = u16::from_be_bytes([d[l3 + 2], d[l3 + 3]]) as usize;
        self.dev.rx.push_back(d[l3..(l3 + total).min(d.len())].to_vec());
    }

    /// Runs the TCP stack and the requests; returns frames to send as
    /// (port, frame). `cfg`: the document in force; `src_of(port)`: the
    /// port's MAC.
    pub fn poll(&mut self, cfg: Option<&AstaraConfig>, port_mac: impl Fn(u16) -> Option<Mac>) -> Vec<(u16, Vec<u8>)> {
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        let mut listening = 0;
        for i in 0..self.conns.len() {
            let handle = self.conns[i].handle;
            let s = self.sockets.get_mut::<tcp::Socket>(handle);
            let state = std::mem::replace(&mut self.conns[i].state, State::Closing);
            self.conns[i].state = match state {
                State::Listening if s.is_active() => State::Reading { since: Instant::now(), buf: Vec::new() },
                State::Listening => {
                    listening += 1;
                    State::Listening
                }
                State::Reading { since, mut buf } => {
                    let _ = s.recv(|b| {
                        let n = b.len().min(MAX_REQUEST.saturating_sub(buf.len()));
                        buf.extend_from_slice(&b[..n]);
                        (n, ())
                    });
                    match request_complete(&buf) {
                        Some(_) => {
                            self.stats.requests += 1;
                            let client = match s.remote_endpoint().map(|e| e.addr) {
                                Some(IpAddress::Ipv4(a)) => u32::from(a),
                                _ => 0,
                            };
                            match upstream(cfg, client, &buf) {
                                Ok((addr, req)) => {
                                    let (tx, rx) = channel();
                                    std::thread::spawn(move || {
                                        let _ = tx.send(fetch(addr, &req));
                                    });
                                    State::Waiting(rx)
                                }
                                Err(resp) => {
                                    self.stats.upstream_errors += 1;
                                    State::Writing { data: resp, at: 0 }
                                }
                            }
                        }
                        None if buf.len() >= MAX_REQUEST => {
                            self.stats.refused += 1;
                            State::Writing { data: response(431, "request too large"), at: 0 }
                        }
                        // (No data can come before the handshake ends.)
                        None if since.elapsed() > REQUEST_TIMEOUT
                            || (!s.may_recv() && s.state() != tcp::State::SynReceived) =>
                        {
                            s.abort();
                            State::Closing
                        }
                        None => State::Reading { since, buf },
                    }
                }
                State::Waiting(rx) => match rx.try_recv() {
                    Ok(data) => {
                        if data.starts_with(b"HTTP/1.0 502") {
                            self.stats.upstream_errors += 1;
                        }
                        State::Writing { data, at: 0 }
                    }
                    Err(TryRecvError::Empty) => State::Waiting(rx),
                    Err(TryRecvError::Disconnected) => State::Writing { data: response(502, "no answer"), at: 0 },
                },
                State::Writing { data, mut at } => {
                    if s.can_send() {
                        at += s.send_slice(&data[at..]).unwrap_or(0);
                    }
                    if at >= data.len() {
                        s.close();
                        State::Closing
                    } else if !s.is_active() {
                        State::Closing
                    } else {
                        State::Writing { data, at }
                    }
                }
                State::Closing => State::Closing,
            };
        }
        // Free finished connections; keep enough listeners.
        let sockets = &mut self.sockets;
        self.conns.retain(|c| {
            let done = matches!(c.state, State::Closing) && {
                let s = sockets.get::<tcp::Socket>(c.handle);
                matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
            };
            if done {
                sockets.remove(c.handle);
            }
            !done
        });
        while listening < LISTENERS && self.conns.len() < MAX_CONNECTIONS {
            self.listen();
            listening += 1;
        }
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        let mut out = Vec::new();
        while let Some(ip) = self.dev.tx.pop_front() {
            if ip.len() < 20 {
                continue;
            }
            let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
            let Some(c) = self.clients.get(&dst).copied() else { continue };
            let Some(src) = port_mac(c.port) else { continue };
            let mut f = Vec::with_capacity(14 + ip.len());
            f.extend_from_slice(&c.mac.0);
            f.extend_from_slice(&src.0);
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            f.extend_from_slice(&ip);
            out.push((c.port, f));
        }
        out
    }

    /// Connections open or waiting.
    pub fn busy(&self) -> bool {
        self.conns.iter().any(|c| !matches!(c.state, State::Listening))
    }
}

/// Index of the end of the request (headers and any body), when complete.
fn request_complete(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= end + len).then_some(end + len)
}

fn response(code: u16, why: &str) -> Vec<u8> {
    let reason = match code {
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        _ => "Bad Gateway",
    };
    format!("HTTP/1.0 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}\n", why.len() + 1)
        .into_bytes()
}

/// The request to send upstream, with the proxy's headers; or the answer
/// to give at once when it cannot be sent.
fn upstream(cfg: Option<&AstaraConfig>, client: u32, req: &[u8]) -> Result<(SocketAddr, Vec<u8>), Vec<u8>> {
    let Some(cfg) = cfg else { return Err(response(502, "no configuration")) };
    let Some(orch) = cfg.orchestrator.as_ref() else {
        return Err(response(502, "no orchestrator in the configuration"));
    };
    let Some(addr) = orch.address else { return Err(response(502, "no orchestrator address")) };
    let port = orch.metadata_port.unwrap_or(9697).min(u16::MAX as u32) as u16;
    let end = req.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| response(400, "bad request"))?;
    let head = std::str::from_utf8(&req[..end]).map_err(|_| response(400, "bad request"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    if request_line.split(' ').count() != 3 {
        return Err(response(400, "bad request line"));
    }
    let client_ip = IpAddr::V4(client.into());
    // The network the instance is on, and its allocation.
    let net = cfg.networks.iter().find(|n| {
        n.interface.addresses.iter().any(|a| a.is_v4() && a.contains(client_ip))
            || n.subnets.iter().any(|s| s.cidr.is_v4() && s.cidr.contains(client_ip))
    });
    let device = net
        .and_then(|n| n.allocations.iter().find(|a| a.ip_addresses.contains_key(&client_ip)))
        .map(|a| a.device_id.clone())
        .unwrap_or_default();
    let mut out = String::with_capacity(head.len() + 256);
    out.push_str(request_line);
    out.push_str("\r\n");
    const OURS: [&str; 7] = [
        "x-forwarded-for",
        "x-instance-id",
        "x-quantum-network-id",
        "x-tenant-id",
        "connection",
        "keep-alive",
        "proxy-connection",
    ];
    for l in lines {
        let name = l.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if !OURS.contains(&name.as_str()) {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("X-Forwarded-For: {client_ip}\r\n"));
    out.push_str(&format!("X-Instance-ID: {device}\r\n"));
    out.push_str(&format!("X-Quantum-Network-ID: {}\r\n", net.map_or("", |n| n.network_id.as_str())));
    out.push_str(&format!("X-Tenant-ID: {}\r\n", cfg.tenant_id.as_deref().unwrap_or_default()));
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&req[end + 4..]);
    Ok((SocketAddr::new(addr, port), bytes))
}

/// One request to the orchestrator; its whole answer, or a 502.
fn fetch(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut s = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return response(502, &format!("orchestrator {addr}: {e}")),
    };
    let _ = s.set_read_timeout(Some(UPSTREAM_TIMEOUT));
    let _ = s.set_write_timeout(Some(UPSTREAM_TIMEOUT));
    if let Err(e) = s.write_all(req) {
        return response(502, &format!("orchestrator {addr}: {e}"));
    }
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) if !out.is_empty() => out,
        Ok(_) => response(502, "empty answer from the orchestrator"),
        Err(_) if !out.is_empty() => out,
        Err(e) => response(502, &format!("orchestrator {addr}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> AstaraConfig {
        AstaraConfig::from_json(
            br#"{"tenant_id": "t1", "hostname": "h", "orchestrator": {"address": "127.0.0.1", "metadata_port": 9697},
             "networks": [{"network_id": "net-a", "network_type": "internal",
               "interface": {"ifname": "ge2", "addresses": ["192.168.1.1/24"]},
               "subnets": [{"cidr": "192.168.1.0/24", "gateway_ip": "192.168.1.1"}],
               "allocations": [{"mac_address": "fa:16:3e:00:00:05", "ip_addresses": {"192.168.1.5": true},
                                "hostname": "vm5", "device_id": "dev-5"}]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn adds_the_headers_and_drops_spoofed_ones() {
        let req = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Instance-ID: evil\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(request_complete(req), Some(req.len()));
        let (addr, out) = upstream(Some(&doc()), u32::from_be_bytes([192, 168, 1, 5]), req).unwrap();
        assert_eq!(addr, "127.0.0.1:9697".parse().unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n"), "{text}");
        assert!(!text.contains("evil") && !text.contains("keep-alive"), "{text}");
        for h in
            ["X-Forwarded-For: 192.168.1.5", "X-Instance-ID: dev-5", "X-Quantum-Network-ID: net-a", "X-Tenant-ID: t1"]
        {
            assert!(text.contains(h), "{h}: {text}");
        }
        assert!(text.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn incomplete_and_bodied_requests() {
        assert_eq!(request_complete(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        let post = b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nab";
        assert_eq!(request_complete(post), None);
        let post = b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(request_complete(post), Some(post.len()));
        assert!(upstream(None, 0, post).unwrap_err().starts_with(b"HTTP/1.0 502"));
    }

    #[test]
    fn an_unreachable_orchestrator_is_a_quick_502() {
        // A port nothing listens on, on loopback.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let t = Instant::now();
        let r = fetch(addr, b"GET / HTTP/1.0\r\n\r\n");
        assert!(r.starts_with(b"HTTP/1.0 502"), "{}", String::from_utf8_lossy(&r));
        assert!(t.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1));
    }
}
