//! `berth-conformance --url URL [--known-gaps FILE]`: runs the OCI distribution-spec checks
//! against a registry and exits non-zero on any unexpected result.

use std::collections::BTreeSet;
use std::process::ExitCode;

use berth_conformance::{parse_gaps, run, Gaps, Options, Workflow};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "berth-conformance",
    about = "Black-box OCI distribution-spec v1.1 conformance checks against any registry URL"
)]
struct Args {
    /// Base URL of the registry, e.g. http://127.0.0.1:5000
    #[arg(long)]
    url: String,
    /// First path component of every repository the run creates.
    #[arg(long, default_value = "conformance")]
    namespace: String,
    /// Only these workflows (pull, push, discovery, management, errors, extensions); repeatable.
    #[arg(long = "workflow", value_name = "NAME")]
    workflows: Vec<String>,
    /// A file of check ids this registry is known to fail (one per line, # comments).
    #[arg(long, value_name = "FILE")]
    known_gaps: Option<std::path::PathBuf>,
    /// Basic-auth user (with --password, or $BERTH_CONFORMANCE_PASSWORD).
    #[arg(long)]
    user: Option<String>,
    #[arg(long, env = "BERTH_CONFORMANCE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut opts = Options::new(&args.url);
    opts.namespace = args.namespace;
    if !args.workflows.is_empty() {
        let mut set = BTreeSet::new();
        for w in &args.workflows {
            match Workflow::parse(w) {
                Some(w) => {
                    set.insert(w);
                }
                None => {
                    eprintln!("berth-conformance: unknown workflow {w:?}");
                    return ExitCode::from(2);
                }
            }
        }
        opts.workflows = set;
    }
    if let Some(user) = &args.user {
        let creds = format!("{user}:{}", args.password.as_deref().unwrap_or(""));
        opts.authorization = Some(format!("Basic {}", base64(creds.as_bytes())));
    }
    let gaps = match &args.known_gaps {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => parse_gaps(&t),
            Err(e) => {
                eprintln!("berth-conformance: reading {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => Gaps::default(),
    };
    let report = run(&opts);
    print!("{}", report.render(&gaps));
    let verdict = report.judge(&gaps);
    if verdict.ok() {
        println!("verdict: OK");
        ExitCode::SUCCESS
    } else {
        print!("{verdict}");
        println!("verdict: FAILED");
        ExitCode::FAILURE
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
