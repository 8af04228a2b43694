//! One endpoint's delivery: the queue in order, one event per POST as distribution sends
//! them (or up to `maxbatch` when several are queued), distribution's retry rule (after
//! `threshold` failures in a row, one attempt per `backoff`), Berth's bounds (`maxpending`,
//! `maxage`: the oldest go, with a WARN and a counter), and the statistics behind the metrics
//! and `/debug/health`. Every step is O(1) in the length of the queue.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::journal::Journal;
use super::{EndpointConfig, Rec, EVENTS_MEDIA_TYPE};

/// Events kept in memory per endpoint; beyond, queued batches are read back from the journal
/// when their turn comes (memory stays bounded however long a listener is down).
const MAX_LOADED: usize = 10_000;

/// At most one WARN about dropped events per this long (with the count since the last).
const DROP_WARN_EVERY: Duration = Duration::from_secs(60);

/// A journal object (or, when the journal could not be written, events in memory only).
pub struct Segment {
    pub key: Option<String>,
    events: Option<Vec<Rec>>,
    pub count: usize,
    delivered: usize,
    /// First and last event time, ms since the epoch.
    oldest: u64,
    newest: u64,
}

impl Segment {
    pub fn new(key: Option<String>, events: Vec<Rec>) -> Segment {
        let oldest = events.first().map_or(0, |r| r.time_ms);
        let newest = events.last().map_or(0, |r| r.time_ms);
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
    pub fn unloaded(key: String, count: usize, oldest: u64, newest: u64) -> Segment {
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
        self.count.saturating_sub(self.delivered)
    }

    /// When the next event to deliver happened.
    fn next_time(&self) -> u64 {
        match &self.events {
            Some(ev) => ev.get(self.delivered).map_or(self.newest, |r| r.time_ms),
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
    /// Events of attempts answered with a status outside 2xx/3xx (distribution's `Failures`).
    pub failures: AtomicU64,
    /// Events of attempts that got no answer (distribution's `Errors`).
    pub errors: AtomicU64,
    /// Failed attempts (POSTs), whatever they carried.
    pub failed_attempts: AtomicU64,
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

impl EndpointStats {
    pub fn new(cfg: &EndpointConfig) -> EndpointStats {
        EndpointStats {
            name: cfg.name.clone(),
            unhealthy_after: cfg.unhealthy_after,
            events: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
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
                berth_core::time::unix_millis(SystemTime::now()).saturating_sub(t),
            )),
        }
    }

    /// How long the endpoint has been failing.
    pub fn failing_for(&self) -> Option<Duration> {
        match self.failing_since_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(
                berth_core::time::unix_millis(SystemTime::now()).saturating_sub(t),
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

/// The worker's queue, with its totals kept as it changes.
struct Queue {
    segments: VecDeque<Segment>,
    /// Events held in memory.
    loaded: usize,
    /// Events not yet delivered.
    pending: usize,
}

impl Queue {
    /// Keeps at most [`MAX_LOADED`] events in memory; the rest are read back when due.
    fn admit(&mut self, mut s: Segment, unload: bool) -> Segment {
        if unload && s.key.is_some() && self.loaded + s.count > MAX_LOADED {
            s.events = None;
        } else if s.events.is_some() {
            self.loaded += s.count;
        }
        self.pending += s.remaining();
        s
    }

    fn push(&mut self, s: Segment) {
        let unload = !self.segments.is_empty();
        let s = self.admit(s, unload);
        self.segments.push_back(s);
    }

    fn adopt(&mut self, adopted: Vec<Segment>) {
        // Ahead of this process's own events, behind a batch partly delivered.
        let at = usize::from(self.segments.front().is_some_and(|f| f.delivered > 0));
        for (k, s) in adopted.into_iter().enumerate() {
            let s = self.admit(s, true);
            self.segments.insert(at + k, s);
        }
    }

    /// Removes the front segment, with whatever of it was not delivered.
    fn pop(&mut self) -> Option<Segment> {
        let s = self.segments.pop_front()?;
        if s.events.is_some() {
            self.loaded = self.loaded.saturating_sub(s.count);
        }
        self.pending = self.pending.saturating_sub(s.remaining());
        Some(s)
    }

    /// Marks `n` events of the front segment as gone (delivered or dropped).
    fn advance(&mut self, n: usize) {
        if let Some(f) = self.segments.front_mut() {
            let n = n.min(f.remaining());
            f.delivered += n;
            self.pending -= n;
        }
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
    rx: mpsc::UnboundedReceiver<ToWorker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut q = Queue {
        segments: VecDeque::new(),
        loaded: 0,
        pending: 0,
    };
    let mut drops = Drops {
        since_warn: 0,
        last_warn: None,
    };
    let url = reqwest::Url::parse(&cfg.url).map_err(|e| e.to_string());
    let mut in_a_row: u32 = 0;
    let mut inbox = Inbox { rx, open: true };
    loop {
        while let Ok(m) = inbox.rx.try_recv() {
            intake(&mut q, m);
        }
        enforce_bounds(&cfg, &stats, &journal, &mut q, &mut drops).await;
        publish(&stats, &q);
        if *shutdown.borrow() {
            break;
        }
        if q.segments.is_empty() {
            tokio::select! {
                m = inbox.rx.recv(), if inbox.open => match m {
                    Some(m) => intake(&mut q, m),
                    None => inbox.open = false,
                },
                _ = shutdown.changed() => break,
            }
            continue;
        }
        // The next events (reading their batch back from the journal if needed).
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
                    // The name said `count`; the object is the truth.
                    let (was, now) = (front.remaining(), ev.len().saturating_sub(front.delivered));
                    front.count = ev.len().max(front.delivered);
                    q.loaded += front.count;
                    front.events = Some(ev);
                    q.pending = q.pending.saturating_sub(was) + now;
                }
                Err(e) if e.is_not_found() => {
                    // Another replica delivered it (it adopted the same queue).
                    q.pop();
                }
                Err(e) => {
                    tracing::warn!(endpoint = %cfg.name, "notifications: reading queued events back from {key}: {e}");
                    if inbox.wait(&mut shutdown, &mut q, &stats, cfg.backoff).await {
                        break;
                    }
                }
            }
            continue;
        }
        // Up to `maxbatch` events, across the batches in memory at the front.
        let max = cfg.max_batch.max(1);
        let mut batch: Vec<Rec> = Vec::new();
        for seg in &q.segments {
            let Some(ev) = &seg.events else {
                break;
            };
            let take = max - batch.len();
            batch.extend(ev.iter().skip(seg.delivered).take(take).cloned());
            if batch.len() >= max {
                break;
            }
        }
        if batch.is_empty() {
            if let Some(done) = q.pop() {
                if let Some(key) = &done.key {
                    journal.remove(key).await;
                }
            }
            continue;
        }
        let result = match &url {
            Ok(url) => post(&client, &cfg, url, &batch).await,
            Err(e) => Err(Failure::Error(format!(
                "the endpoint's url is not a URL: {e}"
            ))),
        };
        let n = batch.len() as u64;
        match result {
            Ok(status) => {
                stats.status(status);
                stats.delivered.fetch_add(n, Ordering::Relaxed);
                in_a_row = 0;
                if let Some(down) = stats.failing_for() {
                    stats.failing_since_ms.store(0, Ordering::Relaxed);
                    tracing::info!(
                        endpoint = %cfg.name,
                        "notifications: endpoint recovered after failing for {}s; delivering its queue",
                        down.as_secs()
                    );
                }
                let mut left = batch.len();
                while left > 0 {
                    let Some(rem) = q.segments.front().map(Segment::remaining) else {
                        break;
                    };
                    let k = rem.min(left);
                    q.advance(k);
                    left -= k;
                    if k == rem {
                        if let Some(done) = q.pop() {
                            if let Some(key) = &done.key {
                                journal.remove(key).await;
                            }
                        }
                    }
                }
            }
            Err(failure) => {
                stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                match &failure {
                    Failure::Status(s) => {
                        stats.status(*s);
                        stats.failures.fetch_add(n, Ordering::Relaxed);
                    }
                    Failure::Error(_) => {
                        stats.errors.fetch_add(n, Ordering::Relaxed);
                    }
                }
                let why = failure.to_string();
                if let Ok(mut e) = stats.last_error.lock() {
                    e.clone_from(&why);
                }
                if stats.failing_for().is_none() {
                    stats.failing_since_ms.store(
                        berth_core::time::unix_millis(SystemTime::now()).max(1),
                        Ordering::Relaxed,
                    );
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
                    && inbox.wait(&mut shutdown, &mut q, &stats, cfg.backoff).await
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

/// What the journal writer and the replica scan hand this worker.
struct Inbox {
    rx: mpsc::UnboundedReceiver<ToWorker>,
    open: bool,
}

impl Inbox {
    /// Sleeps `d`, taking in (and counting) what arrives meanwhile; true when shutdown came
    /// first.
    async fn wait(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        q: &mut Queue,
        stats: &EndpointStats,
        d: Duration,
    ) -> bool {
        let until = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return *shutdown.borrow(),
                _ = shutdown.changed() => return true,
                m = self.rx.recv(), if self.open => match m {
                    Some(m) => {
                        intake(q, m);
                        publish(stats, q);
                    }
                    None => self.open = false,
                },
            }
        }
    }
}

fn publish(stats: &EndpointStats, q: &Queue) {
    stats.pending.store(q.pending as u64, Ordering::Relaxed);
    let oldest = q.segments.front().map_or(0, |s| s.next_time().max(1));
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
    while q.pending > max {
        let excess = q.pending - max;
        let Some(front) = q.segments.front() else {
            break;
        };
        let rem = front.remaining();
        if rem <= excess {
            dropped.0 += rem as u64;
            if let Some(s) = q.pop() {
                if let Some(key) = &s.key {
                    journal.remove(key).await;
                }
            }
        } else {
            q.advance(excess);
            dropped.0 += excess as u64;
        }
    }
    if let Some(max_age) = cfg.max_age {
        let cutoff = berth_core::time::unix_millis(SystemTime::now())
            .saturating_sub(max_age.as_millis() as u64);
        while let Some(front) = q.segments.front() {
            if front.newest < cutoff {
                dropped.1 += front.remaining() as u64;
                if let Some(s) = q.pop() {
                    if let Some(key) = &s.key {
                        journal.remove(key).await;
                    }
                }
                continue;
            }
            let old = match &front.events {
                Some(ev) => ev[front.delivered.min(ev.len())..]
                    .iter()
                    .take_while(|r| r.time_ms < cutoff)
                    .count(),
                None => 0,
            };
            q.advance(old);
            dropped.1 += old as u64;
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

/// POSTs events in distribution's envelope, `{"events":[...]}`, their JSON as journaled.
async fn post(
    client: &reqwest::Client,
    cfg: &EndpointConfig,
    url: &reqwest::Url,
    events: &[Rec],
) -> Result<reqwest::StatusCode, Failure> {
    let mut body = Vec::with_capacity(16 + events.iter().map(|r| r.json.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"events\":[");
    for (i, r) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&r.json);
    }
    body.extend_from_slice(b"]}");
    let mut req = client
        .post(url.clone())
        .timeout(cfg.timeout)
        .header(http::header::CONTENT_TYPE, EVENTS_MEDIA_TYPE);
    for (k, v) in &cfg.headers {
        req = req.header(k, v);
    }
    match req.body(Bytes::from(body)).send().await {
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
