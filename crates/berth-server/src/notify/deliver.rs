//! One endpoint's delivery: the queue in order, one event per POST (as distribution sends
//! them), distribution's retry rule (after `threshold` failures in a row, one attempt per
//! `backoff`), Berth's bounds (`maxpending`, `maxage`: the oldest go, with a WARN and a
//! counter), and the statistics behind the metrics and `/debug/health`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use super::journal::Journal;
use super::{EndpointConfig, Event, EVENTS_MEDIA_TYPE};

/// Events kept in memory per endpoint; beyond, queued batches are read back from the journal
/// when their turn comes (memory stays bounded however long a listener is down).
const MAX_LOADED: usize = 10_000;

/// At most one WARN about dropped events per this long (with the count since the last).
const DROP_WARN_EVERY: Duration = Duration::from_secs(60);

/// A journal object (or, when the journal could not be written, events in memory only).
pub struct Segment {
    pub key: Option<String>,
    events: Option<Vec<Event>>,
    pub count: usize,
    delivered: usize,
    oldest: SystemTime,
    newest: SystemTime,
}

fn event_time(e: &Event) -> SystemTime {
    berth_core::time::parse_rfc3339(&e.timestamp).unwrap_or(UNIX_EPOCH)
}

impl Segment {
    pub fn new(key: Option<String>, events: Vec<Event>) -> Segment {
        let oldest = events.first().map(event_time).unwrap_or(UNIX_EPOCH);
        let newest = events.last().map(event_time).unwrap_or(UNIX_EPOCH);
        Segment {
            key,
            count: events.len(),
            events: Some(events),
            delivered: 0,
            oldest,
            newest,
        }
    }

    /// A journal object known from its name; its events are read when due.
    pub fn unloaded(key: String, count: usize, oldest: SystemTime, newest: SystemTime) -> Segment {
        Segment {
            key: Some(key),
            events: None,
            count,
            delivered: 0,
            oldest,
            newest,
        }
    }

    fn remaining(&self) -> usize {
        self.count - self.delivered
    }

    /// When the next event to deliver happened.
    fn next_time(&self) -> SystemTime {
        match &self.events {
            Some(ev) => ev
                .get(self.delivered)
                .map(event_time)
                .unwrap_or(self.newest),
            None => self.oldest,
        }
    }
}

pub enum ToWorker {
    /// A batch this process journaled.
    Own(Segment),
    /// The queue of a stopped instance, oldest first: delivered before this process's own.
    Adopted(Vec<Segment>),
}

/// An endpoint's counters: distribution's (`registry_notifications_*`) and Berth's.
pub struct EndpointStats {
    pub name: String,
    unhealthy_after: Duration,
    /// Events queued for the endpoint (distribution's `Events`).
    pub events: AtomicU64,
    /// Events delivered (distribution's `Successes`).
    pub delivered: AtomicU64,
    /// Attempts answered with a status outside 2xx/3xx (distribution's `Failures`).
    pub failures: AtomicU64,
    /// Attempts that got no answer (distribution's `Errors`).
    pub errors: AtomicU64,
    pub dropped_maxpending: AtomicU64,
    pub dropped_maxage: AtomicU64,
    /// Pull events refused because the journal writer was far behind.
    pub dropped_overload: AtomicU64,
    pub pending: AtomicU64,
    /// When the oldest pending event happened (ms since the epoch; 0: nothing pending).
    oldest_ms: AtomicU64,
    /// Since when the endpoint fails (ms since the epoch; 0: it does not).
    failing_since_ms: AtomicU64,
    last_error: Mutex<String>,
    /// Answers by status line (`200 OK`), as distribution counts them.
    pub statuses: Mutex<BTreeMap<String, u64>>,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl EndpointStats {
    pub fn new(cfg: &EndpointConfig) -> EndpointStats {
        EndpointStats {
            name: cfg.name.clone(),
            unhealthy_after: cfg.unhealthy_after,
            events: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped_maxpending: AtomicU64::new(0),
            dropped_maxage: AtomicU64::new(0),
            dropped_overload: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            oldest_ms: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
            statuses: Mutex::new(BTreeMap::new()),
        }
    }

    pub(super) fn queued(&self, n: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn dropped_overload(&self) {
        self.dropped_overload.fetch_add(1, Ordering::Relaxed);
    }

    /// Age of the oldest pending event.
    pub fn oldest_age(&self) -> Option<Duration> {
        match self.oldest_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(
                ms(SystemTime::now()).saturating_sub(t),
            )),
        }
    }

    /// How long the endpoint has been failing.
    pub fn failing_for(&self) -> Option<Duration> {
        match self.failing_since_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(
                ms(SystemTime::now()).saturating_sub(t),
            )),
        }
    }

    pub(super) fn unhealthy(&self) -> Option<(String, String)> {
        let failing = self.failing_for()?;
        if failing < self.unhealthy_after {
            return None;
        }
        let last = self
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        Some((
            format!("notifications: {}", self.name),
            format!(
                "failing for {}s ({} events pending): {last}",
                failing.as_secs(),
                self.pending.load(Ordering::Relaxed)
            ),
        ))
    }

    fn status(&self, status: reqwest::StatusCode) {
        let line = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        if let Ok(mut m) = self.statuses.lock() {
            *m.entry(line.trim_end().to_owned()).or_default() += 1;
        }
    }
}

/// The worker's queue and what it tells the statistics.
struct Queue {
    segments: VecDeque<Segment>,
    loaded: usize,
}

impl Queue {
    fn pending(&self) -> usize {
        self.segments.iter().map(Segment::remaining).sum()
    }

    /// Keeps at most [`MAX_LOADED`] events in memory; the rest are read back when due.
    fn push(&mut self, mut s: Segment) {
        if s.key.is_some() && self.loaded + s.count > MAX_LOADED && !self.segments.is_empty() {
            s.events = None;
        } else if s.events.is_some() {
            self.loaded += s.count;
        }
        self.segments.push_back(s);
    }

    fn adopt(&mut self, adopted: Vec<Segment>) {
        // Ahead of this process's own events, behind a batch partly delivered.
        let at = usize::from(self.segments.front().is_some_and(|f| f.delivered > 0));
        for (k, mut s) in adopted.into_iter().enumerate() {
            if self.loaded + s.count > MAX_LOADED {
                s.events = None;
            } else if s.events.is_some() {
                self.loaded += s.count;
            }
            self.segments.insert(at + k, s);
        }
    }

    fn pop(&mut self) -> Option<Segment> {
        let s = self.segments.pop_front()?;
        if s.events.is_some() {
            self.loaded = self.loaded.saturating_sub(s.count);
        }
        Some(s)
    }
}

/// Drop bookkeeping for the rate-limited WARN.
struct Drops {
    since_warn: u64,
    last_warn: Option<Instant>,
}

pub async fn run(
    cfg: EndpointConfig,
    stats: Arc<EndpointStats>,
    client: reqwest::Client,
    journal: Arc<Journal>,
    mut rx: mpsc::UnboundedReceiver<ToWorker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut q = Queue {
        segments: VecDeque::new(),
        loaded: 0,
    };
    let mut drops = Drops {
        since_warn: 0,
        last_warn: None,
    };
    let mut in_a_row: u32 = 0;
    let mut open = true;
    loop {
        while let Ok(m) = rx.try_recv() {
            intake(&mut q, m);
        }
        enforce_bounds(&cfg, &stats, &journal, &mut q, &mut drops).await;
        publish(&stats, &q);
        if *shutdown.borrow() {
            break;
        }
        if q.segments.is_empty() {
            tokio::select! {
                m = rx.recv(), if open => match m {
                    Some(m) => intake(&mut q, m),
                    None => open = false,
                },
                _ = shutdown.changed() => break,
            }
            continue;
        }
        // The next event (reading its batch back from the journal if needed).
        let Some(front) = q.segments.front_mut() else {
            continue;
        };
        if front.events.is_none() {
            let Some(key) = front.key.clone() else {
                q.pop();
                continue;
            };
            match journal.read(&key).await {
                Ok(ev) => {
                    front.count = ev.len().max(front.delivered);
                    front.events = Some(ev);
                    q.loaded += front.count;
                }
                Err(e) if e.is_not_found() => {
                    // Another replica delivered it (it adopted the same queue).
                    q.pop();
                }
                Err(e) => {
                    tracing::warn!(endpoint = %cfg.name, "notifications: reading queued events back from {key}: {e}");
                    if wait(
                        &mut shutdown,
                        &mut rx,
                        &mut open,
                        &mut q,
                        &stats,
                        cfg.backoff,
                    )
                    .await
                    {
                        break;
                    }
                }
            }
            continue;
        }
        let Some(event) = front.events.as_ref().and_then(|ev| ev.get(front.delivered)) else {
            if let Some(done) = q.pop() {
                if let Some(key) = &done.key {
                    journal.remove(key).await;
                }
            }
            continue;
        };
        match post(&client, &cfg, event).await {
            Ok(status) => {
                stats.status(status);
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                in_a_row = 0;
                if let Some(down) = stats.failing_for() {
                    stats.failing_since_ms.store(0, Ordering::Relaxed);
                    tracing::info!(
                        endpoint = %cfg.name,
                        "notifications: endpoint recovered after failing for {}s; delivering its queue",
                        down.as_secs()
                    );
                }
                front.delivered += 1;
                if front.delivered >= front.count {
                    if let Some(done) = q.pop() {
                        if let Some(key) = &done.key {
                            journal.remove(key).await;
                        }
                    }
                }
            }
            Err(failure) => {
                match &failure {
                    Failure::Status(s) => {
                        stats.status(*s);
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Failure::Error(_) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let why = failure.to_string();
                if let Ok(mut e) = stats.last_error.lock() {
                    e.clone_from(&why);
                }
                if stats.failing_for().is_none() {
                    stats
                        .failing_since_ms
                        .store(ms(SystemTime::now()).max(1), Ordering::Relaxed);
                    tracing::warn!(
                        endpoint = %cfg.name,
                        "notifications: endpoint is failing ({why}); events stay queued and are retried (after {} failures in a row, every {:?}); one INFO line follows when it recovers",
                        cfg.threshold,
                        cfg.backoff
                    );
                }
                in_a_row = in_a_row.saturating_add(1);
                // distribution's retry rule: `threshold` attempts in a row, then one per backoff.
                if in_a_row >= cfg.threshold
                    && wait(
                        &mut shutdown,
                        &mut rx,
                        &mut open,
                        &mut q,
                        &stats,
                        cfg.backoff,
                    )
                    .await
                {
                    break;
                }
            }
        }
    }
    // Stopping: a batch partly delivered is rewritten without what was delivered, so the
    // next process does not send it again.
    if let Some(front) = q.segments.front() {
        if let (Some(key), Some(ev)) = (&front.key, &front.events) {
            if front.delivered > 0 && front.delivered < ev.len() {
                if let Err(e) = journal.rewrite(key, &ev[front.delivered..]).await {
                    tracing::warn!(endpoint = %cfg.name, "notifications: rewriting a partly delivered batch: {e} (its first {} events will be sent again)", front.delivered);
                }
            }
        }
    }
}

fn intake(q: &mut Queue, m: ToWorker) {
    match m {
        ToWorker::Own(s) => q.push(s),
        ToWorker::Adopted(v) => q.adopt(v),
    }
}

/// Sleeps `d`, taking in (and counting) what arrives meanwhile; true when shutdown came
/// first.
async fn wait(
    shutdown: &mut watch::Receiver<bool>,
    rx: &mut mpsc::UnboundedReceiver<ToWorker>,
    open: &mut bool,
    q: &mut Queue,
    stats: &EndpointStats,
    d: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return *shutdown.borrow(),
            _ = shutdown.changed() => return true,
            m = rx.recv(), if *open => match m {
                Some(m) => {
                    intake(q, m);
                    publish(stats, q);
                }
                None => *open = false,
            },
        }
    }
}

fn publish(stats: &EndpointStats, q: &Queue) {
    stats.pending.store(q.pending() as u64, Ordering::Relaxed);
    let oldest = q
        .segments
        .front()
        .map(|s| ms(s.next_time()).max(1))
        .unwrap_or(0);
    stats.oldest_ms.store(oldest, Ordering::Relaxed);
}

/// Drops the oldest events beyond `maxpending` and older than `maxage`.
async fn enforce_bounds(
    cfg: &EndpointConfig,
    stats: &EndpointStats,
    journal: &Journal,
    q: &mut Queue,
    drops: &mut Drops,
) {
    let mut dropped = (0u64, 0u64);
    let max = usize::try_from(cfg.max_pending).unwrap_or(usize::MAX);
    let mut excess = q.pending().saturating_sub(max);
    while excess > 0 {
        let Some(front) = q.segments.front_mut() else {
            break;
        };
        let rem = front.remaining();
        if rem <= excess {
            excess -= rem;
            dropped.0 += rem as u64;
            if let Some(s) = q.pop() {
                if let Some(key) = &s.key {
                    journal.remove(key).await;
                }
            }
        } else {
            front.delivered += excess;
            dropped.0 += excess as u64;
            excess = 0;
        }
    }
    if let Some(max_age) = cfg.max_age {
        let cutoff = SystemTime::now().checked_sub(max_age).unwrap_or(UNIX_EPOCH);
        while let Some(front) = q.segments.front_mut() {
            if front.newest < cutoff {
                dropped.1 += front.remaining() as u64;
                if let Some(s) = q.pop() {
                    if let Some(key) = &s.key {
                        journal.remove(key).await;
                    }
                }
                continue;
            }
            if let Some(ev) = &front.events {
                while front.delivered < ev.len() && event_time(&ev[front.delivered]) < cutoff {
                    front.delivered += 1;
                    dropped.1 += 1;
                }
            }
            break;
        }
    }
    if dropped == (0, 0) {
        return;
    }
    stats
        .dropped_maxpending
        .fetch_add(dropped.0, Ordering::Relaxed);
    stats.dropped_maxage.fetch_add(dropped.1, Ordering::Relaxed);
    drops.since_warn += dropped.0 + dropped.1;
    if drops
        .last_warn
        .is_none_or(|t| t.elapsed() >= DROP_WARN_EVERY)
    {
        tracing::warn!(
            endpoint = %cfg.name,
            "notifications: dropped the {} oldest undelivered events (queue bound: maxpending {}, maxage {:?}); raise the bound or fix the endpoint (berth_notifications_dropped_total counts them)",
            drops.since_warn,
            cfg.max_pending,
            cfg.max_age
        );
        drops.since_warn = 0;
        drops.last_warn = Some(Instant::now());
    }
}

enum Failure {
    Status(reqwest::StatusCode),
    Error(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(s) => write!(f, "the endpoint answered {s}"),
            Failure::Error(e) => f.write_str(e),
        }
    }
}

/// POSTs one event in distribution's envelope (indented as distribution indents it).
async fn post(
    client: &reqwest::Client,
    cfg: &EndpointConfig,
    event: &Event,
) -> Result<reqwest::StatusCode, Failure> {
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        events: [&'a Event; 1],
    }
    let mut body = Vec::with_capacity(1024);
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut body, fmt);
    serde::Serialize::serialize(&Envelope { events: [event] }, &mut ser)
        .map_err(|e| Failure::Error(format!("encoding the event: {e}")))?;
    let mut req = client
        .post(&cfg.url)
        .timeout(cfg.timeout)
        .header(http::header::CONTENT_TYPE, EVENTS_MEDIA_TYPE);
    for (k, v) in &cfg.headers {
        req = req.header(k, v);
    }
    match req.body(body).send().await {
        Ok(resp) => {
            let status = resp.status();
            // Read (and discard) the answer so the connection can be reused.
            let _ = resp.bytes().await;
            if status.is_success() || status.is_redirection() {
                Ok(status)
            } else {
                Err(Failure::Status(status))
            }
        }
        Err(e) => Err(Failure::Error(describe(&e))),
    }
}

/// A transport error with its causes, without the URL (it may carry credentials).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut causes = Vec::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        causes.push(s.to_string());
        src = s.source();
    }
    match causes.last() {
        Some(root) => format!("{what}: {root}"),
        None => what.to_owned(),
    }
}
