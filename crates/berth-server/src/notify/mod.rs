//! distribution's `notifications`: webhook events for pushes, pulls, mounts and deletes, in
//! distribution's wire format, delivered at least once through a durable queue.
//!
//! - Handlers describe what happened as a [`Notice`] in the response's extensions; the
//!   dispatcher turns it into [`Event`]s with the request's record (id, address, host, method,
//!   user agent), the actor and the source, and hands them to the [`Notifier`].
//! - Events of writes (push, mount, delete) are journaled in the storage driver *before* the
//!   request is answered; pulls are journaled moments later without holding the response (a
//!   crash can lose the pull events of its last instants, never a write's). See [`journal`].
//! - One worker per endpoint POSTs the events in order, one per request as distribution does,
//!   retries with the endpoint's threshold and backoff, drops the oldest past `maxpending` or
//!   `maxage`, and deletes what was delivered. See [`deliver`].
//! - Replicas share the queue through the storage: each writes under its own instance
//!   directory and a heartbeat; the queue of a replica that stops for good (or was stopped
//!   with SIGTERM) is adopted by the others.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_core::{Digest, RepoName};
use berth_storage::StorageDriver;
use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

mod deliver;
mod journal;

pub use deliver::EndpointStats;

/// The envelope's media type (distribution 3.x; 2.8 sent `…events.v1+json`).
pub const EVENTS_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v2+json";

/// What distribution's blob events say a blob is.
const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

/// What a successful request did, as a handler reports it (in the response's extensions).
#[derive(Debug, Clone)]
pub enum Notice {
    /// A manifest was pushed (`Put`) or served (`Get`, also for HEAD).
    Manifest {
        action: Action,
        repository: RepoName,
        digest: Digest,
        media_type: String,
        body: Bytes,
        tag: Option<String>,
    },
    /// A manifest was deleted by digest, and with it these tags.
    ManifestDeleted {
        repository: RepoName,
        digest: Digest,
        tags: Vec<String>,
    },
    /// A tag was deleted (`DELETE /v2/<name>/manifests/<tag>`).
    TagDeleted { repository: RepoName, tag: String },
    /// A blob was pushed, served (also for HEAD) or mounted from `from`.
    Blob {
        action: Action,
        repository: RepoName,
        digest: Digest,
        size: u64,
        from: Option<RepoName>,
    },
    /// A blob was unlinked from a repository.
    BlobDeleted {
        repository: RepoName,
        digest: Digest,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Push,
    Pull,
    Mount,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Pull => "pull",
            Action::Mount => "mount",
            Action::Delete => "delete",
        }
    }
}

impl Notice {
    /// Pulls change nothing: their events need not be durable before the response.
    fn durable(&self) -> bool {
        !matches!(
            self,
            Notice::Manifest {
                action: Action::Pull,
                ..
            } | Notice::Blob {
                action: Action::Pull,
                ..
            }
        )
    }
}

/// One event, in distribution's JSON (field names and order of its `Event`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: String,
    pub timestamp: String,
    pub action: String,
    pub target: Target,
    pub request: RequestRecord,
    pub actor: Actor,
    pub source: Source,
}

/// An event as the queue carries it: its JSON, serialized once (journaled and posted as it
/// is), and what the ignore rules and the bounds look at.
#[derive(Debug, PartialEq)]
pub struct Record {
    pub json: Bytes,
    /// When it happened, in ms since the epoch.
    pub time_ms: u64,
    pub action: String,
    pub media_type: String,
}

/// Records are shared by the endpoints that want them.
pub type Rec = Arc<Record>;

impl Record {
    fn of(e: &Event, at: SystemTime) -> Option<Rec> {
        let json = serde_json::to_vec(e).ok()?;
        Some(Arc::new(Record {
            json: Bytes::from(json),
            time_ms: berth_core::time::unix_millis(at),
            action: e.action.clone(),
            media_type: e.target.media_type.clone(),
        }))
    }

    /// A journal line, checked to be an event (a line that is not is never posted).
    pub fn from_line(line: Bytes) -> Result<Rec, serde_json::Error> {
        #[derive(Deserialize)]
        struct Meta {
            timestamp: String,
            action: String,
            #[serde(default)]
            target: TargetMeta,
        }
        #[derive(Deserialize, Default)]
        struct TargetMeta {
            #[serde(rename = "mediaType", default)]
            media_type: String,
        }
        let m: Meta = serde_json::from_slice(&line)?;
        let time_ms =
            berth_core::time::parse_rfc3339(&m.timestamp).map_or(0, berth_core::time::unix_millis);
        Ok(Arc::new(Record {
            json: line,
            time_ms,
            action: m.action,
            media_type: m.target.media_type,
        }))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Target {
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub length: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repository: String,
    #[serde(
        rename = "fromRepository",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub from_repository: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    pub method: String,
    pub useragent: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Actor {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Source {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    #[serde(
        rename = "instanceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub instance_id: String,
}

/// The client's address as distribution records it: the first `X-Forwarded-For` entry or
/// `X-Real-Ip` when they are IP addresses, else the connection's peer.
pub fn client_addr(headers: &HeaderMap, peer: Option<&str>) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let is_ip = |s: &str| s.parse::<std::net::IpAddr>().is_ok();
    if let Some(first) = header("x-forwarded-for").and_then(|v| v.split(',').next()) {
        let first = first.trim();
        if is_ip(first) {
            return first.to_owned();
        }
    }
    if let Some(real) = header("x-real-ip").map(str::trim).filter(|v| is_ip(v)) {
        return real.to_owned();
    }
    peer.unwrap_or_default().to_owned()
}

/// Which events an endpoint does not want (`ignoredmediatypes`, `ignore.mediatypes`,
/// `ignore.actions`).
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    pub media_types: Vec<String>,
    pub actions: Vec<String>,
}

impl Ignore {
    fn drops(&self, r: &Record) -> bool {
        self.media_types.contains(&r.media_type) || self.actions.contains(&r.action)
    }
}

/// One endpoint's settings: distribution's (with its defaults) and Berth's bounds.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub name: String,
    pub url: String,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub timeout: Duration,
    pub threshold: u32,
    pub backoff: Duration,
    pub ignore: Ignore,
    pub max_pending: u64,
    pub max_age: Option<Duration>,
    pub unhealthy_after: Duration,
    /// Events per POST at most when several are queued (1: distribution's one per POST).
    pub max_batch: usize,
}

/// Defaults of distribution's `EndpointConfig` and Berth's bounds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_THRESHOLD: u32 = 10;
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_PENDING: u64 = 100_000;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_UNHEALTHY_AFTER: Duration = Duration::from_secs(300);
pub const DEFAULT_ORPHAN_AFTER: Duration = Duration::from_secs(60);
/// distribution sends one event per POST; so does Berth unless `maxbatch` says otherwise.
pub const DEFAULT_MAX_BATCH: usize = 1;

/// Everything the notifier needs from the configuration.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub endpoints: Vec<EndpointConfig>,
    pub include_references: bool,
    /// `source.addr`: the host name and the port of `http.addr`, as distribution writes it.
    pub source_addr: String,
    pub orphan_after: Duration,
}

/// A batch for the journal: events, and whom to tell once they are durable.
struct Append {
    /// Order of arrival across the two queues (writes and pulls).
    seq: u64,
    events: Vec<Rec>,
    done: Option<oneshot::Sender<()>>,
}

/// The queue of appends waiting for the journal writer; pulls beyond it are dropped rather
/// than holding requests.
const APPEND_QUEUE: usize = 65_536;

/// The notification pipeline: journal, per-endpoint delivery, and their statistics.
pub struct Notifier {
    include_references: bool,
    source: std::sync::RwLock<Source>,
    /// Writes' events: the writer wakes for each.
    tx: mpsc::Sender<Append>,
    /// Pulls' events: collected when the writer next writes, without waking it.
    pull_tx: mpsc::Sender<Append>,
    seq: std::sync::atomic::AtomicU64,
    endpoints: Vec<Arc<EndpointStats>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    journal: Arc<journal::Journal>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Notifier {
    /// Starts the journal writer, the delivery workers and the replica heartbeat. Returns
    /// `None` when no endpoint is enabled.
    pub async fn start(
        cfg: NotifyConfig,
        driver: Arc<dyn StorageDriver>,
    ) -> Result<Option<Arc<Notifier>>, String> {
        if cfg.endpoints.is_empty() {
            return Ok(None);
        }
        let instance = journal::Instance::new();
        let client = reqwest::Client::builder()
            .no_proxy()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("notifications: building the HTTP client: {e}"))?;
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let journal = Arc::new(journal::Journal::new(
            driver,
            instance.clone(),
            &cfg.endpoints,
            cfg.orphan_after,
        ));
        if let Err(e) = journal.beat().await {
            // distribution starts with storage it cannot write (a read-only mount); so does
            // Berth, keeping events in memory until the journal can be written.
            tracing::warn!("notifications: cannot write to the event journal in storage ({e}): events are delivered from memory, and lost if this process stops, until it can");
        }
        let mut tasks = Vec::new();
        let mut workers = Vec::new();
        let mut stats = Vec::new();
        for ep in &cfg.endpoints {
            let s = Arc::new(EndpointStats::new(ep));
            let (wtx, wrx) = mpsc::unbounded_channel();
            tasks.push(tokio::spawn(deliver::run(
                ep.clone(),
                s.clone(),
                client.clone(),
                journal.clone(),
                wrx,
                shutdown_rx.clone(),
            )));
            workers.push(wtx);
            stats.push(s);
        }
        let (tx, rx) = mpsc::channel(APPEND_QUEUE);
        let (pull_tx, pull_rx) = mpsc::channel(APPEND_QUEUE);
        tasks.push(tokio::spawn(journal::write_loop(
            journal.clone(),
            cfg.endpoints.iter().map(|e| e.ignore.clone()).collect(),
            rx,
            pull_rx,
            workers.clone(),
            stats.clone(),
            shutdown_rx.clone(),
        )));
        let (scanned, first_scan) = oneshot::channel();
        tasks.push(tokio::spawn(journal::replicas_loop(
            journal.clone(),
            workers,
            shutdown_rx,
            scanned,
        )));
        // The queues of stopped instances (a restart's predecessor) go first: their events
        // are older than any this process will record.
        let _ = first_scan.await;
        for ep in &cfg.endpoints {
            tracing::info!(
                endpoint = %ep.name,
                url = %redact_url(&ep.url),
                timeout = ?ep.timeout,
                threshold = ep.threshold,
                backoff = ?ep.backoff,
                maxpending = ep.max_pending,
                "notifications: sending events to this endpoint"
            );
        }
        Ok(Some(Arc::new(Notifier {
            include_references: cfg.include_references,
            source: std::sync::RwLock::new(Source {
                addr: cfg.source_addr,
                instance_id: instance.uuid().to_owned(),
            }),
            tx,
            pull_tx,
            seq: std::sync::atomic::AtomicU64::new(0),
            endpoints: stats,
            shutdown,
            journal,
            tasks: std::sync::Mutex::new(tasks),
        })))
    }

    /// Turns a handler's notice into events and queues them. Returns once write events are
    /// durable in the journal (pull events are queued without waiting).
    pub async fn publish(&self, notice: &Notice, ctx: &RequestContext) {
        let now = SystemTime::now();
        let events: Vec<Rec> = self
            .events(notice, ctx, now)
            .iter()
            .filter_map(|e| Record::of(e, now))
            .collect();
        if events.is_empty() {
            return;
        }
        if notice.durable() {
            let (done, wait) = oneshot::channel();
            let append = Append {
                seq: self.next_seq(),
                events,
                done: Some(done),
            };
            if self.tx.send(append).await.is_ok() {
                let _ = wait.await;
            }
        } else if self
            .pull_tx
            .try_send(Append {
                seq: self.next_seq(),
                events,
                done: None,
            })
            .is_err()
        {
            for s in &self.endpoints {
                s.dropped_overload();
            }
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// `source.addr` once the listener is bound (`http.addr` with port 0 names no port).
    pub fn set_source_addr(&self, addr: String) {
        if let Ok(mut s) = self.source.write() {
            s.addr = addr;
        }
    }

    fn events(&self, notice: &Notice, ctx: &RequestContext, now: SystemTime) -> Vec<Event> {
        let source = self.source.read().map(|s| s.clone()).unwrap_or_default();
        let timestamp = berth_core::time::rfc3339_nanos(now);
        let event = |action: Action, target: Target| Event {
            id: event_id(),
            timestamp: timestamp.clone(),
            action: action.as_str().to_owned(),
            target,
            request: ctx.request.clone(),
            actor: Actor {
                name: ctx.actor.clone(),
            },
            source: source.clone(),
        };
        match notice {
            Notice::Manifest {
                action,
                repository,
                digest,
                media_type,
                body,
                tag,
            } => {
                let size = body.len() as u64;
                let references = if self.include_references {
                    references(body)
                } else {
                    Vec::new()
                };
                vec![event(
                    *action,
                    Target {
                        media_type: media_type.clone(),
                        size,
                        digest: digest.to_string(),
                        length: size,
                        repository: repository.to_string(),
                        url: format!("{}/v2/{repository}/manifests/{digest}", ctx.base_url),
                        tag: tag.clone().unwrap_or_default(),
                        references,
                        ..Target::default()
                    },
                )]
            }
            Notice::ManifestDeleted {
                repository,
                digest,
                tags,
            } => {
                let mut out = vec![event(
                    Action::Delete,
                    Target {
                        digest: digest.to_string(),
                        repository: repository.to_string(),
                        ..Target::default()
                    },
                )];
                for tag in tags {
                    out.push(event(
                        Action::Delete,
                        Target {
                            repository: repository.to_string(),
                            tag: tag.clone(),
                            ..Target::default()
                        },
                    ));
                }
                out
            }
            Notice::TagDeleted { repository, tag } => vec![event(
                Action::Delete,
                Target {
                    repository: repository.to_string(),
                    tag: tag.clone(),
                    ..Target::default()
                },
            )],
            Notice::Blob {
                action,
                repository,
                digest,
                size,
                from,
            } => vec![event(
                *action,
                Target {
                    media_type: BLOB_MEDIA_TYPE.to_owned(),
                    size: *size,
                    digest: digest.to_string(),
                    length: *size,
                    repository: repository.to_string(),
                    from_repository: from.as_ref().map(|f| f.to_string()).unwrap_or_default(),
                    url: format!("{}/v2/{repository}/blobs/{digest}", ctx.base_url),
                    ..Target::default()
                },
            )],
            Notice::BlobDeleted { repository, digest } => vec![event(
                Action::Delete,
                Target {
                    digest: digest.to_string(),
                    repository: repository.to_string(),
                    ..Target::default()
                },
            )],
        }
    }

    /// Per-endpoint statistics (metrics, `/debug/health`).
    pub fn endpoints(&self) -> &[Arc<EndpointStats>] {
        &self.endpoints
    }

    /// `(endpoint, problem)` of each endpoint failing for longer than its `unhealthyafter`.
    pub fn unhealthy(&self) -> Vec<(String, String)> {
        self.endpoints
            .iter()
            .filter_map(|s| s.unhealthy())
            .collect()
    }

    /// Stops every task at once, as a killed process would: nothing flushed or released.
    #[cfg(test)]
    fn abort(&self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.abort();
        }
    }

    /// Flushes the journal, stops delivery (a partly delivered batch is rewritten without
    /// what was delivered) and releases this replica's queue for the next process. Waits at
    /// most `limit`.
    pub async fn shutdown(&self, limit: Duration) {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("notifications: shutting down took longer than {limit:?}; queued events stay in storage for the next start");
        }
        self.journal.release().await;
    }
}

/// A new event id: a UUID (version 4 bits, as distribution's), from a random per-process
/// base and a counter, so ids are unique without a system call per event.
fn event_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static BASE: OnceLock<u128> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| uuid::Uuid::new_v4().as_u128());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let bytes = (base ^ u128::from(n)).to_be_bytes();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// What an event says about the request that caused it.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request: RequestRecord,
    pub actor: String,
    /// Scheme, host and prefix of the URLs in events (as `Location` headers are built).
    pub base_url: String,
}

/// A manifest's references as distribution's `References()` gives them: an index's manifests,
/// an image's config and layers; the descriptor fields distribution's `Descriptor` has.
fn references(body: &[u8]) -> Vec<serde_json::Value> {
    #[derive(Deserialize)]
    struct Parts {
        #[serde(default)]
        manifests: Vec<serde_json::Map<String, serde_json::Value>>,
        #[serde(default)]
        config: Option<serde_json::Map<String, serde_json::Value>>,
        #[serde(default)]
        layers: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    const FIELDS: [&str; 6] = [
        "mediaType",
        "size",
        "digest",
        "urls",
        "annotations",
        "platform",
    ];
    let Ok(p) = serde_json::from_slice::<Parts>(body) else {
        return Vec::new();
    };
    p.manifests
        .into_iter()
        .chain(p.config)
        .chain(p.layers)
        .map(|d| {
            let mut out = serde_json::Map::new();
            for f in FIELDS {
                if let Some(v) = d.get(f) {
                    out.insert(f.to_owned(), v.clone());
                }
            }
            serde_json::Value::Object(out)
        })
        .collect()
}

/// A URL for logs: without user info or query (either may hold a secret).
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// This host's name (the kernel's, else `$HOSTNAME`), as Go's `os.Hostname` reads it.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
}

/// The `source.addr` distribution writes: this host's name with the port of `http.addr`.
pub fn source_addr(http_addr: &str) -> String {
    let Some(host) = hostname() else {
        return http_addr.to_owned();
    };
    match http_addr.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => format!("{host}:{port}"),
        _ => host,
    }
}

#[cfg(test)]
mod tests;
