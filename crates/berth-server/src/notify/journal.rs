//! The durable event queue, kept in the storage driver (filesystem or S3), in paths
//! distribution ignores:
//!
//! ```text
//! /docker/registry/v2/_berth/notifications/queues/<endpoint>/<instance>/<seq>-<n>-<first ms>-<last ms>
//!                                                                           events, one JSON per line
//! /docker/registry/v2/_berth/notifications/replicas/<instance>                  heartbeat: "<unix ms> <counter>"
//! /docker/registry/v2/_berth/notifications/claims/<instance>                    which replica adopted a dead one's queue
//! ```
//!
//! Each process is an *instance* (start time and a random suffix, so names sort by age) and
//! writes only below its own directories: no two writers ever touch one object, which is
//! what makes this safe on S3 without conditional writes. The writer batches: whatever
//! arrives while one batch is written goes into the next, one object per endpoint per batch
//! (group commit), so a burst of requests costs a few writes, not one each.
//!
//! A process that stops with SIGTERM deletes its heartbeat after flushing; one that is killed
//! stops beating. Every replica scans the queue directories each `orphanafter / 3`; the queue
//! of an instance without a heartbeat, or whose heartbeat is older than `orphanafter` (by the
//! writer's clock) or has not changed for `orphanafter` (by the reader's, so clock skew cannot
//! hide a dead replica), is claimed and delivered by the scanning replica. Two replicas that
//! claim at once both deliver: at-least-once, never lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use berth_storage::{StorageDriver, StorageError};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::deliver::{Segment, ToWorker};
use super::{Append, EndpointConfig, EndpointStats, Ignore, Rec, Record};

const ROOT: &str = "/docker/registry/v2/_berth/notifications";

/// Appends in one journal batch at most.
const MAX_BATCH: usize = 1024;

/// How long a batch of pull events waits for more before it is written.
const PULL_LINGER: Duration = Duration::from_millis(25);

/// This process: its `source.instanceID` (a UUID, as distribution's) and its name in the
/// queue (start time first, so names sort by age).
#[derive(Debug, Clone)]
pub struct Instance {
    uuid: String,
    name: String,
}

impl Instance {
    pub fn new() -> Instance {
        let uuid = uuid::Uuid::new_v4();
        let name = format!("{:013}-{}", now_ms(), &uuid.simple().to_string()[..12]);
        Instance {
            uuid: uuid.to_string(),
            name,
        }
    }

    /// The name of this instance's queue directories and heartbeat.
    pub fn id(&self) -> &str {
        &self.name
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }
}

fn now_ms() -> u64 {
    berth_core::time::unix_millis(SystemTime::now())
}

/// An endpoint's directory name: its name where that is a safe path element, else hex.
fn dir_name(name: &str, index: usize, taken: &HashSet<String>) -> String {
    let safe = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let base = if safe {
        name.to_owned()
    } else if name.is_empty() {
        format!("endpoint-{index}")
    } else {
        name.bytes().map(|b| format!("{b:02x}")).collect()
    };
    if taken.contains(&base) {
        format!("{base}-{index}")
    } else {
        base
    }
}

pub struct Journal {
    driver: Arc<dyn StorageDriver>,
    instance: Instance,
    dirs: Vec<String>,
    orphan_after: Duration,
    seq: AtomicU64,
    beats: AtomicU64,
}

impl Journal {
    pub fn new(
        driver: Arc<dyn StorageDriver>,
        instance: Instance,
        endpoints: &[EndpointConfig],
        orphan_after: Duration,
    ) -> Journal {
        let mut taken = HashSet::new();
        let dirs = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let d = dir_name(&e.name, i, &taken);
                taken.insert(d.clone());
                d
            })
            .collect();
        Journal {
            driver,
            instance,
            dirs,
            orphan_after,
            seq: AtomicU64::new(0),
            beats: AtomicU64::new(0),
        }
    }

    fn queue_dir(&self, endpoint: usize) -> String {
        format!("{ROOT}/queues/{}", self.dirs[endpoint])
    }

    fn heartbeat_path(instance: &str) -> String {
        format!("{ROOT}/replicas/{instance}")
    }

    fn claim_path(instance: &str) -> String {
        format!("{ROOT}/claims/{instance}")
    }

    /// Writes `events` as one object of this instance's queue for `endpoint`.
    pub async fn write(&self, endpoint: usize, events: &[Rec]) -> Result<String, StorageError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let key = format!(
            "{}/{}/{}",
            self.queue_dir(endpoint),
            self.instance.id(),
            object_name(seq, events)
        );
        self.driver.put_content(&key, encode(events)).await?;
        Ok(key)
    }

    /// Replaces an object with what is left of it (same sequence number, so the same place in
    /// the queue; the name's counts change).
    pub async fn rewrite(&self, key: &str, events: &[Rec]) -> Result<(), StorageError> {
        let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
        let seq = name
            .split('-')
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .unwrap_or(0);
        let new = format!("{dir}/{}", object_name(seq, events));
        self.driver.put_content(&new, encode(events)).await?;
        if new != key {
            self.remove(key).await;
        }
        Ok(())
    }

    /// The events of an object (lines that do not parse are skipped with a warning).
    pub async fn read(&self, key: &str) -> Result<Vec<Rec>, StorageError> {
        let body = self.driver.get_content(key).await?;
        Ok(decode(key, body))
    }

    /// Deletes a delivered object (one already gone is fine: another replica delivered it).
    pub async fn remove(&self, key: &str) {
        match self.driver.delete(key).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!("notifications: deleting the delivered batch {key}: {e}"),
        }
    }

    /// Writes this instance's heartbeat.
    pub async fn beat(&self) -> Result<(), StorageError> {
        let n = self.beats.fetch_add(1, Ordering::Relaxed);
        let body = format!("{} {n} {}\n", now_ms(), Host::this().encode());
        self.driver
            .put_content(&Self::heartbeat_path(self.instance.id()), Bytes::from(body))
            .await
    }

    /// Deletes the heartbeat: the next process (or another replica) takes the queue at once.
    pub async fn release(&self) {
        let _ = self
            .driver
            .delete(&Self::heartbeat_path(self.instance.id()))
            .await;
    }

    async fn heartbeat_of(&self, instance: &str) -> Option<String> {
        self.driver
            .get_content(&Self::heartbeat_path(instance))
            .await
            .ok()
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
    }

    async fn list_names(&self, dir: &str) -> Vec<String> {
        match self.driver.list_names(dir).await {
            Ok(mut n) => {
                n.sort();
                n
            }
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => {
                tracing::debug!("notifications: listing {dir}: {e}");
                Vec::new()
            }
        }
    }
}

/// An object's name: `<seq>-<events>-<first event ms>-<last event ms>`, so a queue can be
/// sized and bounded from a listing, without reading it.
fn object_name(seq: u64, events: &[Rec]) -> String {
    let ms = |r: Option<&Rec>| r.map_or(0, |r| r.time_ms);
    format!(
        "{seq:016x}-{}-{}-{}",
        events.len(),
        ms(events.first()),
        ms(events.last())
    )
}

/// What an object's name says: events, first and last event time.
fn parse_name(name: &str) -> Option<(usize, u64, u64)> {
    let mut parts = name.split('-');
    let _seq = parts.next()?;
    let count = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((count, first, last))
}

/// The events as the journal keeps them: each event's JSON on a line.
fn encode(events: &[Rec]) -> Bytes {
    let mut out = Vec::with_capacity(events.iter().map(|r| r.json.len() + 1).sum());
    for r in events {
        out.extend_from_slice(&r.json);
        out.push(b'\n');
    }
    Bytes::from(out)
}

fn decode(key: &str, body: Bytes) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let end = body[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(body.len(), |i| start + i);
        if end > start {
            match Record::from_line(body.slice(start..end)) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!("notifications: skipping an unreadable event in {key}: {e}")
                }
            }
        }
        start = end + 1;
    }
    out
}

/// Writes what the request handlers queue, in batches, and hands each batch to the delivery
/// workers. Runs until shutdown, then writes what is still queued.
pub async fn write_loop(
    journal: Arc<Journal>,
    ignores: Vec<Ignore>,
    mut rx: mpsc::Receiver<Append>,
    mut pulls: mpsc::Receiver<Append>,
    workers: Vec<mpsc::UnboundedSender<ToWorker>>,
    stats: Vec<Arc<EndpointStats>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut w = Writer {
        journal,
        ignores,
        workers,
        stats,
        failing: false,
    };
    loop {
        let mut batch: Vec<Append> = Vec::new();
        let mut stopping = tokio::select! {
            biased;
            a = rx.recv() => {
                let closed = a.is_none();
                batch.extend(a);
                closed
            }
            a = pulls.recv() => {
                let closed = a.is_none();
                batch.extend(a);
                // Pulls alone wait a moment for company, without waking this task for each
                // (only a write's events do): nobody waits on them, and one write for a burst
                // of GETs costs what one write for a single GET does.
                if !closed {
                    tokio::select! {
                        biased;
                        a = rx.recv() => batch.extend(a),
                        _ = tokio::time::sleep(PULL_LINGER) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                closed || *shutdown.borrow()
            }
            _ = shutdown.changed() => true,
        };
        // One batch; when stopping, everything that is queued.
        loop {
            fill(&mut rx, &mut batch);
            fill(&mut pulls, &mut batch);
            if batch.is_empty() {
                break;
            }
            // In the order the requests recorded them, across both queues.
            batch.sort_by_key(|a| a.seq);
            w.write(std::mem::take(&mut batch)).await;
            stopping |= *shutdown.borrow();
            if !stopping {
                break;
            }
        }
        if stopping || *shutdown.borrow() {
            // Anything that came in after the last fill.
            loop {
                fill(&mut rx, &mut batch);
                fill(&mut pulls, &mut batch);
                if batch.is_empty() {
                    return;
                }
                batch.sort_by_key(|a| a.seq);
                w.write(std::mem::take(&mut batch)).await;
            }
        }
    }
}

/// Takes what is already queued, up to [`MAX_BATCH`].
fn fill(rx: &mut mpsc::Receiver<Append>, batch: &mut Vec<Append>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(a) => batch.push(a),
            Err(_) => break,
        }
    }
}

struct Writer {
    journal: Arc<Journal>,
    ignores: Vec<Ignore>,
    workers: Vec<mpsc::UnboundedSender<ToWorker>>,
    stats: Vec<Arc<EndpointStats>>,
    failing: bool,
}

impl Writer {
    /// Journals one batch (one object per endpoint), hands it to the workers, and tells the
    /// requests waiting on it.
    async fn write(&mut self, batch: Vec<Append>) {
        let journal = &self.journal;
        let writes = self.ignores.iter().enumerate().map(|(i, ignore)| {
            let events: Vec<Rec> = batch
                .iter()
                .flat_map(|a| a.events.iter())
                .filter(|r| !ignore.drops(r))
                .cloned()
                .collect();
            async move {
                if events.is_empty() {
                    return None;
                }
                let key = journal.write(i, &events).await;
                Some((i, key, events))
            }
        });
        for (i, key, events) in futures_util::future::join_all(writes)
            .await
            .into_iter()
            .flatten()
        {
            let key = match key {
                Ok(k) => {
                    if self.failing {
                        self.failing = false;
                        tracing::info!("notifications: the event journal is writable again");
                    }
                    Some(k)
                }
                Err(e) => {
                    if !self.failing {
                        self.failing = true;
                        tracing::error!("notifications: cannot journal events in storage ({e}): they are kept in memory only until storage answers, and lost if this process stops");
                    }
                    None
                }
            };
            self.stats[i].queued(events.len() as u64);
            let _ = self.workers[i].send(ToWorker::Own(Segment::new(key, events)));
        }
        for a in batch {
            if let Some(done) = a.done {
                let _ = done.send(());
            }
        }
    }
}

/// Beats this instance's heartbeat and adopts the queues of instances that are gone.
pub async fn replicas_loop(
    journal: Arc<Journal>,
    workers: Vec<mpsc::UnboundedSender<ToWorker>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    first_scan: tokio::sync::oneshot::Sender<()>,
) {
    let every =
        (journal.orphan_after / 3).clamp(Duration::from_millis(500), Duration::from_secs(20));
    let mut seen: HashMap<String, (String, Instant)> = HashMap::new();
    let mut adopted: HashSet<(usize, String)> = HashSet::new();
    let mut first_scan = Some(first_scan);
    loop {
        adopt_orphans(&journal, &workers, &mut seen, &mut adopted, &shutdown).await;
        if let Some(done) = first_scan.take() {
            let _ = done.send(());
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = journal.beat().await {
            tracing::warn!("notifications: writing this replica's heartbeat: {e} (if this lasts {:?}, other replicas deliver this replica's queue too: duplicates, not losses)", journal.orphan_after);
        }
    }
}

/// Where an instance runs, as its heartbeat records it: host name, boot, process id and
/// start time. A process restarted after a crash on the same host (a container restarted in
/// its pod, a service restarted by systemd) sees that its predecessor's process is gone and
/// takes its queue at once, before delivering anything of its own, instead of waiting for
/// `orphanafter`.
#[derive(Debug, PartialEq)]
struct Host {
    name: String,
    boot: String,
    pid: u32,
    started: String,
}

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22): with the
/// pid, it names one process of one boot.
fn process_start(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(str::to_owned)
}

impl Host {
    fn this() -> Host {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Host {
            name: super::hostname().unwrap_or_default(),
            boot: read("/proc/sys/kernel/random/boot_id"),
            pid: std::process::id(),
            started: process_start("self").unwrap_or_default(),
        }
    }

    fn encode(&self) -> String {
        format!("{}/{}/{}/{}", self.name, self.boot, self.pid, self.started)
    }

    fn decode(s: Option<&str>) -> Option<Host> {
        let mut p = s?.splitn(4, '/');
        let (name, boot) = (p.next()?, p.next()?);
        let (pid, started) = (p.next()?.parse().ok()?, p.next()?);
        Some(Host {
            name: name.to_owned(),
            boot: boot.to_owned(),
            pid,
            started: started.to_owned(),
        })
    }

    /// Whether this (another instance's) process is certainly gone: it ran on this host, and
    /// the host rebooted since, or no process with its id and start time runs. A process of
    /// another host (or of a PID namespace this one cannot see into, which then looks like
    /// another host only if its host name differs) is never judged this way.
    fn is_gone(&self) -> bool {
        let here = Host::this();
        if self.name.is_empty() || self.name != here.name || here.boot.is_empty() {
            return false;
        }
        if self.boot != here.boot {
            return true;
        }
        if self.started.is_empty() {
            return false;
        }
        process_start(&self.pid.to_string()).is_none_or(|s| s != self.started)
    }
}

/// Whether an instance is gone, from its heartbeat (see the module documentation).
fn is_dead(
    beat: Option<&str>,
    instance: &str,
    seen: &mut HashMap<String, (String, Instant)>,
    orphan_after: Duration,
) -> bool {
    let Some(beat) = beat else {
        return true;
    };
    let mut fields = beat.split_whitespace();
    let written = fields
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(0);
    if now_ms().saturating_sub(written) > orphan_after.as_millis() as u64 {
        return true;
    }
    if Host::decode(fields.nth(1)).is_some_and(|h| h.is_gone()) {
        return true;
    }
    let entry = seen
        .entry(instance.to_owned())
        .or_insert_with(|| (beat.to_owned(), Instant::now()));
    if entry.0 != beat {
        *entry = (beat.to_owned(), Instant::now());
    }
    entry.1.elapsed() > orphan_after
}

async fn adopt_orphans(
    journal: &Journal,
    workers: &[mpsc::UnboundedSender<ToWorker>],
    seen: &mut HashMap<String, (String, Instant)>,
    adopted: &mut HashSet<(usize, String)>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) {
    let own = journal.instance.id();
    let mut verdicts: HashMap<String, bool> = HashMap::new();
    // Instances with queued events left anywhere: their heartbeat and claim must stay.
    let mut busy: HashSet<String> = HashSet::new();
    for (i, worker) in workers.iter().enumerate() {
        let dir = journal.queue_dir(i);
        for instance in journal.list_names(&dir).await {
            if instance == own {
                continue;
            }
            if *shutdown.borrow() {
                return;
            }
            let inst_dir = format!("{dir}/{instance}");
            if adopted.contains(&(i, instance.clone())) {
                // Being delivered here; once empty, the directory (a filesystem keeps it) goes.
                if journal.list_names(&inst_dir).await.is_empty() {
                    let _ = journal.driver.delete(&inst_dir).await;
                    adopted.remove(&(i, instance.clone()));
                    verdicts.insert(instance, true);
                } else {
                    busy.insert(instance);
                }
                continue;
            }
            let dead = match verdicts.get(&instance) {
                Some(d) => *d,
                None => {
                    let beat = journal.heartbeat_of(&instance).await;
                    let dead = is_dead(beat.as_deref(), &instance, seen, journal.orphan_after)
                        && claim(journal, &instance, seen).await;
                    verdicts.insert(instance.clone(), dead);
                    dead
                }
            };
            if !dead {
                continue;
            }
            let mut segments = Vec::new();
            let mut unreadable = false;
            for name in journal.list_names(&inst_dir).await {
                let key = format!("{inst_dir}/{name}");
                if let Some((count, first, last)) = parse_name(&name).filter(|n| n.0 > 0) {
                    // Read when its turn comes.
                    segments.push(Segment::unloaded(key, count, first, last));
                    continue;
                }
                match journal.read(&key).await {
                    Ok(events) if events.is_empty() => journal.remove(&key).await,
                    Ok(events) => segments.push(Segment::new(Some(key), events)),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        tracing::warn!("notifications: reading {key} of a stopped replica: {e}; trying again later");
                        unreadable = true;
                        break;
                    }
                }
            }
            if unreadable {
                busy.insert(instance);
                continue;
            }
            if segments.is_empty() {
                let _ = journal.driver.delete(&inst_dir).await;
                continue;
            }
            let n: usize = segments.iter().map(|s| s.count).sum();
            tracing::info!(
                "notifications: delivering {n} events for endpoint {} queued by stopped instance {instance}",
                journal.dirs[i]
            );
            adopted.insert((i, instance.clone()));
            busy.insert(instance);
            let _ = worker.send(ToWorker::Adopted(segments));
        }
    }
    for (instance, dead) in verdicts {
        if dead && !busy.contains(&instance) {
            // Nothing of it is left to deliver: its heartbeat and claim go.
            let _ = journal
                .driver
                .delete(&Journal::heartbeat_path(&instance))
                .await;
            let _ = journal.driver.delete(&Journal::claim_path(&instance)).await;
        }
    }
}

/// Claims a dead instance's queue: writes our name, waits for a racing replica's write to
/// land, and reads it back. A claim held by a live replica is left alone.
async fn claim(
    journal: &Journal,
    instance: &str,
    seen: &mut HashMap<String, (String, Instant)>,
) -> bool {
    let path = Journal::claim_path(instance);
    let own = journal.instance.id();
    if let Ok(holder) = journal.driver.get_content(&path).await {
        let holder = String::from_utf8_lossy(&holder).trim().to_owned();
        if holder == own {
            return true;
        }
        let beat = journal.heartbeat_of(&holder).await;
        if !is_dead(beat.as_deref(), &holder, seen, journal.orphan_after) {
            return false;
        }
    }
    if journal
        .driver
        .put_content(&path, Bytes::from(own.to_owned()))
        .await
        .is_err()
    {
        return false;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    matches!(journal.driver.get_content(&path).await, Ok(b) if b.as_ref() == own.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_crashed_predecessor_on_this_host_is_gone_at_once() {
        let here = Host::this();
        assert_eq!(Host::decode(Some(&here.encode())), Some(Host::this()));
        assert!(!here.is_gone(), "this process is alive");
        let gone_pid = Host {
            pid: u32::MAX - 1,
            ..Host::this()
        };
        assert!(gone_pid.is_gone(), "no such process");
        let restarted = Host {
            started: "1".to_owned(),
            ..Host::this()
        };
        assert!(
            restarted.is_gone(),
            "same pid, another process (a restarted container)"
        );
        let rebooted = Host {
            boot: "another-boot".to_owned(),
            ..Host::this()
        };
        assert!(rebooted.is_gone());
        let elsewhere = Host {
            name: "another-host".to_owned(),
            pid: u32::MAX - 1,
            ..Host::this()
        };
        assert!(
            !elsewhere.is_gone(),
            "another host's process is judged by its heartbeat"
        );
        // A heartbeat of another host, fresh: alive until it stops changing.
        let mut seen = HashMap::new();
        let beat = format!("{} 3 {}", now_ms(), elsewhere.encode());
        assert!(!is_dead(
            Some(&beat),
            "x",
            &mut seen,
            Duration::from_secs(60)
        ));
        let beat = format!("{} 3 {}", now_ms(), gone_pid.encode());
        assert!(is_dead(
            Some(&beat),
            "y",
            &mut seen,
            Duration::from_secs(60)
        ));
        assert!(is_dead(None, "z", &mut seen, Duration::from_secs(60)));
        let old = format!("{} 3", now_ms() - 120_000);
        assert!(is_dead(Some(&old), "w", &mut seen, Duration::from_secs(60)));
    }

    #[test]
    fn object_names_carry_count_and_times() {
        let r = |ms: u64| {
            Arc::new(Record {
                json: Bytes::from(format!(
                    r#"{{"id":"i","timestamp":"{}","action":"push","target":{{"mediaType":"m"}}}}"#,
                    berth_core::time::rfc3339_nanos(UNIX_EPOCH + Duration::from_millis(ms))
                )),
                time_ms: ms,
                action: "push".to_owned(),
                media_type: "m".to_owned(),
            })
        };
        let events = [r(1_700_000_000_000), r(1_700_000_001_500)];
        let name = object_name(26, &events);
        assert!(name.starts_with("000000000000001a-2-"), "{name}");
        let (n, first, last) = parse_name(&name).unwrap();
        assert_eq!(n, 2);
        assert_eq!(last - first, 1500);
        assert_eq!(decode("k", encode(&events)), events.to_vec());
        assert!(decode("k", Bytes::from_static(b"{not json}\n")).is_empty());
    }
}
