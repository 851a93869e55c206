//! A TCP proxy that can cut a half-open network partition: one listener on 127.0.0.1 (a free
//! port) per upstream address (the harness's PostgreSQL, or each server of a primary/standby
//! pair), all behind one cut switch. `blackhole()` stops forwarding in both directions on every
//! listener without closing a socket — bytes already read are held, nothing more is read, so the
//! kernels' buffers fill and both peers see a silent, open connection, as behind a dead
//! middlebox; new connections are accepted and stalled. `heal()` resumes every held connection
//! where it stopped (what was sent meanwhile arrives late; an end, e.g. of a session the server
//! terminated, arrives after its data). With several upstreams a node's multi-host URL is
//! rewritten host by host (`url`), so a node behind the proxy still follows a failover and a
//! partition still cuts it from every server at once.
//!
//! TCP keepalives and `tcp_user_timeout` cannot see this cut: each peer's socket ends at the
//! proxy, whose kernel answers probes and acknowledges data. Only the node's own timeouts
//! (bounded queries and connects, the heartbeat age) notice it.
//!
//! Used by the chaos binary (`chaos-tests/main.rs`), the integration tests (`tests/common/`,
//! through a `#[path]` module) and the failover bench, so it depends on nothing but tokio and
//! std. It runs on its own thread and runtime, so a caller that blocks (a test waiting for a
//! process) does not stall it. Dropping the proxy closes every connection it holds.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One proxy: a listening port per upstream, one cut switch for all.
pub struct Proxy {
    /// (listening address, upstream it forwards to), in the order given.
    routes: Vec<(SocketAddr, SocketAddr)>,
    cut: Arc<watch::Sender<bool>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`, healed.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::start_many(&[upstream])
    }

    /// One listener (a free port on 127.0.0.1) per upstream, all healed and cut together.
    pub fn start_many(upstreams: &[SocketAddr]) -> std::io::Result<Proxy> {
        let mut listeners = Vec::with_capacity(upstreams.len());
        let mut routes = Vec::with_capacity(upstreams.len());
        for &upstream in upstreams {
            let listener = StdListener::bind("127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            routes.push((listener.local_addr()?, upstream));
            listeners.push((listener, upstream));
        }
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let state = cut.clone();
        let name = routes.first().map_or(0, |(addr, _)| addr.port());
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{name}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut loops = tokio::task::JoinSet::new();
                    for (listener, upstream) in listeners {
                        let Ok(listener) = TcpListener::from_std(listener) else {
                            return;
                        };
                        loops.spawn(accept_loop(listener, upstream, state.clone()));
                    }
                    let _ = stopped.await;
                    loops.abort_all();
                });
                // dropping the runtime drops every connection task, closing their sockets
            })?;
        Ok(Proxy {
            routes,
            cut,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// A proxy for every `host:port` of a `postgresql://user@host:port[,host:port…]/db` URL.
    pub fn for_url(url: &str) -> std::io::Result<Proxy> {
        Proxy::start_many(&upstreams_of(url)?)
    }

    /// The port clients connect to (the first upstream's).
    pub fn port(&self) -> u16 {
        self.routes[0].0.port()
    }

    /// `url` (which names the upstreams' `host:port`s) pointed at this proxy instead, host by
    /// host.
    pub fn url(&self, url: &str) -> String {
        let mut url = url.to_owned();
        for (listen, upstream) in &self.routes {
            let upstream = format!("{}:{}", upstream.ip(), upstream.port());
            url = url.replacen(&upstream, &format!("127.0.0.1:{}", listen.port()), 1);
        }
        url
    }

    /// Cuts the partition: nothing is forwarded either way, no socket is closed, new
    /// connections are accepted and stalled.
    pub fn blackhole(&self) {
        self.cut.send_replace(true);
    }

    /// Ends the partition: every held connection resumes.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The `host:port`s of a `postgresql://` URL (one or several hosts), resolved (127.0.0.1 in the
/// harness).
pub fn upstreams_of(url: &str) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, url.to_owned());
    let rest = url.split_once("://").ok_or_else(invalid)?.1;
    let authority = rest.split(['/', '?']).next().ok_or_else(invalid)?;
    let hosts = authority.rsplit('@').next().ok_or_else(invalid)?;
    hosts
        .split(',')
        .map(|host_port| host_port.to_socket_addrs()?.next().ok_or_else(invalid))
        .collect()
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, cut: Arc<watch::Sender<bool>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let cut = cut.subscribe();
        tokio::spawn(async move {
            // a connection made during the cut is accepted and stalls until the heal
            let mut gate = cut.clone();
            if gate.wait_for(|cut| !*cut).await.is_err() {
                return;
            }
            let Ok(server) = TcpStream::connect(upstream).await else {
                return; // the client sees its connection end, as with no proxy
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_r, client_w) = client.into_split();
            let (server_r, server_w) = server.into_split();
            tokio::join!(
                pump(client_r, server_w, cut.clone()),
                pump(server_r, client_w, cut)
            );
        });
    }
}

/// Copies one direction, holding each chunk (and the end) while the partition is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.wait_for(|cut| !*cut).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if cut.wait_for(|cut| !*cut).await.is_err() {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
