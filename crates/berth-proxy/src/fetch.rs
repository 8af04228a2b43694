//! One upstream download of a blob, shared by every client that asks for it meanwhile.
//!
//! A fetch task streams the upstream bytes into a local *spool* file and, at the same time,
//! into an ordinary upload session of the registry (which verifies the digest again before
//! anything becomes visible). Every client, the first one included, reads the spool from the
//! offset it wants and follows it as it grows, so late joiners stream too and no client's
//! memory grows with the blob. The last byte is held back from every reader until the fetch
//! has checked the digest: a blob that does not match its digest ends every reader's
//! transfer with an error (an aborted transfer, never a clean 200), and nothing is cached.
//! The spool file is removed when the fetch and its last reader are done.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use sha2::Digest as _;
use tokio::sync::watch;

/// Bytes read from the spool per chunk sent to a client.
const READ_CHUNK: usize = 256 * 1024;

/// Where a fetch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Bytes in the spool so far.
    Receiving(u64),
    /// All of it, digest verified.
    Complete(u64),
    /// Broken off or wrong digest.
    Failed(String),
}

pub struct Fetch {
    spool: tempfile::NamedTempFile,
    progress: watch::Receiver<Progress>,
    /// The blob's size as upstream announced it.
    pub size: Option<u64>,
}

/// The writing side, owned by the fetch task.
pub struct FetchWriter {
    file: Option<std::fs::File>,
    progress: watch::Sender<Progress>,
    written: u64,
    hasher: Hasher,
}

/// The digest's algorithm, hashed as the bytes arrive.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn for_digest(digest: &str) -> Hasher {
        if digest.starts_with("sha512:") {
            Hasher::Sha512(sha2::Sha512::new())
        } else {
            Hasher::Sha256(sha2::Sha256::new())
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn digest(self) -> String {
        let (alg, bytes) = match self {
            Hasher::Sha256(h) => ("sha256", h.finalize().to_vec()),
            Hasher::Sha512(h) => ("sha512", h.finalize().to_vec()),
        };
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{alg}:{hex}")
    }
}

impl Fetch {
    /// A new fetch of `digest` with its spool in `dir`.
    pub fn create(
        dir: &Path,
        digest: &str,
        size: Option<u64>,
    ) -> std::io::Result<(Arc<Fetch>, FetchWriter)> {
        let spool = tempfile::Builder::new()
            .prefix("berth-spool-")
            .tempfile_in(dir)?;
        let file = spool.reopen()?;
        let (tx, rx) = watch::channel(Progress::Receiving(0));
        Ok((
            Arc::new(Fetch {
                spool,
                progress: rx,
                size,
            }),
            FetchWriter {
                file: Some(file),
                progress: tx,
                written: 0,
                hasher: Hasher::for_digest(digest),
            },
        ))
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Streams the blob from `offset` for `len` bytes (or to its end) as the fetch delivers it.
    pub fn reader(
        self: &Arc<Self>,
        offset: u64,
        len: Option<u64>,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        struct State {
            fetch: Arc<Fetch>,
            progress: watch::Receiver<Progress>,
            file: Option<std::fs::File>,
            pos: u64,
            end: Option<u64>,
        }
        let state = State {
            fetch: self.clone(),
            progress: self.progress.clone(),
            file: None,
            pos: offset,
            end: len.map(|l| offset + l),
        };
        futures_util::stream::unfold(Some(state), |state| async move {
            let mut st = state?;
            loop {
                let p = st.progress.borrow_and_update().clone();
                // Everything but the last byte may go out before the digest is checked.
                let available = match &p {
                    Progress::Receiving(w) => w.saturating_sub(1),
                    Progress::Complete(w) => *w,
                    Progress::Failed(why) => {
                        return Some((
                            Err(std::io::Error::other(format!(
                                "upstream fetch failed: {why}"
                            ))),
                            None,
                        ));
                    }
                };
                let limit = st.end.map_or(available, |e| e.min(available));
                if st.pos < limit {
                    let want = ((limit - st.pos) as usize).min(READ_CHUNK);
                    if st.file.is_none() {
                        match st.fetch.spool.reopen() {
                            Ok(f) => st.file = Some(f),
                            Err(e) => return Some((Err(e), None)),
                        }
                    }
                    let mut file = st.file.take()?;
                    let pos = st.pos;
                    let read = tokio::task::spawn_blocking(
                        move || -> std::io::Result<(std::fs::File, Bytes)> {
                            file.seek(SeekFrom::Start(pos))?;
                            let mut buf = BytesMut::zeroed(want);
                            file.read_exact(&mut buf)?;
                            Ok((file, buf.freeze()))
                        },
                    )
                    .await;
                    return match read {
                        Ok(Ok((file, chunk))) => {
                            st.pos += chunk.len() as u64;
                            st.file = Some(file);
                            Some((Ok(chunk), Some(st)))
                        }
                        Ok(Err(e)) => Some((Err(e), None)),
                        Err(e) => Some((Err(std::io::Error::other(e)), None)),
                    };
                }
                let finished =
                    matches!(p, Progress::Complete(w) if st.pos >= st.end.map_or(w, |e| e.min(w)));
                if finished {
                    return None;
                }
                if st.progress.changed().await.is_err() {
                    // The fetch task went away without saying how it ended.
                    return Some((Err(std::io::Error::other("upstream fetch abandoned")), None));
                }
            }
        })
    }
}

impl FetchWriter {
    /// Appends a chunk to the spool and lets readers see it.
    pub async fn write(&mut self, chunk: &Bytes) -> std::io::Result<()> {
        self.hasher.update(chunk);
        let mut file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("spool failed earlier"))?;
        let data = chunk.clone();
        let file = tokio::task::spawn_blocking(move || file.write_all(&data).map(|()| file))
            .await
            .map_err(std::io::Error::other)??;
        self.file = Some(file);
        self.written += chunk.len() as u64;
        self.progress
            .send_replace(Progress::Receiving(self.written));
        Ok(())
    }

    /// Ends the fetch: complete when the bytes hash to `expected`, failed otherwise.
    pub fn finish(self, expected: &str) -> Result<u64, String> {
        let got = self.hasher.digest();
        if got == expected {
            self.progress.send_replace(Progress::Complete(self.written));
            Ok(self.written)
        } else {
            let why = format!("upstream sent bytes with digest {got}, not {expected}");
            self.progress.send_replace(Progress::Failed(why.clone()));
            Err(why)
        }
    }

    /// Ends the fetch as failed.
    pub fn fail(self, why: &str) {
        self.progress.send_replace(Progress::Failed(why.to_owned()));
    }
}
