//! A black-box conformance runner for the OCI distribution-spec v1.1
//! (<https://github.com/opencontainers/distribution-spec/blob/v1.1.1/spec.md>). It speaks plain
//! HTTP to any registry URL and knows nothing about Berth's code, so the same checks can be run
//! against distribution to show that the checks themselves are right.
//!
//! Checks are grouped in the spec's workflows (pull, push, content discovery, content
//! management) plus the error cases and distribution's extensions that clients rely on (the
//! catalog). Every check has a stable id (`push/chunked`, ...); a *known gaps* file lists the
//! ids a given registry is expected to fail, so a run is judged by its unexpected results in
//! both directions: a new failure, or a listed gap that now passes (the list must stay true).
//!
//! Each run works in repositories under `<namespace>/<run id>/`, so runs never collide.

use std::collections::BTreeSet;
use std::fmt;

pub mod client;
pub mod fixtures;
mod workflows;

use client::Client;

/// The groups of checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workflow {
    Pull,
    Push,
    Discovery,
    Management,
    Errors,
    Extensions,
}

impl Workflow {
    pub const ALL: [Workflow; 6] = [
        Workflow::Pull,
        Workflow::Push,
        Workflow::Discovery,
        Workflow::Management,
        Workflow::Errors,
        Workflow::Extensions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Workflow::Pull => "pull",
            Workflow::Push => "push",
            Workflow::Discovery => "discovery",
            Workflow::Management => "management",
            Workflow::Errors => "errors",
            Workflow::Extensions => "extensions",
        }
    }

    pub fn parse(s: &str) -> Option<Workflow> {
        Workflow::ALL.into_iter().find(|w| w.as_str() == s)
    }
}

/// What to run against.
#[derive(Debug, Clone)]
pub struct Options {
    /// The registry's base URL, e.g. `http://127.0.0.1:5000`.
    pub url: String,
    /// The first component of every repository the run creates.
    pub namespace: String,
    /// An `Authorization` header value sent with every request (e.g. `Basic ...`).
    pub authorization: Option<String>,
    /// The workflows to run.
    pub workflows: BTreeSet<Workflow>,
}

impl Options {
    pub fn new(url: &str) -> Options {
        Options {
            url: url.to_owned(),
            namespace: "conformance".to_owned(),
            authorization: None,
            workflows: Workflow::ALL.into_iter().collect(),
        }
    }
}

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// `workflow/name`, stable across versions (known-gaps files refer to it).
    pub id: String,
    /// What the check asserts, in one line (with the spec's words where it has them).
    pub what: &'static str,
    pub outcome: Outcome,
}

/// Everything a run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub results: Vec<CheckResult>,
}

/// A run judged against a known-gaps list.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Failed and not listed as a known gap.
    pub unexpected_failures: Vec<String>,
    /// Listed as a known gap but passed: the list is out of date.
    pub unexpected_passes: Vec<String>,
    /// Listed ids that no check has (typos, renamed checks).
    pub unknown_gaps: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.unexpected_failures.is_empty()
            && self.unexpected_passes.is_empty()
            && self.unknown_gaps.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for id in &self.unexpected_failures {
            writeln!(f, "unexpected failure: {id}")?;
        }
        for id in &self.unexpected_passes {
            writeln!(f, "known gap now passes (update the gaps file): {id}")?;
        }
        for id in &self.unknown_gaps {
            writeln!(f, "gaps file names no such check: {id}")?;
        }
        Ok(())
    }
}

/// The checks a registry is known to fail.
#[derive(Debug, Clone, Default)]
pub struct Gaps {
    /// Must fail.
    pub fail: BTreeSet<String>,
    /// May fail or pass (the registry's answer varies, e.g. with directory order).
    pub varies: BTreeSet<String>,
}

impl Gaps {
    pub fn contains(&self, id: &str) -> bool {
        self.fail.contains(id) || self.varies.contains(id)
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        self.fail.iter().chain(self.varies.iter())
    }
}

/// Parses a known-gaps file: one check id per line, `? id` for a result that varies; `#`
/// starts a comment.
pub fn parse_gaps(text: &str) -> Gaps {
    let mut gaps = Gaps::default();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(id) = line.strip_prefix('?') {
            gaps.varies.insert(id.trim().to_owned());
        } else if !line.is_empty() {
            gaps.fail.insert(line.to_owned());
        }
    }
    gaps
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == Outcome::Pass)
            .count()
    }

    pub fn failed(&self) -> impl Iterator<Item = &CheckResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
    }

    /// Judges the run against a set of known gaps.
    pub fn judge(&self, gaps: &Gaps) -> Verdict {
        let mut v = Verdict::default();
        for r in &self.results {
            match &r.outcome {
                Outcome::Fail(_) if !gaps.contains(&r.id) => {
                    v.unexpected_failures.push(r.id.clone())
                }
                Outcome::Pass if gaps.fail.contains(&r.id) => {
                    v.unexpected_passes.push(r.id.clone())
                }
                _ => {}
            }
        }
        let ran: BTreeSet<&str> = self.results.iter().map(|r| r.id.as_str()).collect();
        let ran_workflows: BTreeSet<&str> = self
            .results
            .iter()
            .filter_map(|r| r.id.split('/').next())
            .collect();
        for g in gaps.all() {
            let wf = g.split('/').next().unwrap_or("");
            // A gap in a workflow that was not run is not "unknown", just not exercised.
            if !ran.contains(g.as_str()) && ran_workflows.contains(wf) {
                v.unknown_gaps.push(g.clone());
            }
        }
        v
    }

    /// A human-readable listing: one line per check, failure reasons indented.
    pub fn render(&self, gaps: &Gaps) -> String {
        let mut out = String::new();
        for r in &self.results {
            let gap = if gaps.contains(&r.id) {
                " (known gap)"
            } else {
                ""
            };
            match &r.outcome {
                Outcome::Pass => out.push_str(&format!("PASS {}{gap}\n", r.id)),
                Outcome::Fail(why) => {
                    out.push_str(&format!("FAIL {}{gap}: {}\n", r.id, r.what));
                    for line in why.lines() {
                        out.push_str(&format!("       {line}\n"));
                    }
                }
            }
        }
        let failed = self.failed().count();
        out.push_str(&format!(
            "{} checks: {} passed, {} failed\n",
            self.results.len(),
            self.passed(),
            failed
        ));
        out
    }
}

/// The state the checks share: the client and the run's repository prefix.
pub(crate) struct Ctx {
    pub c: Client,
    /// `<namespace>/<run id>`
    pub prefix: String,
    results: Vec<CheckResult>,
}

impl Ctx {
    /// A repository of this run.
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// Runs one check and records its outcome. A check returns `Err(reason)` on failure.
    pub fn check(
        &mut self,
        id: &str,
        what: &'static str,
        f: impl FnOnce(&Ctx) -> Result<(), String>,
    ) {
        let outcome = match f(self) {
            Ok(()) => Outcome::Pass,
            Err(why) => Outcome::Fail(why),
        };
        self.results.push(CheckResult {
            id: id.to_owned(),
            what,
            outcome,
        });
    }
}

/// A run id: lower-case hex from the clock and the process id (unique enough per registry).
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}

/// Runs the selected workflows against the registry.
pub fn run(opts: &Options) -> Report {
    let mut ctx = Ctx {
        c: Client::new(&opts.url, opts.authorization.clone()),
        prefix: format!("{}/{}", opts.namespace, run_id()),
        results: Vec::new(),
    };
    ctx.check(
        "base/api-version",
        "GET /v2/ answers 200 (end-1)",
        workflows::base,
    );
    for wf in &opts.workflows {
        match wf {
            Workflow::Pull => workflows::pull::run(&mut ctx),
            Workflow::Push => workflows::push::run(&mut ctx),
            Workflow::Discovery => workflows::discovery::run(&mut ctx),
            Workflow::Management => workflows::management::run(&mut ctx),
            Workflow::Errors => workflows::errors::run(&mut ctx),
            Workflow::Extensions => workflows::extensions::run(&mut ctx),
        }
    }
    // Every 4xx JSON error body of the whole run must use the spec's codes.
    let violations = ctx.c.code_violations.borrow().clone();
    ctx.check(
        "errors/spec-error-codes",
        "every 4xx JSON error body uses only the spec's error codes",
        |_| {
            if violations.is_empty() {
                Ok(())
            } else {
                Err(violations.join("\n"))
            }
        },
    );
    Report {
        results: ctx.results,
    }
}

/// `ensure!(condition, "format", args...)`: fail the check with a message.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
pub(crate) use ensure;
