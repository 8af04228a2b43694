//! `berth garbage-collect`: deletes blobs no manifest references (and, on request, manifests
//! no tag reaches) on the configured storage; see `berth_registry::gc` for the semantics.
//! Deletions go to stdout one per line, progress and the summary to stderr; `--quiet` keeps
//! only warnings and errors.
//!
//! [`Mode::AsDistribution`] is `registry garbage-collect`: distribution's collector is offline
//! (it deletes everything unreferenced at once, and is only safe with the registry stopped or
//! read-only). A cron job written for it must get a safe result whatever the registry is doing,
//! so it runs online (with the grace period) unless the configuration says the storage is
//! read-only (`storage.maintenance.readonly`), the set-up distribution documents for it: then
//! it is offline, and deletes exactly what distribution's would.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_registry::gc::{self, Event, GcOptions, Progress};
use berth_server::config::{self, StorageDriver};

/// Online (with a grace period) or offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `berth garbage-collect`: online, unless `--offline`.
    Online,
    /// `berth garbage-collect --offline`.
    Offline,
    /// `registry garbage-collect`: offline when the configuration makes the storage read-only,
    /// online otherwise (see the module documentation).
    AsDistribution,
}

/// The command's options (see `main.rs` for their help).
pub struct Args<'a> {
    pub config: Option<&'a std::path::Path>,
    pub dry_run: bool,
    pub delete_untagged: bool,
    pub mode: Mode,
    /// Only warnings and errors: no list of deletions, no progress, no summary.
    pub quiet: bool,
    pub grace: Option<&'a str>,
    /// Hidden: accept a grace period below the 15-minute floor (tests).
    pub short_grace: bool,
    pub progress_every: Duration,
}

pub fn garbage_collect(args: Args<'_>) -> anyhow::Result<ExitCode> {
    let loaded = match config::load(args.config, std::env::vars()) {
        Ok(l) => l,
        Err(e) => {
            crate::print_problems(&e);
            return Ok(ExitCode::FAILURE);
        }
    };
    init_logging();
    let cfg = &loaded.config;
    let offline = match args.mode {
        Mode::Online => false,
        Mode::Offline => true,
        Mode::AsDistribution => cfg.storage.maintenance.readonly.enabled,
    };
    let grace = if offline {
        None
    } else {
        // How to ask for an offline run, in the words of the command that was used.
        let offline_hint = match args.mode {
            Mode::AsDistribution => {
                "give it a configuration with storage.maintenance.readonly.enabled: true"
            }
            _ => "use --offline",
        };
        Some(grace(cfg, args.grace, args.short_grace, offline_hint)?)
    };
    let quiet = args.quiet;
    // Informational lines on stderr, which `--quiet` silences.
    let say = move |line: std::fmt::Arguments<'_>| {
        if !quiet {
            eprintln!("gc: {line}");
        }
    };
    let opts = GcOptions {
        dry_run: args.dry_run,
        delete_untagged: args.delete_untagged,
        grace,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (driver, described) = open_driver(cfg).await?;
        say(format_args!("storage: {described}"));
        // The collector itself touches nothing.
        let registry = berth_registry::Registry::new(
            driver,
            berth_registry::Options {
                delete_enabled: true,
                touch_interval: None,
            },
        )
        .with_cache(berth_server::setup::cache(cfg).map_err(anyhow::Error::msg)?);
        match grace {
            Some(g) => say(format_args!(
                "online: content written or touched in the last {} is kept (a registry may keep serving pushes)",
                show(g)
            )),
            None if args.mode == Mode::AsDistribution => say(format_args!(
                "offline (storage.maintenance.readonly is enabled): everything unreferenced is deleted"
            )),
            None => say(format_args!(
                "offline: the registry must be stopped or read-only while this runs"
            )),
        }
        if opts.dry_run {
            say(format_args!("dry run: nothing will be deleted"));
        }
        let progress = Arc::new(Progress::default());
        let ticker = {
            let progress = progress.clone();
            let every = args.progress_every;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    say(format_args!("{}", progress.describe()));
                }
            })
        };
        let dry = opts.dry_run;
        let events = move |e: &Event| {
            let verb = if dry { "would delete" } else { "deleted" };
            match e {
                Event::Warning(w) => eprintln!("gc: warning: {w}"),
                _ if quiet => {}
                Event::Manifest { repo, digest } => outln!("{verb} manifest {repo}@{digest}"),
                Event::Blob { digest, size } => outln!("{verb} blob {digest} ({size} bytes)"),
                Event::LayerLink { repo, digest } => {
                    outln!("{verb} layer link {repo} -> {digest}")
                }
            }
        };
        let result = registry.garbage_collect(&opts, &progress, &events).await;
        ticker.abort();
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                eprintln!("gc: error: {e}");
                return Ok(ExitCode::FAILURE);
            }
        };
        for e in &report.errors {
            eprintln!("gc: error: {e}");
        }
        say(format_args!("{}", report.summary()));
        Ok(if report.errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// The grace period: `--grace`, else `storage.maintenance.gc.grace`, else 1h; at least 15
/// minutes (unless the hidden test flag says otherwise) and three touch intervals.
fn grace(
    cfg: &config::Config,
    flag: Option<&str>,
    short_ok: bool,
    offline_hint: &str,
) -> anyhow::Result<Duration> {
    let configured = cfg
        .storage
        .maintenance
        .gc
        .as_ref()
        .and_then(|g| g.grace.as_deref());
    let g = match flag.or(configured) {
        Some(s) => config::parse_duration(s)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("grace period {s:?}"))?,
        None => gc::DEFAULT_GRACE,
    };
    if g < gc::MIN_GRACE && !short_ok {
        bail!(
            "a grace period of {} is too short to be safe (at least {}); with the registry stopped or read-only, {offline_hint} instead",
            show(g),
            show(gc::MIN_GRACE)
        );
    }
    let Some(ti) =
        berth_server::maintenance::configured_touch_interval(cfg).map_err(anyhow::Error::msg)?
    else {
        bail!("storage.maintenance.gc.touchinterval is 0: the registry does not refresh what it serves, so an online collection is not safe; stop the registry (or make it read-only) and {offline_hint}");
    };
    if g < ti * 3 {
        bail!(
            "the grace period ({}) must be at least three times storage.maintenance.gc.touchinterval ({})",
            show(g),
            show(ti)
        );
    }
    Ok(g)
}

fn show(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Warnings (a Redis that is down, a failed touch) on stderr; `RUST_LOG` overrides.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// The storage driver a configuration names, for commands that work on the storage without
/// serving (`garbage-collect`, `tokens`), and how to describe it.
pub(crate) async fn open_driver(
    cfg: &berth_server::config::Config,
) -> anyhow::Result<(Arc<dyn berth_storage::StorageDriver>, String)> {
    Ok(match cfg.storage.driver() {
        StorageDriver::Filesystem(fs) => (
            Arc::new(
                berth_storage::FilesystemDriver::new(&fs.rootdirectory)
                    .inline_io(fs.inlineio.unwrap_or(true)),
            ),
            format!("filesystem at {}", fs.rootdirectory),
        ),
        StorageDriver::S3(s3) => {
            let c = berth_server::setup::s3_config(&s3, false);
            let described = format!("s3 bucket {} root {:?}", c.bucket, c.root_directory);
            let d = berth_storage::S3Driver::new(c)
                .await
                .map_err(anyhow::Error::msg)?;
            d.check_bucket().await.map_err(anyhow::Error::msg)?;
            (Arc::new(d), described)
        }
        StorageDriver::InMemory => {
            bail!("storage is inmemory: it lives in the serving process, there is nothing to work on from another one")
        }
    })
}
