//! Configuration: distribution's YAML schema ([`schema`]), where to find the file, the
//! `REGISTRY_<SECTION>_<KEY>` environment overrides, and the checks `berth config check`
//! reports — every problem at once, each with where it is.
//!
//! Unknown keys are errors that name the key and its line. The structs themselves accept
//! unknown keys; loading collects every key serde ignored (`serde_ignored`), so one pass finds
//! all of them rather than stopping at the first.
//!
//! Environment overrides follow distribution's rule: the variable's name after `REGISTRY_` is
//! split at `_` into a key path (`REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`), and the value is
//! read as YAML into that key. Whether a path names a real key is decided by the schema itself:
//! the override is applied to a copy, and if the schema ignores the new key, the variable is
//! ignored with a warning (Kubernetes injects `REGISTRY_PORT=tcp://…` and friends for a Service
//! called `registry`; podman sets `REGISTRY_AUTH_FILE`). Values are never echoed: they may be
//! secrets.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

pub mod schema;
pub mod validation;

pub use schema::{Config, StorageDriver};

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Given on the command line.
    Explicit(PathBuf),
    /// Named by `$BERTH_CONFIG`.
    Env(PathBuf),
    /// Found at a standard location.
    Standard(PathBuf),
    /// No file: the embedded defaults.
    Embedded,
}

impl ConfigSource {
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Explicit(p) | ConfigSource::Env(p) | ConfigSource::Standard(p) => Some(p),
            ConfigSource::Embedded => None,
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Explicit(p) => write!(f, "{} (given on the command line)", p.display()),
            ConfigSource::Env(p) => write!(f, "{} (named by $BERTH_CONFIG)", p.display()),
            ConfigSource::Standard(p) => write!(f, "{} (standard location)", p.display()),
            ConfigSource::Embedded => f.write_str(
                "no configuration file found ($BERTH_CONFIG, /etc/distribution/config.yml, \
                 /etc/docker/registry/config.yml); using the embedded defaults",
            ),
        }
    }
}

/// A problem that prevents using the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line:col`, a key path such as `storage`, or an environment variable name.
    pub location: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.problems.iter().map(ToString::to_string).collect();
        f.write_str(&all.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// A usable configuration and what the operator should hear about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: ConfigSource,
    /// Ignored environment variables and other non-fatal findings.
    pub warnings: Vec<String>,
    /// Configured features Berth does not implement yet.
    pub unsupported: Vec<String>,
}

/// The standard locations, in the order they are tried after `$BERTH_CONFIG`.
pub const STANDARD_PATHS: [&str; 2] = [
    "/etc/distribution/config.yml",
    "/etc/docker/registry/config.yml",
];

/// The data directory of the embedded default configuration, relative to the working directory.
pub const DEFAULT_ROOT: &str = "berth-data";

/// Loads the configuration: `explicit`, else `$BERTH_CONFIG`, else the standard paths, else
/// the embedded defaults; then applies the `REGISTRY_*` variables among `env`.
pub fn load(
    explicit: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let env: Vec<(String, String)> = env.into_iter().collect();
    let berth_config = env
        .iter()
        .find(|(k, _)| k == "BERTH_CONFIG")
        .map(|(_, v)| PathBuf::from(v));
    // Packagers (and tests) can replace the standard locations with a colon-separated list.
    let standard: Vec<PathBuf> = match env.iter().find(|(k, _)| k == "BERTH_CONFIG_SEARCH_PATH") {
        Some((_, list)) => list
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        None => STANDARD_PATHS.iter().map(PathBuf::from).collect(),
    };
    load_from(explicit, berth_config.as_deref(), &standard, &env)
}

/// [`load`] with the search list given (for tests).
pub fn load_from(
    explicit: Option<&Path>,
    berth_config: Option<&Path>,
    standard: &[PathBuf],
    env: &[(String, String)],
) -> Result<Loaded, ConfigError> {
    let source = if let Some(p) = explicit {
        ConfigSource::Explicit(p.to_path_buf())
    } else if let Some(p) = berth_config.filter(|p| !p.as_os_str().is_empty()) {
        ConfigSource::Env(p.to_path_buf())
    } else if let Some(p) = standard.iter().find(|p| p.is_file()) {
        ConfigSource::Standard(p.clone())
    } else {
        ConfigSource::Embedded
    };
    let (text, file_label) = match source.path() {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (t, p.display().to_string()),
            Err(e) => {
                return Err(ConfigError {
                    problems: vec![Problem {
                        location: p.display().to_string(),
                        message: format!("cannot read: {e}"),
                    }],
                })
            }
        },
        None => (
            format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {DEFAULT_ROOT}\n"),
            "embedded".to_owned(),
        ),
    };
    let mut loaded = parse(&text, &file_label, env)?;
    loaded.source = source;
    Ok(loaded)
}

/// Parses a configuration text, applies environment overrides, and checks it.
pub fn parse(
    text: &str,
    file_label: &str,
    env: &[(String, String)],
) -> Result<Loaded, ConfigError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    // Pass 1, on the text itself: syntax and type errors with their line, and every unknown key.
    let mut unknown = Vec::new();
    let first = serde_ignored::deserialize(serde_yaml::Deserializer::from_str(text), |p| {
        unknown.push(dotted_path(&p))
    });
    let first: Option<Config> = match first {
        Ok(c) => Some(c),
        Err(e) => {
            let location = match e.location() {
                Some(l) => format!("{file_label}:{}:{}", l.line(), l.column()),
                None => file_label.to_owned(),
            };
            problems.push(Problem {
                location,
                message: e.to_string(),
            });
            None
        }
    };
    for key in &unknown {
        let components: Vec<&str> = key.split('.').collect();
        let location = match key_line(text, &components) {
            Some((line, col)) => format!("{file_label}:{line}:{col}"),
            None => file_label.to_owned(),
        };
        problems.push(Problem {
            location,
            message: format!("unknown configuration key `{key}`"),
        });
    }
    if first.is_none() {
        return Err(ConfigError { problems });
    }

    // Pass 2, on the value tree: environment overrides.
    let mut root: Value = serde_yaml::from_str(text).unwrap_or(Value::Null);
    if root.is_null() {
        root = Value::Mapping(Mapping::new());
    }
    apply_env(&mut root, env, &mut warnings, &mut problems);
    let config = match Config::deserialize(root) {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem {
                location: "environment".to_owned(),
                message: e.to_string(),
            });
            return Err(ConfigError { problems });
        }
    };
    check(&config, &mut problems);
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    let unsupported = unsupported(&config);
    Ok(Loaded {
        config,
        source: ConfigSource::Embedded,
        warnings,
        unsupported,
    })
}

/// A key path as the operator writes it: `storage.filesystem.bogus` (serde_ignored marks
/// `Option` layers with `?`, which is not part of the file).
fn dotted_path(p: &serde_ignored::Path<'_>) -> String {
    p.to_string()
        .split('.')
        .filter(|c| *c != "?")
        .collect::<Vec<_>>()
        .join(".")
}

/// Keys the schema ignores in `root` (dotted paths).
fn ignored_keys(root: &Value) -> Result<BTreeSet<String>, serde_yaml::Error> {
    let mut out = BTreeSet::new();
    let res: Result<Config, _> = serde_ignored::deserialize(root.clone(), |p| {
        out.insert(dotted_path(&p));
    });
    res.map(|_| out)
}

/// What applying one variable came to.
enum Override {
    Applied(Value),
    NamesNoKey,
    Invalid(String),
}

fn apply_env(
    root: &mut Value,
    env: &[(String, String)],
    warnings: &mut Vec<String>,
    problems: &mut Vec<Problem>,
) {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("REGISTRY_"))
        .collect();
    vars.sort();
    for (name, value) in vars {
        let path: Vec<String> = name["REGISTRY_".len()..]
            .split('_')
            .map(str::to_ascii_lowercase)
            .collect();
        let dotted = path.join(".");
        let outcome = if path.iter().any(String::is_empty) {
            Override::NamesNoKey
        } else {
            try_override(root, &path, value)
        };
        match outcome {
            Override::Applied(candidate) => *root = candidate,
            Override::NamesNoKey => warnings.push(format!(
                "environment variable {name} names no configuration key; ignored \
                 (Kubernetes service links and other tools set REGISTRY_* variables too)"
            )),
            Override::Invalid(e) => problems.push(Problem {
                location: name.clone(),
                message: format!("invalid value for `{dotted}`: {e}"),
            }),
        }
    }
}

/// Applies one override to a copy of `root`: first with the value read as YAML (so `true` and
/// `5000` get their types), then as a plain string (for string keys whose value looks like a
/// number).
fn try_override(root: &Value, path: &[String], value: &str) -> Override {
    let baseline = ignored_keys(root).unwrap_or_default();
    let dotted = path.join(".");
    let parsed: Value =
        serde_yaml::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    let mut last_error = String::new();
    for candidate_value in [parsed, Value::String(value.to_owned())] {
        let mut candidate = root.clone();
        if path == ["storage"] {
            select_storage_driver(&mut candidate, value);
        } else {
            set_path(&mut candidate, path, candidate_value);
        }
        match ignored_keys(&candidate) {
            Ok(ignored) => {
                let names_no_key = ignored.difference(&baseline).any(|k| {
                    dotted == *k
                        || dotted.starts_with(&format!("{k}."))
                        || k.starts_with(&format!("{dotted}."))
                });
                return if names_no_key {
                    Override::NamesNoKey
                } else {
                    Override::Applied(candidate)
                };
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    // A path that goes on below a scalar key names no key either: the Service
    // `registry-auth-token` gives pods REGISTRY_AUTH_TOKEN_SERVICE_HOST (`auth.token.service` is
    // a string), `registry-version` REGISTRY_VERSION_PORT.
    if (1..path.len()).any(|i| names_scalar(root, &path[..i], &baseline)) {
        return Override::NamesNoKey;
    }
    Override::Invalid(last_error)
}

/// Whether `prefix` is a key whose value is a scalar (it accepts a string, bool or number).
fn names_scalar(root: &Value, prefix: &[String], baseline: &BTreeSet<String>) -> bool {
    let dotted = prefix.join(".");
    [
        Value::String("x".to_owned()),
        Value::Bool(true),
        Value::Number(1.into()),
    ]
    .into_iter()
    .any(|probe| {
        let mut candidate = root.clone();
        set_path(&mut candidate, prefix, probe);
        ignored_keys(&candidate).is_ok_and(|ignored| {
            !ignored
                .difference(baseline)
                .any(|k| dotted == *k || dotted.starts_with(&format!("{k}.")))
        })
    })
}

/// `REGISTRY_STORAGE=<driver>` replaces the configured driver, keeping the common keys.
fn select_storage_driver(root: &mut Value, driver: &str) {
    const DRIVERS: [&str; 7] = [
        "filesystem",
        "inmemory",
        "s3",
        "azure",
        "gcs",
        "swift",
        "oss",
    ];
    let Some(map) = root.as_mapping_mut() else {
        return;
    };
    let storage = map
        .entry(Value::String("storage".to_owned()))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !storage.is_mapping() {
        *storage = Value::Mapping(Mapping::new());
    }
    if let Some(s) = storage.as_mapping_mut() {
        for d in DRIVERS {
            s.remove(d);
        }
        s.insert(
            Value::String(driver.to_ascii_lowercase()),
            Value::Mapping(Mapping::new()),
        );
    }
}

/// Sets `path` in a YAML tree, matching existing keys case-insensitively and creating maps.
fn set_path(root: &mut Value, path: &[String], value: Value) {
    let mut node = root;
    for (i, comp) in path.iter().enumerate() {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let Some(map) = node.as_mapping_mut() else {
            return;
        };
        let existing = map
            .keys()
            .find(|k| k.as_str().is_some_and(|s| s.eq_ignore_ascii_case(comp)))
            .cloned();
        let key = existing.unwrap_or_else(|| Value::String(comp.clone()));
        if i + 1 == path.len() {
            map.insert(key, value);
            return;
        }
        node = map.entry(key).or_insert(Value::Null);
    }
}

/// The 1-based line and column of a key path in block-style YAML, if it can be found.
fn key_line(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0;
    let mut parent_indent: Option<usize> = None;
    let mut found = None;
    for comp in path {
        if comp.parse::<usize>().is_ok() {
            continue; // sequence index: the next key is searched below the same parent
        }
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if let Some(p) = parent_indent {
                if indent <= p && !trimmed.starts_with("- ") {
                    break;
                }
            }
            let key_part = trimmed.trim_start_matches("- ");
            if key_part.starts_with(&format!("{comp}:")) {
                hit = Some((i, indent + (trimmed.len() - key_part.len())));
                break;
            }
        }
        let (i, col) = hit?;
        found = Some((i + 1, col + 1));
        start = i + 1;
        parent_indent = Some(col);
    }
    found
}

/// Parses a Go duration such as `10s`, `1h30m`, `500ms`, `168h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: units are ns, us, ms, s, m, h"
                ))
            }
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    // Found by fuzzing: `from_secs_f64` panics on a duration too long for a `Duration`
    // (`99999999999999999999h`) or an infinite one (`1e999s`).
    Duration::try_from_secs_f64(total).map_err(|_| format!("duration {s:?} is too long"))
}

/// Semantic checks after parsing.
fn check(c: &Config, problems: &mut Vec<Problem>) {
    let mut bad = |location: &str, message: String| {
        problems.push(Problem {
            location: location.to_owned(),
            message,
        })
    };
    if let Some(v) = &c.version {
        if v != "0.1" {
            bad(
                "version",
                format!("unsupported version {v:?}; only 0.1 exists"),
            );
        }
    }
    match c.storage.driver_names().as_slice() {
        [_] => {}
        [] => bad(
            "storage",
            "no storage driver configured (filesystem, inmemory or s3)".to_owned(),
        ),
        many => bad(
            "storage",
            format!(
                "exactly one storage driver may be configured, found {}",
                many.join(", ")
            ),
        ),
    }
    if let Err(problems) = validation::manifest_rules(&c.validation) {
        for (location, message) in problems {
            bad(&location, message);
        }
    }
    if let Some(p) = &c.proxy {
        let ups = p.upstreams.as_deref().unwrap_or(&[]);
        if p.remoteurl.as_deref().unwrap_or("").is_empty() && ups.is_empty() {
            bad("proxy", "set remoteurl or upstreams".to_owned());
        }
        let mut defaults = usize::from(p.remoteurl.as_deref().is_some_and(|u| !u.is_empty()));
        if let Some(Err(e)) = p.ttl.as_deref().map(crate::setup::cache_ttl) {
            bad("proxy.ttl", e);
        }
        for (i, u) in ups.iter().enumerate() {
            let at = format!("proxy.upstreams[{i}]");
            if u.name
                .parse::<berth_core::RepoName>()
                .map_or(true, |n| n.as_str().contains('/'))
            {
                bad(
                    &format!("{at}.name"),
                    format!(
                        "{:?} must be one repository name component, e.g. docker.io",
                        u.name
                    ),
                );
            }
            if !(u.remoteurl.starts_with("http://") || u.remoteurl.starts_with("https://")) {
                bad(
                    &format!("{at}.remoteurl"),
                    format!("{:?} is not an http(s) URL", u.remoteurl),
                );
            }
            if let Some(ttl) = &u.ttl {
                if let Err(e) = parse_duration(ttl) {
                    bad(&format!("{at}.ttl"), e);
                }
            }
            if let Some(Err(e)) = u.cachettl.as_deref().map(crate::setup::cache_ttl) {
                bad(&format!("{at}.cachettl"), e);
            }
            if ups[..i].iter().any(|o| o.name == u.name) {
                bad(&format!("{at}.name"), format!("{:?} is used twice", u.name));
            }
            defaults += usize::from(u.default == Some(true));
        }
        if defaults > 1 {
            bad("proxy", "only one upstream may answer names without a prefix (remoteurl, or one upstream with default: true)".to_owned());
        }
    }
    for (at, e) in crate::storage_middleware::problems(c) {
        bad(&at, e);
    }
    if let Some(s3) = &c.storage.s3 {
        for (key, v) in [("region", &s3.region), ("bucket", &s3.bucket)] {
            if v.as_deref().unwrap_or("").is_empty() {
                bad(&format!("storage.s3.{key}"), "required".to_owned());
            }
        }
        if let Some(cs) = s3.chunksize {
            if cs < berth_storage::s3::MIN_CHUNK_SIZE {
                bad(
                    "storage.s3.chunksize",
                    format!(
                        "{cs} is below S3's minimum part size {}",
                        berth_storage::s3::MIN_CHUNK_SIZE
                    ),
                );
            }
        }
        if s3.accesskey.is_some() != s3.secretkey.is_some() {
            bad(
                "storage.s3",
                "accesskey and secretkey go together".to_owned(),
            );
        }
    }
    if let Some(level) = c.log.level.as_deref().or(c.loglevel.as_deref()) {
        if ![
            "panic", "fatal", "error", "warn", "warning", "info", "debug", "trace",
        ]
        .contains(&level)
        {
            bad(
                "log.level",
                format!("unknown level {level:?} (error, warn, info, debug, trace)"),
            );
        }
    }
    if let Some(f) = c.log.formatter.as_deref() {
        if !["text", "json", "logstash"].contains(&f) {
            bad(
                "log.formatter",
                format!("unknown formatter {f:?} (text, json)"),
            );
        }
    }
    match c.http.net.as_deref() {
        None | Some("") | Some("tcp") => {
            if !valid_addr(&c.http.addr) {
                bad("http.addr", format!("{:?} is not host:port", c.http.addr));
            }
        }
        Some("unix") => {
            if c.http.addr.is_empty() {
                bad(
                    "http.addr",
                    "the Unix socket's path is required (http.net is unix)".to_owned(),
                );
            }
        }
        Some(other) => bad(
            "http.net",
            format!("unknown network {other:?} (tcp, unix; distribution refuses it too)"),
        ),
    }
    if let Some(t) = &c.http.tls {
        crate::tls::check_config(t, &mut bad);
    }
    if c.tags.maxtags < 0 {
        bad(
            "tags.maxtags",
            format!("{} is negative (0 or absent means 1000)", c.tags.maxtags),
        );
    }
    let mut durations: Vec<(&str, Option<&String>)> =
        vec![("http.draintimeout", c.http.draintimeout.as_ref())];
    if let Some(l) = &c.http.limits {
        durations.push((
            "http.limits.readheadertimeout",
            l.readheadertimeout.as_ref(),
        ));
        durations.push(("http.limits.bodyidletimeout", l.bodyidletimeout.as_ref()));
        durations.push(("http.limits.writeidletimeout", l.writeidletimeout.as_ref()));
        let range = crate::limits::MAX_HEADER_BYTES_RANGE;
        if let Some(n) = l.maxheaderbytes.filter(|n| !range.contains(n)) {
            bad(
                "http.limits.maxheaderbytes",
                format!("{n} is outside {}..={}", range.start(), range.end()),
            );
        }
    }
    if let Some(p) = &c.proxy {
        durations.push(("proxy.tagttl", p.tagttl.as_ref()));
    }
    if let Some(r) = &c.redis {
        let pool = r.pool.as_ref();
        // go-redis reads a negative duration as "off" (no timeout, no pause).
        fn unsigned(v: &Option<String>) -> Option<&String> {
            v.as_ref().filter(|s| !s.trim().starts_with('-'))
        }
        for (key, v) in [
            ("redis.dialtimeout", &r.dialtimeout),
            ("redis.readtimeout", &r.readtimeout),
            ("redis.writetimeout", &r.writetimeout),
            ("redis.minretrybackoff", &r.minretrybackoff),
            ("redis.maxretrybackoff", &r.maxretrybackoff),
            ("redis.pooltimeout", &r.pooltimeout),
            ("redis.connmaxidletime", &r.connmaxidletime),
            ("redis.connmaxlifetime", &r.connmaxlifetime),
        ] {
            durations.push((key, unsigned(v)));
        }
        if let Some(p) = pool {
            durations.push(("redis.pool.idletimeout", unsigned(&p.idletimeout)));
            durations.push(("redis.pool.maxlifetime", unsigned(&p.maxlifetime)));
        }
    }
    if let Some(u) = &c.storage.maintenance.uploadpurging {
        durations.push(("storage.maintenance.uploadpurging.age", u.age.as_ref()));
        durations.push((
            "storage.maintenance.uploadpurging.interval",
            u.interval.as_ref(),
        ));
        if u.interval.as_deref().and_then(|i| parse_duration(i).ok()) == Some(Duration::ZERO) {
            bad(
                "storage.maintenance.uploadpurging.interval",
                "must be greater than 0".to_owned(),
            );
        }
    }
    if let Some(g) = &c.storage.maintenance.gc {
        durations.push((
            "storage.maintenance.gc.touchinterval",
            g.touchinterval.as_ref(),
        ));
        durations.push(("storage.maintenance.gc.grace", g.grace.as_ref()));
    }
    let mut owned_durations: Vec<(String, Option<&String>)> = Vec::new();
    if let Some(h) = &c.health {
        if let Some(sd) = &h.storagedriver {
            durations.push(("health.storagedriver.interval", sd.interval.as_ref()));
        }
        for (i, f) in h.file.iter().flatten().enumerate() {
            if f.file.is_empty() {
                bad(&format!("health.file[{i}].file"), "required".to_owned());
            }
            owned_durations.push((format!("health.file[{i}].interval"), f.interval.as_ref()));
        }
        for (i, hc) in h.http.iter().flatten().enumerate() {
            if !(hc.uri.starts_with("http://") || hc.uri.starts_with("https://")) {
                bad(
                    &format!("health.http[{i}].uri"),
                    format!("{:?} is not an http(s) URL", hc.uri),
                );
            }
            owned_durations.push((format!("health.http[{i}].interval"), hc.interval.as_ref()));
            owned_durations.push((format!("health.http[{i}].timeout"), hc.timeout.as_ref()));
        }
        for (i, t) in h.tcp.iter().flatten().enumerate() {
            if !valid_addr(&t.addr) {
                bad(
                    &format!("health.tcp[{i}].addr"),
                    format!("{:?} is not host:port", t.addr),
                );
            }
            owned_durations.push((format!("health.tcp[{i}].interval"), t.interval.as_ref()));
            owned_durations.push((format!("health.tcp[{i}].timeout"), t.timeout.as_ref()));
        }
    }
    if let Some(t) = c.telemetry.as_ref().map(|t| &t.traces) {
        durations.push(("telemetry.traces.timeout", t.timeout.as_ref()));
        match t.protocol.as_deref() {
            None | Some("http/protobuf") | Some("http/json") => {}
            Some("grpc") => bad(
                "telemetry.traces.protocol",
                "grpc is not supported: use http/protobuf (the collector's port 4318; OpenTelemetry collectors serve both)".to_owned(),
            ),
            Some(other) => bad(
                "telemetry.traces.protocol",
                format!("unknown protocol {other:?} (http/protobuf, http/json)"),
            ),
        }
        if let Some(r) = t.samplingratio {
            if !(0.0..=1.0).contains(&r) {
                bad(
                    "telemetry.traces.samplingratio",
                    format!("{r} is not between 0.0 and 1.0"),
                );
            }
        }
        if let Some(e) = &t.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                bad(
                    "telemetry.traces.endpoint",
                    format!("{e:?} is not an http(s) URL"),
                );
            }
        }
    }
    if let Some(d) = &c.http.debug {
        if let Some(addr) = &d.addr {
            if !valid_addr(addr) {
                bad("http.debug.addr", format!("{addr:?} is not host:port"));
            }
        }
        if let Some(p) = d.prometheus.as_ref().and_then(|p| p.path.as_ref()) {
            if !p.starts_with('/') {
                bad(
                    "http.debug.prometheus.path",
                    format!("{p:?} must start with /"),
                );
            }
        }
        if d.prometheus.as_ref().is_some_and(|p| p.enabled) && d.addr.is_none() {
            bad(
                "http.debug.addr",
                "required for http.debug.prometheus (metrics are served on the debug listener)"
                    .to_owned(),
            );
        }
    }
    for (key, value) in durations
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(owned_durations)
    {
        if let Some(v) = value {
            if let Err(e) = parse_duration(v) {
                bad(&key, e);
            }
        }
    }
    if let Some(cache) = c
        .storage
        .cache
        .as_ref()
        .and_then(|c| c.blobdescriptor.as_deref())
    {
        match cache {
            "inmemory" => {}
            "redis" if c.redis.is_none() => bad(
                "storage.cache.blobdescriptor",
                "redis needs a redis section".to_owned(),
            ),
            "redis" => {}
            other => bad(
                "storage.cache.blobdescriptor",
                format!("unknown cache {other:?} (inmemory, redis)"),
            ),
        }
    }
    if let Some(auth) = &c.auth {
        let kinds = [
            auth.silly.is_some(),
            auth.token.is_some(),
            auth.htpasswd.is_some(),
            auth.none.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            bad(
                "auth",
                "at most one access controller may be configured".to_owned(),
            );
        }
        if let Some(t) = &auth.token {
            for (key, v) in [("service", &t.service), ("issuer", &t.issuer)] {
                if v.as_deref().unwrap_or("").is_empty() {
                    bad(&format!("auth.token.{key}"), "required".to_owned());
                }
            }
            if auth.issuer.is_none()
                && t.rootcertbundle.is_none()
                && t.jwks.is_none()
                && t.jwksurl.is_none()
            {
                bad(
                    "auth.token",
                    "no trusted keys: set rootcertbundle, jwks or jwksurl (or auth.issuer, whose keys are trusted)".to_owned(),
                );
            }
            if auth.issuer.is_none() && t.realm.as_deref().unwrap_or("").is_empty() {
                bad(
                    "auth.token.realm",
                    "required (unless auth.issuer serves it)".to_owned(),
                );
            }
            for a in t.signingalgorithms.iter().flatten() {
                if berth_auth::keys::Alg::parse(a).is_none() {
                    bad(
                        "auth.token.signingalgorithms",
                        format!("{a:?} is not an asymmetric JWS algorithm Berth verifies (RS256/384/512, PS256/384/512, ES256/384)"),
                    );
                }
            }
        }
        if let Some(h) = &auth.htpasswd {
            if h.path.as_deref().unwrap_or("").is_empty() {
                bad("auth.htpasswd.path", "required".to_owned());
            }
        }
        if let Some(i) = &auth.issuer {
            if auth.token.is_none() {
                bad(
                    "auth.issuer",
                    "needs auth.token (its service and issuer name are the tokens' aud and iss)"
                        .to_owned(),
                );
            }
            if i.keys.as_ref().is_none_or(|k| k.is_empty()) && i.keydir.is_none() {
                bad(
                    "auth.issuer",
                    "set keys or keydir (`berth keys generate` makes a key)".to_owned(),
                );
            }
            for (key, v) in [
                ("expiration", &i.expiration),
                ("refreshexpiration", &i.refreshexpiration),
            ] {
                if let Some(d) = v {
                    if let Err(e) = parse_duration(d) {
                        bad(&format!("auth.issuer.{key}"), e);
                    }
                }
            }
            if i.htpasswd.is_none() && i.users.as_ref().is_none_or(|u| u.is_empty()) {
                bad(
                    "auth.issuer",
                    "no accounts: set htpasswd or users (anonymous rules still apply)".to_owned(),
                );
            }
        }
    }
}

/// `host:port`, `:port` or `[v6]:port`.
fn valid_addr(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((_, port)) => port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// Configured features Berth does not implement yet, in the operator's words. Shrinks as
/// features land.
pub fn unsupported(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |s: &str| out.push(s.to_owned());
    if let Some(a) = &c.auth {
        if a.silly.is_some() {
            add("auth.silly: the silly access controller (a development stub in distribution)");
        }
    }
    if let Some(s3) = &c.storage.s3 {
        if s3.skipverify == Some(true) {
            add("storage.s3.skipverify: TLS certificates are always verified (add the CA to the system store, or SSL_CERT_FILE)");
        }
        if s3.usedualstack == Some(true) || s3.accelerate == Some(true) {
            add("storage.s3.usedualstack/accelerate: special S3 endpoints (set regionendpoint instead)");
        }
        if s3.objectacl.as_deref().is_some_and(|a| a != "private") {
            add("storage.s3.objectacl: objects are always private");
        }
    }

    if c.storage.redirect.disable {
        // Nothing to do: Berth never redirects on filesystem storage.
    }
    if let Some(r) = &c.redis {
        // go-redis's choice: several addrs without a mastername are a Cluster.
        let cluster = r.mastername.as_deref().unwrap_or("").is_empty()
            && r.addrs.as_ref().is_some_and(|a| a.len() > 1);
        if cluster && r.db.is_some_and(|db| db != 0) {
            add("redis.db in cluster mode: Redis Cluster has only database 0, which is used");
        }
        if cluster && r.routebylatency == Some(true) {
            add("redis.routebylatency: reads go to a random replica, not to the nearest node");
        }
    }

    if c.notifications
        .as_ref()
        .and_then(|n| n.endpoints.as_ref())
        .is_some_and(|e| !e.is_empty())
    {
        add("notifications.endpoints: webhook notifications");
    }
    if c.log.hooks.as_ref().is_some_and(active_hooks) {
        add("log.hooks: mail hooks (no mail is sent for log lines)");
    }
    if c.reporting.as_ref().is_some_and(|r| !r.is_null()) {
        add("reporting: Bugsnag and New Relic reporting (nothing is reported to them)");
    }
    out
}

/// Whether `log.hooks` lists a hook that is not `disabled: true`.
fn active_hooks(hooks: &Value) -> bool {
    match hooks {
        Value::Sequence(list) => list
            .iter()
            .any(|h| h.get("disabled").and_then(Value::as_bool) != Some(true)),
        Value::Null => false,
        _ => true,
    }
}

/// Keys whose scalar values are secrets.
const SECRET_KEYS: [&str; 8] = [
    "secret",
    "password",
    // redis: the sentinels' own password.
    "sentinelpassword",
    "accesskey",
    "secretkey",
    "sessiontoken",
    "authorization",
    // auth.issuer.users: password hashes.
    "users",
];

impl Config {
    /// The effective configuration as YAML, secrets replaced by `<redacted>`.
    pub fn redacted_yaml(&self) -> String {
        let mut v = serde_yaml::to_value(self).unwrap_or(Value::Null);
        redact(&mut v);
        // Trace export headers carry API keys under any name.
        if let Some(Value::Mapping(h)) = v
            .get_mut("telemetry")
            .and_then(|t| t.get_mut("traces"))
            .and_then(|t| t.get_mut("headers"))
        {
            for (_, val) in h.iter_mut() {
                *val = Value::String("<redacted>".to_owned());
            }
        }
        serde_yaml::to_string(&v).unwrap_or_default()
    }
}

fn redact(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                let secret = k
                    .as_str()
                    .is_some_and(|k| SECRET_KEYS.iter().any(|s| s.eq_ignore_ascii_case(k)));
                if secret && val.is_mapping() && k.as_str() == Some("users") {
                    if let Value::Mapping(users) = val {
                        for (_, hash) in users.iter_mut() {
                            *hash = Value::String("<redacted>".to_owned());
                        }
                    }
                } else if secret && !val.is_mapping() && !val.is_null() {
                    *val = Value::String("<redacted>".to_owned());
                } else {
                    redact(val);
                }
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
