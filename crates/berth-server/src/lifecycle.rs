//! The process's phase as the HTTP side sees it: serving, or draining after a shutdown was
//! requested. Readiness reports not-ready while draining, so a load balancer stops sending new
//! requests while in-flight ones finish.

use std::sync::atomic::{AtomicBool, Ordering};

/// Shared by the listeners, the health endpoints and the shutdown path.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
}

impl Lifecycle {
    /// Marks the start of the drain: readiness fails from now on.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether a shutdown has been requested.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
