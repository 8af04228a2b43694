//! Configuration: distribution's YAML schema ([`schema`]), where to find the file, the
//! `REGISTRY_<SECTION>_<KEY>` environment overrides, and the checks `berth config check`
//! reports — every problem at once, each with where it is (`file:line:col`, or the variable).
//!
//! The compatibility rule: where distribution 2.8 or 3.x starts with a configuration, Berth
//! starts; where it refuses, Berth refuses, with a better message. So the file is read as
//! distribution's yaml.v2 reads it ([`yaml`]: YAML 1.1 booleans, integer durations, repeated
//! keys, anchors). Keys that neither version knows are ignored as distribution ignores them,
//! but not silently: each is in [`Loaded::unknown`] with its line and the nearest known key;
//! `berth serve` logs one WARN each and `berth config check` lists them and fails. An unknown
//! storage driver or auth type refuses, as in distribution; so does a driver distribution has
//! and Berth lacks (never a quiet fallback to other data).
//!
//! Environment overrides follow distribution's rule: the variable's name after `REGISTRY_` is
//! split at `_` into a key path (`REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`, a number indexes
//! a list: `REGISTRY_HEALTH_TCP_0_ADDR`), applied in the order of the names, and the value is
//! read as YAML into that key; `REGISTRY_STORAGE=s3` and `REGISTRY_AUTH=htpasswd` replace the
//! section with that driver or type. Whether a path names a real key is decided by the schema
//! itself: the override is applied to a copy, and if the schema ignores the new key, the
//! variable is ignored with a warning (Kubernetes injects `REGISTRY_PORT=tcp://…` and friends
//! for a Service called `registry`; podman sets `REGISTRY_AUTH_FILE`). Values are never echoed:
//! they may be secrets.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

pub mod schema;
pub mod validation;
pub mod yaml;

use yaml::{Node, Origin};

pub use schema::{Config, StorageDriver};

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Given on the command line.
    Explicit(PathBuf),
    /// Named by `$BERTH_CONFIG`.
    Env(PathBuf),
    /// Named by `$REGISTRY_CONFIGURATION_PATH` (distribution's variable).
    RegistryEnv(PathBuf),
    /// Found at a standard location.
    Standard(PathBuf),
    /// No file: the embedded defaults.
    Embedded,
}

impl ConfigSource {
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Explicit(p)
            | ConfigSource::Env(p)
            | ConfigSource::RegistryEnv(p)
            | ConfigSource::Standard(p) => Some(p),
            ConfigSource::Embedded => None,
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Explicit(p) => write!(f, "{} (given on the command line)", p.display()),
            ConfigSource::Env(p) => write!(f, "{} (named by $BERTH_CONFIG)", p.display()),
            ConfigSource::RegistryEnv(p) => {
                write!(f, "{} (named by $REGISTRY_CONFIGURATION_PATH)", p.display())
            }
            ConfigSource::Standard(p) => write!(f, "{} (standard location)", p.display()),
            ConfigSource::Embedded => f.write_str(
                "no configuration file found (command line, $BERTH_CONFIG, \
                 $REGISTRY_CONFIGURATION_PATH, /etc/distribution/config.yml, \
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
    /// Keys neither distribution 2.8 nor 3.x knows (ignored, as distribution ignores them),
    /// each with where it is and the nearest known key.
    pub unknown: Vec<Problem>,
}

/// The standard locations, in the order they are tried after `$BERTH_CONFIG`.
pub const STANDARD_PATHS: [&str; 2] = [
    "/etc/distribution/config.yml",
    "/etc/docker/registry/config.yml",
];

/// The data directory of the embedded default configuration, relative to the working directory.
pub const DEFAULT_ROOT: &str = "berth-data";

/// Loads the configuration: `explicit` (the command line), else `$BERTH_CONFIG`, else
/// `$REGISTRY_CONFIGURATION_PATH` (as distribution), else the standard paths, else the embedded
/// defaults; then applies the `REGISTRY_*` variables among `env`.
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
    let registry_path = env
        .iter()
        .find(|(k, v)| k == "REGISTRY_CONFIGURATION_PATH" && !v.is_empty())
        .map(|(_, v)| PathBuf::from(v));
    let source = if let Some(p) = explicit {
        ConfigSource::Explicit(p.to_path_buf())
    } else if let Some(p) = berth_config.filter(|p| !p.as_os_str().is_empty()) {
        ConfigSource::Env(p.to_path_buf())
    } else if let Some(p) = registry_path {
        ConfigSource::RegistryEnv(p)
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
    let at = |o: &Origin| o.describe(file_label);

    // The file, read as distribution's yaml.v2 reads it.
    let (mut root, duplicates) = match yaml::parse(text) {
        Ok(r) => r,
        Err(e) => {
            return Err(ConfigError {
                problems: vec![Problem {
                    location: at(&e.origin),
                    message: format!("not valid YAML: {}", e.message),
                }],
            })
        }
    };
    for d in &duplicates {
        warnings.push(format!(
            "{}: key `{}` is given again (first at {}); the last one wins, as in distribution",
            at(&d.last),
            d.key,
            at(&d.first)
        ));
    }
    if root.is_null() {
        root = Node::map(Vec::new(), root.origin.clone());
    }
    if root.entries().is_none() {
        return Err(ConfigError {
            problems: vec![Problem {
                location: at(&root.origin),
                message: "the configuration must be a mapping of sections".to_owned(),
            }],
        });
    }
    // distribution reads `version` from the file before anything else, and refuses a file
    // without it.
    if root.get("version").is_none_or(Node::is_null) {
        problems.push(Problem {
            location: file_label.to_owned(),
            message: "`version: 0.1` is missing (distribution refuses such a file too)".to_owned(),
        });
    }

    apply_env(&mut root, env, &mut warnings, &mut problems);
    normalize(&mut root);
    parameter_maps(&mut root, file_label, &mut warnings, &mut problems);
    unused_as_in_distribution(&mut root, file_label, &mut warnings);

    let mut ignored: Vec<Vec<String>> = Vec::new();
    let config: Result<Config, yaml::Error> =
        serde_ignored::deserialize(yaml::De(&root, yaml::Typing::Root), |p| {
            ignored.push(path_components(&p))
        });
    let config = match config {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(Problem {
                location: e.origin.as_ref().map_or(file_label.to_owned(), at),
                message: e.message,
            });
            None
        }
    };
    let mut unknown = Vec::new();
    for path in &ignored {
        let location = root.key_origin(path).map_or(file_label.to_owned(), at);
        let dotted = path.join(".");
        match path.as_slice() {
            [section, name] if section == "storage" => problems.push(Problem {
                location,
                message: if OTHER_DRIVERS.contains(&name.as_str()) {
                    format!(
                        "storage driver `{name}` is not available in Berth (filesystem, inmemory, \
                         s3); refusing to start rather than serve other data"
                    )
                } else {
                    format!(
                        "unknown storage driver `{name}` (distribution refuses it too; Berth has \
                         filesystem, inmemory and s3)"
                    )
                },
            }),
            [section, name] if section == "auth" => problems.push(Problem {
                location,
                message: format!(
                    "unknown auth type `{name}` (distribution refuses it too; the types are \
                     htpasswd, token and silly)"
                ),
            }),
            _ => unknown.push(Problem {
                location,
                message: format!(
                    "unknown configuration key `{dotted}`, ignored (neither distribution 2.8 nor \
                     3.x knows it){}",
                    hint(path)
                ),
            }),
        }
    }
    let Some(config) = config else {
        return Err(ConfigError { problems });
    };
    let first_semantic = problems.len();
    check(&config, &mut problems);
    for p in &mut problems[first_semantic..] {
        if let Some(origin) = key_path_origin(&root, &p.location) {
            p.message = format!("{} ({})", p.message, origin.describe(file_label));
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    let unsupported = unsupported(&config);
    Ok(Loaded {
        config,
        source: ConfigSource::Embedded,
        warnings,
        unsupported,
        unknown,
    })
}

/// distribution reads `storage.maintenance`, `storage.redirect`, `storage.tag`,
/// `storage.delete` and `auth.token` as untyped parameter maps and checks each value's YAML
/// type itself (registry/handlers/app.go and auth/token, the same in 2.8 and 3.x): it refuses
/// a number for the purger's `age`, a quoted `"true"` for `redirect.disable`, a missing
/// `dryrun`, and reads a quoted `"false"` as "not the boolean false". Berth's typed reading would accept all of these, so the
/// same rules run here on the tree, before it is read.
fn parameter_maps(
    root: &mut Node,
    file_label: &str,
    warnings: &mut Vec<String>,
    problems: &mut Vec<Problem>,
) {
    fn boolean(n: &Node) -> Option<bool> {
        match &n.kind {
            yaml::Kind::Scalar { text, plain } => match yaml::resolve(text, *plain) {
                yaml::Resolved::Bool(b) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }
    fn set_bool(n: &mut Node, b: bool) {
        n.kind = yaml::Kind::Scalar {
            text: b.to_string(),
            plain: true,
        };
    }
    // The token access controller reads `autoredirect` from its options and wants a boolean.
    if let Some(a) = root
        .get("auth")
        .and_then(|a| a.get("token"))
        .and_then(|t| t.get("autoredirect"))
        .filter(|a| !a.is_null() && boolean(a).is_none())
    {
        problems.push(Problem {
            location: a.origin.describe(file_label),
            message: "auth.token.autoredirect must be true or false, without quotes \
                      (distribution refuses anything else)"
                .to_owned(),
        });
    }
    let Some(storage) = root.get_mut("storage") else {
        return;
    };
    let mut bad = |n: &Node, message: String| {
        problems.push(Problem {
            location: n.origin.describe(file_label),
            message,
        });
    };
    if let Some(m) = storage.get_mut("maintenance") {
        if let Some(p) = m.get_mut("uploadpurging") {
            if p.entries().is_none() {
                bad(
                    p,
                    "storage.maintenance.uploadpurging must be a section (enabled, age, interval, \
                     dryrun), as in distribution"
                        .to_owned(),
                );
            } else if p.get("enabled").and_then(boolean) != Some(false) {
                // The purger is off only for the boolean false; anything else turns it on, and
                // then age, interval and dryrun are required.
                if let Some(e) = p.get_mut("enabled").filter(|e| boolean(e).is_none()) {
                    warnings.push(format!(
                        "{}: storage.maintenance.uploadpurging.enabled is not a boolean; upload \
                         purging runs, as in distribution (write true or false without quotes)",
                        e.origin.describe(file_label)
                    ));
                    set_bool(e, true);
                }
                for key in ["age", "interval"] {
                    match p.get(key) {
                        None => bad(
                            p,
                            format!(
                                "storage.maintenance.uploadpurging.{key} is missing (distribution \
                                 requires age, interval and dryrun unless `enabled: false`)"
                            ),
                        ),
                        Some(n) if !is_string(n) => bad(
                            n,
                            format!(
                                "storage.maintenance.uploadpurging.{key} must be a duration such \
                                 as 168h, not a number (distribution refuses a number here too)"
                            ),
                        ),
                        Some(_) => {}
                    }
                }
                match p.get("dryrun") {
                    None => bad(
                        p,
                        "storage.maintenance.uploadpurging.dryrun is missing (distribution \
                         requires age, interval and dryrun unless `enabled: false`)"
                            .to_owned(),
                    ),
                    Some(n) if boolean(n).is_none() => bad(
                        n,
                        "storage.maintenance.uploadpurging.dryrun must be true or false, without \
                         quotes (distribution refuses anything else)"
                            .to_owned(),
                    ),
                    Some(_) => {}
                }
            }
        }
        if let Some(r) = m.get("readonly") {
            if r.entries().is_none() {
                bad(
                    r,
                    "storage.maintenance.readonly must be a section with `enabled`, as in \
                     distribution"
                        .to_owned(),
                );
            } else if let Some(e) = r.get("enabled").filter(|e| boolean(e).is_none()) {
                bad(
                    e,
                    "storage.maintenance.readonly.enabled must be true or false, without quotes \
                     (distribution refuses anything else)"
                        .to_owned(),
                );
            }
        }
    }
    if let Some(r) = storage.get("redirect") {
        if r.get("disable").and_then(boolean).is_none() {
            bad(
                r.get("disable").unwrap_or(r),
                "storage.redirect needs `disable: true` or `disable: false`, without quotes \
                 (distribution refuses the section otherwise)"
                    .to_owned(),
            );
        }
    }
    if let Some(l) = storage.get("tag").and_then(|t| t.get("concurrencylimit")) {
        let ok = matches!(&l.kind, yaml::Kind::Scalar { text, plain }
            if matches!(yaml::resolve(text, *plain), yaml::Resolved::Int(i) if i >= 0));
        if !ok {
            bad(
                l,
                "storage.tag.concurrencylimit must be a whole number of 0 or more, without quotes \
                 (distribution refuses anything else)"
                    .to_owned(),
            );
        }
    }
    if let Some(e) = storage
        .get_mut("delete")
        .and_then(|d| d.get_mut("enabled"))
        .filter(|e| !e.is_null() && boolean(e).is_none())
    {
        warnings.push(format!(
            "{}: storage.delete.enabled is not a boolean; deletes stay off, as in distribution \
             (write true without quotes to enable them)",
            e.origin.describe(file_label)
        ));
        set_bool(e, false);
    }
}

/// Sections distribution reads and then leaves unused, with a warning or silently: Berth
/// drops them from the tree, with a warning, instead of refusing the file.
/// - `storage.cache.blobdescriptor` (or `layerinfo`) naming no cache: "unknown cache type,
///   caching disabled";
/// - `proxy` without `remoteurl`: not a pull-through cache (Berth's own `upstreams` aside);
/// - `http.debug.prometheus` without `http.debug.addr`: there is no listener to serve it on.
fn unused_as_in_distribution(root: &mut Node, file_label: &str, warnings: &mut Vec<String>) {
    if let Some(debug) = root.get("http").and_then(|h| h.get("debug")) {
        let no_addr = debug.get("addr").is_none_or(|a| {
            a.is_null() || matches!(&a.kind, yaml::Kind::Scalar { text, .. } if text.is_empty())
        });
        let enabled = |p: &&Node| {
            p.get("enabled").is_some_and(|e| {
                matches!(&e.kind, yaml::Kind::Scalar { text, plain }
                    if matches!(yaml::resolve(text, *plain), yaml::Resolved::Bool(true)))
            })
        };
        if let Some(p) = debug.get("prometheus").filter(enabled).filter(|_| no_addr) {
            warnings.push(format!(
                "{}: http.debug.prometheus without http.debug.addr: no metrics are served, as in \
                 distribution (they are served on the debug listener)",
                p.origin.describe(file_label)
            ));
        }
    }
    if let Some(cache) = root
        .get_mut("storage")
        .and_then(|s| s.get_mut("cache"))
        .and_then(Node::entries_mut)
    {
        if let Some(i) = cache.iter().position(|e| {
            e.key == "blobdescriptor"
                && !e.value.is_null()
                && !matches!(&e.value.kind, yaml::Kind::Scalar { text, .. }
                    if ["inmemory", "redis", ""].contains(&text.as_str()))
        }) {
            let e = cache.remove(i);
            warnings.push(format!(
                "{}: storage.cache.blobdescriptor: unknown cache type (inmemory, redis); caching \
                 is disabled, as in distribution",
                e.value.origin.describe(file_label)
            ));
        }
    }
    let no_remote = root.get("proxy").is_some_and(|p| {
        !p.is_null()
            && p.get("remoteurl").is_none_or(|u| {
                u.is_null() || matches!(&u.kind, yaml::Kind::Scalar { text, .. } if text.is_empty())
            })
            && p.get("upstreams").is_none_or(Node::is_null)
    });
    if no_remote {
        if let Some(entries) = root.entries_mut() {
            if let Some(i) = entries.iter().position(|e| e.key == "proxy") {
                let e = entries.remove(i);
                warnings.push(format!(
                    "{}: proxy has no remoteurl, so this registry is not a pull-through cache \
                     (as in distribution); the section is ignored",
                    e.key_origin.describe(file_label)
                ));
            }
        }
    }
}

/// A scalar that distribution's YAML reader gives as a string (quoted, or plain but not a
/// null, boolean or number).
fn is_string(n: &Node) -> bool {
    matches!(&n.kind, yaml::Kind::Scalar { text, plain }
        if matches!(yaml::resolve(text, *plain), yaml::Resolved::Str(_)))
}

/// Where the key `health.http[0].uri` (a check's location) or its nearest written ancestor
/// came from: a line of the file, or a variable.
fn key_path_origin<'a>(root: &'a Node, key_path: &str) -> Option<&'a Origin> {
    let mut path: Vec<String> = Vec::new();
    for comp in key_path.split('.') {
        match comp.split_once('[') {
            Some((name, index)) => {
                path.push(name.to_owned());
                path.push(index.trim_end_matches(']').to_owned());
            }
            None => path.push(comp.to_owned()),
        }
    }
    (1..=path.len())
        .rev()
        .find_map(|n| root.key_origin(&path[..n]))
}

/// The AWS regions distribution 3.1's S3 driver accepts without `regionendpoint` (the partitions
/// of the aws-sdk-go v1 it vendors; 2.8's list is a subset).
const S3_REGIONS: [&str; 37] = [
    "af-south-1",
    "ap-east-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-isoe-west-1",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-iso-east-1",
    "us-iso-west-1",
    "us-isob-east-1",
    "us-west-1",
    "us-west-2",
];

/// The storage classes distribution 3.1 accepts (case-insensitively; 2.8's are a subset).
const S3_STORAGE_CLASSES: [&str; 9] = [
    "NONE",
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "OUTPOSTS",
    "GLACIER_IR",
    "EXPRESS_ONEZONE",
];

/// Storage drivers distribution has and Berth does not.
const OTHER_DRIVERS: [&str; 4] = ["azure", "gcs", "swift", "oss"];

/// "; did you mean `x`?" for the known key nearest to the last component of `path`.
fn hint(path: &[String]) -> String {
    let Some((last, parent)) = path.split_last() else {
        return String::new();
    };
    let lower = last.to_ascii_lowercase();
    let best = yaml::fields_at::<Config>(parent)
        .into_iter()
        .map(|f| {
            // A shortened or lengthened name (`rootdir`) is as good a hint as a typo.
            let affix = lower.len() >= 4 && (f.starts_with(&lower) || lower.starts_with(f));
            let score = strsim::normalized_damerau_levenshtein(&lower, f);
            (if affix { score.max(0.8) } else { score }, f)
        })
        .filter(|(score, _)| *score >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, f)) => {
            let mut full = parent.to_vec();
            full.push(f.to_owned());
            format!("; did you mean `{}`?", full.join("."))
        }
        None => String::new(),
    }
}

/// A serde_ignored path as components (`Option` layers, marked `?`, are not part of the file).
fn path_components(p: &serde_ignored::Path<'_>) -> Vec<String> {
    p.to_string()
        .split('.')
        .filter(|c| *c != "?" && !c.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Keys the schema ignores in `root`, or the deserialization error.
fn ignored_keys(root: &Node) -> Result<BTreeSet<String>, yaml::Error> {
    let mut out = BTreeSet::new();
    let res: Result<Config, _> =
        serde_ignored::deserialize(yaml::De(root, yaml::Typing::Root), |p| {
            out.insert(path_components(&p).join("."));
        });
    res.map(|_| out)
}

/// The forms distribution accepts that Berth's schema reads under one name: a section set to
/// a word (`storage: s3`, `auth: htpasswd`, also from `REGISTRY_STORAGE=s3`) selects that
/// driver or type with no parameters; `s3aws` is the s3 driver's other name; `layerinfo` is
/// the old name of `storage.cache.blobdescriptor` (used only when the new one is absent); a
/// type or driver with an empty value is present, with no parameters.
fn normalize(root: &mut Node) {
    for section in ["storage", "auth"] {
        if let Some(node) = root.get_mut(section) {
            if let yaml::Kind::Scalar { text, .. } = &node.kind {
                if !node.is_null() {
                    let entry = yaml::Entry {
                        key: text.clone(),
                        key_origin: node.origin.clone(),
                        value: Node::null(node.origin.clone()),
                    };
                    *node = Node::map(vec![entry], node.origin.clone());
                }
            }
            // `htpasswd:` with nothing below is still that type (distribution then refuses it
            // for its missing path), and `filesystem:` is still that driver: never "no auth".
            for e in node.entries_mut().into_iter().flatten() {
                if e.value.is_null() {
                    e.value = Node::map(Vec::new(), e.value.origin.clone());
                }
            }
        }
    }
    let Some(storage) = root.get_mut("storage") else {
        return;
    };
    if storage.get("s3").is_none() {
        if let Some(e) = storage
            .entries_mut()
            .and_then(|e| e.iter_mut().find(|e| e.key == "s3aws"))
        {
            e.key = "s3".to_owned();
        }
    }
    if let Some(cache) = storage.get_mut("cache").and_then(Node::entries_mut) {
        if cache.iter().any(|e| e.key == "blobdescriptor") {
            cache.retain(|e| e.key != "layerinfo");
        } else if let Some(e) = cache.iter_mut().find(|e| e.key == "layerinfo") {
            e.key = "blobdescriptor".to_owned();
        }
    }
}

/// What applying one variable came to.
enum Override {
    Applied(Node),
    NamesNoKey,
    Invalid(String),
}

/// Variables that name the file rather than a key.
const PATH_VARIABLES: [&str; 1] = ["REGISTRY_CONFIGURATION_PATH"];

fn apply_env(
    root: &mut Node,
    env: &[(String, String)],
    warnings: &mut Vec<String>,
    problems: &mut Vec<Problem>,
) {
    // distribution applies them in the order of their names.
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("REGISTRY_") && !PATH_VARIABLES.contains(&k.as_str()))
        .collect();
    vars.sort();
    for (name, value) in vars {
        let path: Vec<String> = name["REGISTRY_".len()..]
            .split('_')
            .map(str::to_ascii_lowercase)
            .collect();
        let dotted = path.join(".");
        if path == ["version"] {
            // distribution checks the file's version before applying variables, and the
            // variable then changes nothing.
            warnings.push(format!(
                "{name} is ignored: the version is the file's, as in distribution"
            ));
            continue;
        }
        let outcome = if path.iter().any(String::is_empty) {
            Override::NamesNoKey
        } else {
            try_override(root, &path, name, value)
        };
        match outcome {
            Override::Applied(candidate) => {
                if path.len() == 1 && (path[0] == "storage" || path[0] == "auth") {
                    let dropped = dropped_keys(root, &candidate, &path[0]);
                    if !dropped.is_empty() {
                        warnings.push(format!(
                            "{name} replaces the whole {} section, as in distribution: the file's {} no longer apply (set them with {name}_* variables)",
                            path[0],
                            dropped.join(", ")
                        ));
                    }
                }
                *root = candidate;
            }
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

/// Keys of section `name` in `before` that `after` no longer has.
fn dropped_keys(before: &Node, after: &Node, name: &str) -> Vec<String> {
    let keys = |n: &Node| -> Vec<String> {
        n.get(name)
            .and_then(Node::entries)
            .map(|e| e.iter().map(|e| format!("{name}.{}", e.key)).collect())
            .unwrap_or_default()
    };
    let kept = keys(after);
    keys(before)
        .into_iter()
        .filter(|k| !kept.contains(k))
        .collect()
}

/// Applies one override to a copy of `root`. The value is read as YAML, as distribution reads
/// it into the key's field; the schema then says whether the key exists.
fn try_override(root: &Node, path: &[String], name: &str, value: &str) -> Override {
    let origin = Origin::Env(name.to_owned());
    let mut value_node = match yaml::parse(value) {
        Ok((n, _)) => n,
        Err(e) => {
            return Override::Invalid(format!(
                "the value is read as YAML, as distribution reads it, and is not valid YAML: {}",
                e.message
            ))
        }
    };
    value_node.set_origin(&origin);
    let mut candidate = root.clone();
    if let Err(e) = set_path(&mut candidate, path, value_node, &origin) {
        return Override::Invalid(e);
    }
    normalize(&mut candidate);
    // A section set to a word always applies: an unknown driver or auth type is refused later,
    // never ignored (that would serve other data).
    if path.len() == 1 && (path[0] == "storage" || path[0] == "auth") {
        return Override::Applied(candidate);
    }
    let baseline = ignored_keys(root).unwrap_or_default();
    let dotted = path.join(".");
    match ignored_keys(&candidate) {
        Ok(ignored) => {
            let names_no_key = ignored.difference(&baseline).any(|k| {
                dotted == *k
                    || dotted.starts_with(&format!("{k}."))
                    || k.starts_with(&format!("{dotted}."))
            });
            if names_no_key {
                Override::NamesNoKey
            } else {
                Override::Applied(candidate)
            }
        }
        // A path that goes on below a scalar key names no key either: the Service
        // `registry-auth-token` gives pods REGISTRY_AUTH_TOKEN_SERVICE_HOST (`auth.token.service`
        // is a string), `registry-version` REGISTRY_VERSION_PORT.
        Err(_) if (1..path.len()).any(|i| names_scalar(root, &path[..i], &baseline)) => {
            Override::NamesNoKey
        }
        Err(e) => Override::Invalid(e.message),
    }
}

/// Whether `prefix` is a key whose value is a scalar.
fn names_scalar(root: &Node, prefix: &[String], baseline: &BTreeSet<String>) -> bool {
    let dotted = prefix.join(".");
    let probe_origin = Origin::Env(String::new());
    ["x", "true", "1"].into_iter().any(|text| {
        let mut candidate = root.clone();
        let probe = Node {
            kind: yaml::Kind::Scalar {
                text: text.to_owned(),
                plain: true,
            },
            origin: probe_origin.clone(),
        };
        set_path(&mut candidate, prefix, probe, &probe_origin).is_ok()
            && ignored_keys(&candidate).is_ok_and(|ignored| {
                !ignored
                    .difference(baseline)
                    .any(|k| dotted == *k || dotted.starts_with(&format!("{k}.")))
            })
    })
}

/// Sets `path` in the tree as distribution's parser does: existing keys match
/// case-insensitively, new ones are lower case; a number indexes a list (`_0`), where the
/// next free index appends.
fn set_path(root: &mut Node, path: &[String], value: Node, origin: &Origin) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut node = root;
    for comp in parents {
        node = child_mut(node, comp, origin)?;
    }
    *child_mut(node, last, origin)? = value;
    Ok(())
}

fn child_mut<'n>(node: &'n mut Node, comp: &str, origin: &Origin) -> Result<&'n mut Node, String> {
    // A number indexes an existing list, or starts one at 0; otherwise it is a mapping key, and
    // the schema decides (`REGISTRY_PORT_5000_TCP` from Kubernetes names no key).
    let index = comp.parse::<usize>().ok();
    let is_seq = matches!(node.kind, yaml::Kind::Seq(_));
    if index.is_some() && (is_seq || (node.is_null() && index == Some(0))) {
        if !is_seq {
            node.kind = yaml::Kind::Seq(Vec::new());
        }
        let (Some(i), yaml::Kind::Seq(items)) = (index, &mut node.kind) else {
            return Err("not a list".to_owned());
        };
        if i > items.len() {
            return Err(format!(
                "index {i} is past the end of the list ({} entries; the next is {})",
                items.len(),
                items.len()
            ));
        }
        if i == items.len() {
            items.push(Node::null(origin.clone()));
        }
        return Ok(&mut items[i]);
    }
    if node.entries().is_none() {
        *node = Node::map(Vec::new(), origin.clone());
    }
    let Some(entries) = node.entries_mut() else {
        return Err("not a mapping".to_owned());
    };
    let i = match entries
        .iter()
        .position(|e| e.key.eq_ignore_ascii_case(comp))
    {
        Some(i) => i,
        None => {
            entries.push(yaml::Entry {
                key: comp.to_ascii_lowercase(),
                key_origin: origin.clone(),
                value: Node::null(origin.clone()),
            });
            entries.len() - 1
        }
    };
    Ok(&mut entries[i].value)
}

/// Parses a duration as distribution reads one: a Go duration such as `10s`, `1h30m`,
/// `500ms`, `168h`, or an integer, which is nanoseconds (yaml.v2 reads `draintimeout: 0` or a
/// notification `timeout: 500` into a Go `time.Duration` that way).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Some(n) = yaml::parse_int(s) {
        return u64::try_from(n)
            .map(Duration::from_nanos)
            .map_err(|_| format!("duration {s:?} is negative"));
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
            if let Some(Err(e)) = exec_lifetime(&u.exec).map(|l| parse_duration(l)) {
                bad(&format!("{at}.exec.lifetime"), e);
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
        if s3.bucket.as_deref().unwrap_or("").is_empty() {
            bad("storage.s3.bucket", "required".to_owned());
        }
        // As distribution's driver: the region is checked only without a custom endpoint.
        let region = s3.region.as_deref().unwrap_or("");
        if s3.regionendpoint.as_deref().unwrap_or("").is_empty() {
            if region.is_empty() {
                bad(
                    "storage.s3.region",
                    "required (unless regionendpoint is set)".to_owned(),
                );
            } else if !S3_REGIONS.contains(&region) {
                bad(
                    "storage.s3.region",
                    format!(
                        "{region:?} is not an AWS region distribution's S3 driver knows, and it \
                         refuses it too; for a newer region or an S3-compatible service set \
                         regionendpoint (e.g. https://s3.{region}.amazonaws.com)"
                    ),
                );
            }
        }
        if let Some(class) = s3.storageclass.as_deref().filter(|c| !c.is_empty()) {
            if !S3_STORAGE_CLASSES.contains(&class.to_ascii_uppercase().as_str()) {
                bad(
                    "storage.s3.storageclass",
                    format!(
                        "{class:?} is not one of {} (distribution refuses it too)",
                        S3_STORAGE_CLASSES.join(", ")
                    ),
                );
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
        for (key, v) in [
            ("storage.s3.connecttimeout", &s3.connecttimeout),
            ("storage.s3.responsetimeout", &s3.responsetimeout),
            ("storage.s3.idletimeout", &s3.idletimeout),
        ] {
            if let Some(v) = v {
                match parse_duration(v) {
                    Ok(d) if d.is_zero() => bad(
                        key,
                        "0 would wait forever on a stalled S3: give a duration".to_owned(),
                    ),
                    Ok(_) => {}
                    Err(e) => bad(key, e),
                }
            }
        }
        if s3.maxattempts == Some(0) {
            bad(
                "storage.s3.maxattempts",
                "at least 1 (the first attempt)".to_owned(),
            );
        }
    }
    if let Some(level) = c.log.level.as_deref().or(c.loglevel.as_deref()) {
        // distribution lowercases the level and knows these four only (2.8 and 3.x alike):
        // `INFO` starts it, `warning` or `trace` refuse.
        if !["error", "warn", "info", "debug"].contains(&level.to_ascii_lowercase().as_str()) {
            bad(
                "log.level",
                format!(
                    "unknown level {level:?} (error, warn, info, debug, as in distribution; \
                     RUST_LOG=trace gives more)"
                ),
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
        durations.push(("proxy.cachewritetimeout", p.cachewritetimeout.as_ref()));
        durations.push(("proxy.exec.lifetime", exec_lifetime(&p.exec)));
    }
    if let Some(r) = &c.redis {
        let pool = r.pool.as_ref();
        // go-redis reads a negative duration as "off" (no timeout, no pause).
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
            durations.push((key, non_negative(v)));
        }
        if let Some(p) = pool {
            durations.push(("redis.pool.idletimeout", non_negative(&p.idletimeout)));
            durations.push(("redis.pool.maxlifetime", non_negative(&p.maxlifetime)));
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
    if let Some(n) = &c.notifications {
        for (i, e) in n.endpoints.iter().flatten().enumerate() {
            for (key, v) in [
                ("timeout", &e.timeout),
                ("backoff", &e.backoff),
                ("maxage", &e.maxage),
                ("unhealthyafter", &e.unhealthyafter),
            ] {
                owned_durations.push((format!("notifications.endpoints[{i}].{key}"), v.as_ref()));
            }
        }
        if let Some(q) = &n.queue {
            durations.push(("notifications.queue.orphanafter", q.orphanafter.as_ref()));
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
            "" | "inmemory" => {}
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
    if let Err(e) = c.manifest_classes() {
        bad("policy.repository.classes", e);
    }
    if let Some(auth) = &c.auth {
        let kinds = [
            auth.silly.is_some(),
            auth.token.is_some(),
            auth.htpasswd.is_some(),
            auth.none.is_some(),
        ];
        if let Some(s) = &auth.silly {
            // distribution refuses a silly controller without both strings.
            for (key, v) in [("realm", &s.realm), ("service", &s.service)] {
                if v.is_none() {
                    bad(&format!("auth.silly.{key}"), "required".to_owned());
                }
            }
        }
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
            let federated = i.federated.as_deref().unwrap_or_default();
            if i.htpasswd.is_none()
                && i.users.as_ref().is_none_or(|u| u.is_empty())
                && i.ldap.is_none()
                && federated.is_empty()
                && i.robottokens.is_none()
            {
                bad(
                    "auth.issuer",
                    "no accounts: set htpasswd, users, ldap, federated or robottokens (anonymous rules still apply)"
                        .to_owned(),
                );
            }
            for (at, e) in i.ldap.iter().flat_map(crate::ldap::problems) {
                bad(&at, e);
            }
            for (n, rule) in i.acl.iter().flatten().enumerate() {
                if let Err(e) = rule.validate() {
                    bad(&format!("auth.issuer.acl[{n}]"), e);
                }
            }
            check_federated(federated, &mut bad);
            if let Some(d) = i.throttle.as_ref().and_then(|t| t.maxdelay.as_ref()) {
                if let Err(e) = parse_duration(d) {
                    bad("auth.issuer.throttle.maxdelay", e);
                }
            }
            if i.robottokens
                .as_deref()
                .is_some_and(|f| f.trim().is_empty())
            {
                bad(
                    "auth.issuer.robottokens",
                    "empty: name the file, or remove the key to keep robot tokens in the storage"
                        .to_owned(),
                );
            }
        }
    }
}

/// `auth.issuer.federated`: each issuer named once, trusted for one audience, with keys and
/// templates that can work.
fn check_federated(list: &[schema::Federated], bad: &mut impl FnMut(&str, String)) {
    let mut names = std::collections::BTreeSet::new();
    let mut issuers = std::collections::BTreeSet::new();
    for (n, f) in list.iter().enumerate() {
        let name = f.name.as_deref().unwrap_or("");
        let key = format!("auth.issuer.federated[{n}]");
        if name.is_empty() {
            bad(
                &format!("{key}.name"),
                "required: the identity source that rules' source: match".to_owned(),
            );
        } else if [
            "anonymous",
            "password",
            "refresh_token",
            "robot_token",
            "ldap",
        ]
        .contains(&name)
        {
            bad(
                &format!("{key}.name"),
                format!("{name:?} is a built-in identity source; choose another name"),
            );
        } else if !names.insert(name) {
            bad(&format!("{key}.name"), format!("{name:?} is used twice"));
        }
        if f.kind
            .as_deref()
            .is_some_and(|k| berth_auth::federation::Kind::parse(k).is_none())
        {
            bad(&format!("{key}.kind"), "kubernetes or oidc".to_owned());
        }
        let issuer = f.issuer.as_deref().unwrap_or("");
        if issuer.is_empty() {
            bad(
                &format!("{key}.issuer"),
                "required: the iss its tokens carry".to_owned(),
            );
        } else if !issuers.insert(issuer) {
            bad(
                &format!("{key}.issuer"),
                format!("{issuer:?} is trusted twice; one entry per issuer"),
            );
        }
        if f.audience.as_deref().unwrap_or("").is_empty() {
            bad(
                &format!("{key}.audience"),
                "required: without it, a token the issuer made for any other service would log in here (for Kubernetes, every pod's default token for the API server)".to_owned(),
            );
        }
        if f.jwks.is_some() && f.jwksurl.is_some() {
            bad(&key, "set jwks (a file) or jwksurl, not both".to_owned());
        }
        if f.jwks.is_none()
            && f.jwksurl.is_none()
            && !(issuer.starts_with("https://") || issuer.starts_with("http://"))
        {
            bad(
                &key,
                format!("set jwks (a file) or jwksurl: the keys cannot be discovered from the issuer {issuer:?}, which is not a URL"),
            );
        }
        for a in f.algorithms.iter().flatten() {
            if berth_auth::keys::Alg::parse(a).is_none() {
                bad(
                    &format!("{key}.algorithms"),
                    format!("{a:?} is not an asymmetric JWS algorithm Berth verifies (RS256/384/512, PS256/384/512, ES256/384)"),
                );
            }
        }
        if let Some(t) = &f.account {
            match berth_auth::acl::variables(t) {
                Err(e) => bad(&format!("{key}.account"), e),
                Ok(vars) => {
                    if let Some(v) = vars.iter().find(|v| {
                        !v.starts_with("claims.")
                            && !(f.kind.as_deref() == Some("kubernetes")
                                && (*v == "namespace" || *v == "serviceaccount"))
                    }) {
                        bad(
                            &format!("{key}.account"),
                            format!("${{{v}}} is not a claim of its tokens"),
                        );
                    }
                }
            }
        }
    }
}

/// A duration that is checked only when it is not negative: Go reads a negative one as "off"
/// (go-redis's timeouts) or as zero (`proxy.exec.lifetime`).
fn non_negative(v: &Option<String>) -> Option<&String> {
    v.as_ref().filter(|s| !s.trim().starts_with('-'))
}

fn exec_lifetime(e: &Option<schema::ProxyExec>) -> Option<&String> {
    e.as_ref().and_then(|e| non_negative(&e.lifetime))
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
        if s3.usefipsendpoint == Some(true) {
            add("storage.s3.usefipsendpoint: FIPS endpoints are not chosen automatically (set regionendpoint to the FIPS endpoint)");
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

    if c.log.hooks.as_ref().is_some_and(active_hooks) {
        add("log.hooks: mail hooks (no mail is sent for log lines)");
    }
    if c.reporting.as_ref().is_some_and(|r| !r.is_null()) {
        add("reporting: Bugsnag and New Relic reporting (nothing is reported to them)");
    }
    if c.compatibility
        .as_ref()
        .and_then(|v| v.get("schema1"))
        .and_then(|v| v.get("enabled"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        add("compatibility.schema1: schema 1 manifests are not accepted (distribution 3 dropped them too)");
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
const SECRET_KEYS: [&str; 9] = [
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
    // auth.issuer.ldap: the service account's password.
    "bindpassword",
];

impl Config {
    /// `policy.repository.classes`: the manifest classes pushes may have (empty: any). A value
    /// that is not a list of strings is reported by [`check`].
    pub fn manifest_classes(&self) -> Result<Vec<String>, String> {
        let Some(classes) = self
            .policy
            .as_ref()
            .and_then(|p| p.get("repository"))
            .and_then(|r| r.get("classes"))
            .filter(|v| !v.is_null())
        else {
            return Ok(Vec::new());
        };
        let list = classes
            .as_sequence()
            .ok_or("expected a list of class names")?;
        list.iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("{other:?} is not a class name")),
            })
            .collect()
    }

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
        // So do webhook headers; and a webhook URL may carry a password.
        if let Some(Value::Sequence(eps)) = v
            .get_mut("notifications")
            .and_then(|n| n.get_mut("endpoints"))
        {
            for ep in eps {
                if let Some(Value::Mapping(h)) = ep.get_mut("headers") {
                    for (_, val) in h.iter_mut() {
                        *val = Value::String("<redacted>".to_owned());
                    }
                }
                if let Some(Value::String(url)) = ep.get_mut("url") {
                    if let Ok(mut u) = reqwest::Url::parse(url) {
                        if u.password().is_some() {
                            let _ = u.set_password(Some("redacted"));
                            *url = u.to_string();
                        }
                    }
                }
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
