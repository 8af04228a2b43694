//! The registry listener: the accept loop over TCP or a Unix socket (`http.net: unix`), plain
//! or TLS, and the drain at shutdown.
//!
//! Each accepted connection is served on its own task by hyper (through hyper-util's `auto`
//! builder): over TLS the protocol is the one ALPN chose (`h2` or `http/1.1`); plain TCP serves
//! HTTP/1.1, plus HTTP/2 with prior knowledge when `http.h2c` is enabled. A TLS handshake that
//! fails or stalls ends that connection only.
//!
//! Shutdown ([`serve`]'s `shutdown` future resolves): readiness turns to not-ready, the listener
//! is closed (new connections are refused), idle keep-alive connections are closed and busy ones
//! close after their current request (HTTP/2: GOAWAY); requests still running when the drain
//! timeout ends are dropped and counted in one WARN line.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::either::Either;

use crate::AppState;

/// A client must finish its TLS handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the listener serves.
#[derive(Clone)]
pub struct ListenOptions {
    /// `http.tls`: serve TLS with this configuration (its ALPN list decides about HTTP/2).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `http.h2c.enabled`: accept HTTP/2 with prior knowledge on plain TCP.
    pub h2c: bool,
    /// `http.draintimeout`: how long in-flight requests may run after a shutdown request.
    pub drain_timeout: Duration,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            tls: None,
            h2c: false,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// Where the registry listens: TCP, or a Unix socket (`http.net: unix`, `http.addr` its path),
/// either bound here or passed by systemd (socket activation).
pub enum Listener {
    Tcp(TcpListener),
    /// With the path of the socket file that is removed when the listener is dropped (as Go's
    /// listener does); `None` for a socket systemd owns.
    Unix(UnixListener, Option<PathBuf>),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl Listener {
    /// Binds a Unix socket at `path` as distribution does: a socket left there by an earlier
    /// run is replaced; any other file is refused.
    pub fn bind_unix(path: &Path) -> std::io::Result<Listener> {
        use std::os::unix::fs::FileTypeExt as _;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Listener::Unix(
            UnixListener::bind(path)?,
            Some(path.to_path_buf()),
        ))
    }

    /// The socket systemd passed (`LISTEN_FDS`, for this process's `LISTEN_PID`), which
    /// distribution 3 serves instead of `http.addr`: `None` without one; more than one is an
    /// error, as there. Call inside the runtime.
    pub fn from_systemd() -> std::io::Result<Option<Listener>> {
        // go-systemd's rule: the variables are for this process only.
        if std::env::var("LISTEN_PID").ok() != Some(std::process::id().to_string()) {
            return Ok(None);
        }
        let mut fds = listenfd::ListenFd::from_env();
        match fds.len() {
            0 => Ok(None),
            1 => {
                if let Ok(Some(l)) = fds.take_tcp_listener(0) {
                    l.set_nonblocking(true)?;
                    return Ok(Some(Listener::Tcp(TcpListener::from_std(l)?)));
                }
                match fds.take_unix_listener(0)? {
                    Some(l) => {
                        l.set_nonblocking(true)?;
                        Ok(Some(Listener::Unix(UnixListener::from_std(l)?, None)))
                    }
                    None => Ok(None),
                }
            }
            n => Err(std::io::Error::other(format!(
                "found {n} socket-activation listeners (LISTEN_FDS), only expected 1"
            ))),
        }
    }

    /// The TCP port it listens on (`None` for a Unix socket).
    pub fn port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(..) => None,
        }
    }

    /// Where it listens, for the start-up line: `http://127.0.0.1:5000`, `unix:/run/registry.sock`.
    pub fn describe(&self, scheme: &str) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("{scheme}://{a}"),
                Err(_) => format!("{scheme}://?"),
            },
            Listener::Unix(l, _) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            {
                Some(p) => format!("unix:{p} ({scheme})"),
                None => format!("unix:? ({scheme})"),
            },
        }
    }

    async fn accept(&self) -> std::io::Result<(Either<TcpStream, UnixStream>, String)> {
        match self {
            Listener::Tcp(l) => {
                let (tcp, peer) = l.accept().await?;
                // Responses go out as a head and then body frames: without TCP_NODELAY, Nagle
                // holds a small last frame until the client's delayed ACK (tens of ms per
                // small blob GET).
                let _ = tcp.set_nodelay(true);
                Ok((Either::Left(tcp), peer.to_string()))
            }
            Listener::Unix(l, _) => {
                let (unix, _) = l.accept().await?;
                Ok((Either::Right(unix), "unix".to_owned()))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, Some(path)) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The address of a request's connection (`ip:port`; `unix` for a Unix socket), in the
/// request's extensions.
#[derive(Debug, Clone)]
pub struct PeerAddr(pub Arc<str>);

/// `http.draintimeout` when the configuration does not set it.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `listener` until `shutdown` resolves, then drains (see the module documentation).
/// Returns when every connection has finished or the drain timeout has passed.
pub async fn serve(
    listener: impl Into<Listener>,
    state: AppState,
    options: ListenOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.into();
    let app = crate::app(state.clone());
    let limits = state.options.limits.clone();
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        accept_error(e).await;
                        continue;
                    }
                };
                // The peer's address, for notification events (`request.addr`).
                let peer_addr = PeerAddr(Arc::from(peer.as_str()));
                let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                    app.clone(),
                    move |mut r: http::Request<hyper::body::Incoming>| {
                        r.extensions_mut().insert(peer_addr.clone());
                        r
                    },
                ));
                let drain = drain_rx.clone();
                let limits = limits.clone();
                match &tls {
                    None => {
                        let h2c = options.h2c;
                        connections.spawn(async move {
                            serve_connection(tcp, service, Protocol::plain(h2c), drain, &limits).await;
                        });
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        connections.spawn(async move {
                            let mut stop = drain.clone();
                            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                            let stream = tokio::select! {
                                r = handshake => match r {
                                    Ok(Ok(s)) => s,
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::debug!(%peer, "TLS handshake timed out");
                                        return;
                                    }
                                },
                                _ = stop.wait_for(|d| *d) => return,
                            };
                            let protocol = match stream.get_ref().1.alpn_protocol() {
                                Some(b"h2") => Protocol::Http2,
                                _ => Protocol::Http1,
                            };
                            serve_connection(stream, service, protocol, drain, &limits).await;
                        });
                    }
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    state.lifecycle.begin_drain();
    drop(listener);
    let _ = drain_tx.send(true);
    let open = connections.len();
    tracing::info!(
        connections = open,
        timeout = ?options.drain_timeout,
        "draining: no new connections; finishing in-flight requests"
    );
    let drained = tokio::time::timeout(options.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let requests = state.metrics.in_flight().max(0);
        tracing::warn!(
            requests,
            connections = connections.len(),
            "drain timeout of {:?} reached: dropping {requests} request(s) still running",
            options.drain_timeout
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Serves a side application (the debug listener: health and metrics) on plain HTTP/1.1 with
/// the same per-connection limits as the registry (header size and read timeout, idle
/// timeouts), until the task is dropped. No drain: it answers until the process ends.
pub async fn serve_plain(listener: TcpListener, app: axum::Router, limits: crate::limits::Limits) {
    // Never flips: these connections are not drained.
    let (_keep, drain) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        accept_error(e).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let drain = drain.clone();
                let limits = limits.clone();
                connections.spawn(async move {
                    serve_connection(tcp, service, Protocol::Http1, drain, &limits).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Which HTTP a connection speaks.
#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
    /// HTTP/1.1, or HTTP/2 if the client starts with its preface (h2c prior knowledge).
    Sniff,
}

impl Protocol {
    fn plain(h2c: bool) -> Protocol {
        if h2c {
            Protocol::Sniff
        } else {
            Protocol::Http1
        }
    }
}

/// Serves one connection until it ends, or until the drain closes it gracefully.
async fn serve_connection<I, S>(
    io: I,
    service: TowerToHyperService<S>,
    protocol: Protocol,
    mut drain: watch::Receiver<bool>,
    limits: &crate::limits::Limits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let io = TokioIo::new(crate::limits::WriteIdle::new(io, limits.write_idle_timeout));
    // The connection limits (`limits.rs`): hyper applies its header read timeout only with a
    // timer. HTTP/1.1 (the common case) gets hyper's own HTTP/1 connection, which also bounds
    // the request head; h2c sniffing and HTTP/2 go through the auto builder.
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::trace!("connection ended: {e}");
                    }
                    return;
                }
                _ = drain.wait_for(|d| *d) => {}
            }
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::trace!("connection ended while draining: {e}");
            }
        }};
    }
    if let Protocol::Http1 = protocol {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_header_bytes);
        drive!(builder.serve_connection(io, service));
        return;
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = match protocol {
        Protocol::Http2 => builder.http2_only(),
        _ => builder,
    };
    drive!(builder.serve_connection(io, service));
}

/// Connection-level accept errors (the peer gave up) are ignored; others (out of file
/// descriptors) are logged and slow the loop down rather than spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accepting a connection failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
