//! The compatibility suite: every configuration file in `tests/compat/` (distribution's schema,
//! written from distribution 2.8's and 3.x's documentation and source, and the way Helm charts,
//! Harbor, GitLab and distribution's own examples write them) goes through the real `berth`
//! binary, and — where the file says what distribution 2.8 does — through Debian's
//! `docker-registry` too, so the expectations are distribution's, not invented.
//!
//! Each file starts with a header of `# key: value` lines:
//!
//! - `expect: starts` or `expect: refuses <fragment>` — `berth config check` and `berth serve`
//!   both refuse, naming the fragment; a file that starts is served until `/v2/` answers.
//! - `unknown: <fragment>` (repeatable) — keys neither version knows: serve warns, and
//!   `config check` lists them and exits 1. Without it `config check` must exit 0.
//! - `warn: <fragment>` (repeatable) — a line `berth serve` must log at start.
//! - `env: NAME=value` (repeatable) — the processes' only `REGISTRY_*` variables.
//! - `args: none` — no path argument (the file is found through the environment).
//! - `serve: no <reason>` — `config check` only (the file needs a remote service).
//! - `distribution: starts | refuses | skip <reason>` — what distribution 2.8 does with it.
//! - `distribution3: starts | refuses | skip <reason>` — what distribution 3.x does with it
//!   (measured with v3.1.1).
//! - `deliberate: <reason>` — Berth knowingly differs from distribution on this file (the
//!   `distribution*` lines still state, and check, what distribution does).
//!
//! Berth must agree with each version it is run against, except that where the two versions
//! differ (v3 no longer reads 2.8's `redis.addr`, say), Berth starts: the rule is that what
//! starts either version starts Berth.
//!
//! The 2.8 cross-check always runs (CI installs Debian's `docker-registry`). Debian packages no
//! distribution 3.x, so the 3.x cross-check is an interop check run by hand: set
//! `BERTH_COMPAT_DISTRIBUTION3` to a v3 `registry` binary (built from distribution's source) and
//! each file with a `distribution3` header also goes through `registry serve FILE`, with the
//! same assertions as for 2.8. Without the variable the `distribution3` lines are not checked.
//!
//! Placeholders: `${PORT}` (the HTTP port), `${DEBUGPORT}`, `${ROOT}` (an empty storage
//! root), `${DIR}` (a scratch directory), `${CONFIG}` (the file itself), `${HTPASSWD}` (an
//! htpasswd file with user `admin`), `${CERT}`/`${KEY}` (a self-signed pair), `${REDIS}` (the
//! address of a `redis-server` started for the file), `${UPSTREAM}` (the URL of another Berth,
//! for proxies: distribution contacts its upstream at start; 3.x also pings Redis at start).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::{free_port, Redis, DISTRIBUTION_BIN};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

#[derive(Debug, Default)]
struct Header {
    expect_refuse: Option<String>,
    unknown: Vec<String>,
    warn: Vec<String>,
    env: Vec<(String, String)>,
    no_args: bool,
    serve: bool,
    tls: bool,
    distribution: Option<bool>,
    distribution3: Option<bool>,
    deliberate: bool,
}

/// `starts` / `refuses` / `skip <reason>` of a `distribution*` header line.
fn outcome(value: &str) -> Option<bool> {
    match value.split_whitespace().next() {
        Some("starts") => Some(true),
        Some("refuses") => Some(false),
        _ => None,
    }
}

fn header(text: &str, file: &str) -> Header {
    let mut h = Header {
        serve: true,
        ..Header::default()
    };
    let mut expect = None;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let Some((key, value)) = line.trim_start_matches('#').trim().split_once(':') else {
            continue;
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "expect" => expect = Some(value),
            "unknown" => h.unknown.push(value),
            "warn" => h.warn.push(value),
            "env" => {
                let (k, v) = value.split_once('=').expect("env: NAME=value");
                h.env.push((k.to_owned(), v.to_owned()));
            }
            "args" => h.no_args = value == "none",
            "tls" => h.tls = value == "yes",
            "serve" => h.serve = !value.starts_with("no"),
            "distribution" => h.distribution = outcome(&value),
            "distribution3" => h.distribution3 = outcome(&value),
            "deliberate" => h.deliberate = true,
            _ => {}
        }
    }
    match expect.as_deref() {
        Some("starts") => {}
        Some(r) if r.starts_with("refuses") => {
            h.expect_refuse = Some(r["refuses".len()..].trim().to_owned());
        }
        other => panic!(
            "{file}: header needs `# expect: starts` or `# expect: refuses ...`, has {other:?}"
        ),
    }
    h
}

/// One run's materialized file and its resources.
struct Instance {
    _dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    _redis: Option<Redis>,
    _upstream: Option<berth_testkit::Berth>,
}

fn instantiate(text: &str, h: &Header) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut vars: BTreeMap<&str, String> = BTreeMap::new();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    let config = dir.path().join("config.yml");
    vars.insert("PORT", port.to_string());
    vars.insert("DEBUGPORT", free_port().to_string());
    vars.insert("ROOT", root.display().to_string());
    vars.insert("DIR", dir.path().display().to_string());
    vars.insert("CONFIG", config.display().to_string());
    let all = format!("{text}{:?}", h.env);
    if all.contains("${HTPASSWD}") {
        let p = dir.path().join("htpasswd");
        let hash = bcrypt::hash("secret", 5).unwrap();
        std::fs::write(&p, format!("admin:{hash}\n")).unwrap();
        vars.insert("HTPASSWD", p.display().to_string());
    }
    if all.contains("${CERT}") || all.contains("${KEY}") {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        vars.insert("CERT", c.display().to_string());
        vars.insert("KEY", k.display().to_string());
    }
    let redis = all.contains("${REDIS}").then(Redis::start);
    if let Some(r) = &redis {
        vars.insert("REDIS", format!("127.0.0.1:{}", r.port));
    }
    let upstream = all
        .contains("${UPSTREAM}")
        .then(|| berth_testkit::Berth::start(Path::new(BERTH)));
    if let Some(u) = &upstream {
        vars.insert("UPSTREAM", u.url.clone());
    }
    let subst = |s: &str| {
        let mut out = s.to_owned();
        for (k, v) in &vars {
            out = out.replace(&format!("${{{k}}}"), v);
        }
        out
    };
    std::fs::write(&config, subst(text)).unwrap();
    let env = h.env.iter().map(|(k, v)| (k.clone(), subst(v))).collect();
    Instance {
        _dir: dir,
        config,
        port,
        env,
        _redis: redis,
        _upstream: upstream,
    }
}

/// A command with a controlled environment: nothing of the machine's `REGISTRY_*`, `AWS_*`
/// or `BERTH_*`, only the file's variables.
fn command(bin: &str, args: &[&str], inst: &Instance, h: &Header) -> Command {
    let mut c = Command::new(bin);
    c.args(args);
    if !h.no_args {
        c.arg(&inst.config);
    }
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BERTH_CONFIG_SEARCH_PATH", "")
        .envs(inst.env.iter().map(|(k, v)| (k, v)))
        .current_dir(inst.config.parent().unwrap());
    c
}

/// Runs a server until `/v2/` on `port` answers (true) or it exits (false); returns its
/// output either way.
fn serves(mut cmd: Command, port: u16, tls: bool, out: &Path) -> (bool, String) {
    let log = std::fs::File::create(out).unwrap();
    let mut child: Child = cmd
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    let started = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        // Only this process's own answer counts: another test may briefly hold a port that
        // was free when it was chosen, and answer /v2/ before this server even logs.
        if !std::fs::read_to_string(out)
            .unwrap_or_default()
            .contains("listening on")
        {
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        if tls {
            // The handshake is the server's business; a listener is the sign it started.
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let url = format!("http://127.0.0.1:{port}/v2/");
        match agent.get(&url).call() {
            Ok(_) | Err(ureq::Error::Status(..)) => break true,
            Err(_) if Instant::now() > deadline => break false,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    (started, std::fs::read_to_string(out).unwrap_or_default())
}

fn run_file(path: &Path) -> Result<(), String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let h = header(&text, &name);
    let mut failures = Vec::new();

    // berth config check
    let inst = instantiate(&text, &h);
    let out = command(BERTH, &["config", "check"], &inst, &h)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The effective configuration is long: the messages keep its comment lines only.
    let notes: String = stdout
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let both = format!("{notes}{stderr}");
    match &h.expect_refuse {
        Some(fragment) => {
            if out.status.success() || !stderr.contains(fragment.as_str()) {
                failures.push(format!(
                    "config check should refuse with {fragment:?}; exit {:?}:\n{both}",
                    out.status.code()
                ));
            }
        }
        None => {
            let expected_ok = h.unknown.is_empty();
            if out.status.success() != expected_ok {
                failures.push(format!(
                    "config check exit {:?}, expected {}:\n{both}",
                    out.status.code(),
                    if expected_ok { "0" } else { "1 (unknown keys)" }
                ));
            }
            for u in &h.unknown {
                if !stderr.contains(u.as_str()) {
                    failures.push(format!(
                        "config check does not list unknown key {u:?}:\n{both}"
                    ));
                }
            }
            if h.unknown.is_empty() && stderr.contains("unknown configuration key") {
                failures.push(format!("unexpected unknown keys:\n{both}"));
            }
        }
    }

    // berth serve
    if h.serve || h.expect_refuse.is_some() {
        let inst = instantiate(&text, &h);
        let log = inst.config.with_extension("berth.log");
        let (started, log) = serves(
            command(BERTH, &["serve"], &inst, &h),
            inst.port,
            h.tls,
            &log,
        );
        match &h.expect_refuse {
            Some(fragment) if started || !log.contains(fragment.as_str()) => failures.push(
                format!("berth serve should refuse with {fragment:?} (started: {started}):\n{log}"),
            ),
            Some(_) => {}
            None if !started => failures.push(format!("berth serve did not start:\n{log}")),
            None => {
                for w in h.warn.iter().chain(&h.unknown) {
                    if !log.contains(w.as_str()) {
                        failures.push(format!("berth serve did not warn {w:?}:\n{log}"));
                    }
                }
            }
        }
    }

    // distribution on the same file: Debian's 2.8 always, a v3 binary when one is named
    if let Some(expected) = h.distribution {
        let other = h.distribution3;
        cross_check(
            DISTRIBUTION_BIN,
            "2.8",
            expected,
            other,
            &text,
            &h,
            &mut failures,
        );
    }
    if let (Some(expected), Ok(bin)) =
        (h.distribution3, std::env::var("BERTH_COMPAT_DISTRIBUTION3"))
    {
        let other = h.distribution;
        cross_check(&bin, "3", expected, other, &text, &h, &mut failures);
    }

    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{name}:\n  {}", failures.join("\n  ")))
    }
}

/// Runs distribution `version` (binary `bin`) on the file: it must do what the header says
/// (`expected`: starts), and agree with Berth's expectation — unless the difference is
/// deliberate, or this version refuses where the other one (`other`) starts.
fn cross_check(
    bin: &str,
    version: &str,
    expected: bool,
    other: Option<bool>,
    text: &str,
    h: &Header,
    failures: &mut Vec<String>,
) {
    let inst = instantiate(text, h);
    let log = inst
        .config
        .with_extension(format!("distribution{version}.log"));
    let (started, log) = serves(command(bin, &["serve"], &inst, h), inst.port, h.tls, &log);
    if started != expected {
        failures.push(format!(
            "distribution {version} {} this file, the header says it {}:\n{log}",
            if started { "starts with" } else { "refuses" },
            if expected { "starts" } else { "refuses" }
        ));
    }
    let berth_starts = h.expect_refuse.is_none();
    let other_starts = !started && berth_starts && other == Some(true);
    if started != berth_starts && !h.deliberate && !other_starts {
        failures.push(format!(
            "Berth and distribution {version} disagree on this file"
        ));
    }
}

#[test]
fn every_configuration_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{} files in {}",
        files.len(),
        dir.display()
    );
    // One file at a time per thread, two threads: the machine is small, each file starts up
    // to three processes.
    let only = std::env::var("COMPAT_ONLY").ok();
    let files: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| {
            only.as_deref()
                .is_none_or(|o| f.to_string_lossy().contains(o))
        })
        .collect();
    assert!(
        !files.is_empty(),
        "no configuration file matches COMPAT_ONLY={only:?}"
    );
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let (a, b) = files.split_at(files.len() / 2);
        let ha = s.spawn(|| a.iter().map(|f| run_file(f)).collect::<Vec<_>>());
        let hb = s.spawn(|| b.iter().map(|f| run_file(f)).collect::<Vec<_>>());
        let mut r = ha.join().unwrap();
        r.extend(hb.join().unwrap());
        r
    });
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failed.is_empty(),
        "{} of {} files failed:\n\n{}",
        failed.len(),
        files.len(),
        failed.join("\n\n")
    );
}
