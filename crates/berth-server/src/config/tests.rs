use super::*;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ok(text: &str, vars: &[(&str, &str)]) -> Loaded {
    parse(text, "config.yml", &env(vars)).unwrap_or_else(|e| panic!("{e}"))
}

fn problems(text: &str, vars: &[(&str, &str)]) -> Vec<Problem> {
    match parse(text, "config.yml", &env(vars)) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.problems,
    }
}

/// distribution's own sample config (cmd/registry/config-example.yml).
const DISTRIBUTION_EXAMPLE: &str = "version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
";

#[test]
fn distribution_example_loads() {
    let l = ok(DISTRIBUTION_EXAMPLE, &[]);
    assert_eq!(l.config.http.addr, ":5000");
    assert!(
        matches!(l.config.storage.driver(), StorageDriver::Filesystem(f) if f.rootdirectory == "/var/lib/registry")
    );
    // The blob-descriptor cache and the health checks are supported now.
    assert!(!l.unsupported.iter().any(|u| u.starts_with("storage.cache")));
    assert!(!l.unsupported.iter().any(|u| u.starts_with("health")));
    assert!(l.config.health.is_some());
    assert_eq!(l.config.catalog.maxentries, 1000);
}

#[test]
fn full_v3_style_sections_parse() {
    let text = "version: 0.1
storage:
  s3:
    region: us-east-1
    bucket: b
    accesskey: AKIA
    secretkey: SECRET
    forcepathstyle: true
  delete: {enabled: true}
  redirect: {disable: true}
  maintenance:
    uploadpurging: {enabled: true, age: 168h, interval: 24h, dryrun: false}
    readonly: {enabled: false}
auth:
  token:
    realm: https://auth/token
    service: registry
    issuer: issuer
    rootcertbundle: /certs/bundle.pem
    jwks: /certs/jwks.json
    signingalgorithms: [RS256, ES256]
redis:
  addrs: [redis:6379]
  password: hunter2
  db: 0
  dialtimeout: 10ms
  pool: {maxidle: 16, maxactive: 64, idletimeout: 300s}
proxy:
  remoteurl: https://registry-1.docker.io
  username: u
  password: p
  ttl: 168h
notifications:
  endpoints:
    - name: alistener
      url: https://hook/
      headers:
        Authorization: [Bearer xyz]
      timeout: 1s
    - name: other
      url: https://user:hookpass@hook2/
      headers:
        X-Api-Key: [apikey123]
http:
  addr: 0.0.0.0:5000
  secret: asecretforlocaldevelopment
  tls: {certificate: /c.pem, key: /k.pem}
  debug: {addr: '127.0.0.1:5001', prometheus: {enabled: true, path: /metrics}}
";
    let l = ok(text, &[]);
    let y = l.config.redacted_yaml();
    for secret in [
        "SECRET",
        "AKIA",
        "hunter2",
        "asecretforlocaldevelopment",
        "Bearer xyz",
        "hookpass",
        "apikey123",
        "password: p\n",
    ] {
        assert!(!y.contains(secret), "{secret} not redacted:\n{y}");
    }
    assert!(y.contains("<redacted>"));
    assert!(y.contains("bucket: b"));
    // auth.token, storage.s3, redis, proxy, the debug server and TLS are supported now: not
    // listed.
    for supported in [
        "auth",
        "storage.s3",
        "redis:",
        "proxy",
        "http.debug",
        "http.tls",
    ] {
        assert!(
            !l.unsupported.iter().any(|u| u.starts_with(supported)),
            "{supported} listed: {:?}",
            l.unsupported
        );
    }
    assert!(
        !l.unsupported.iter().any(|u| u.starts_with("notifications")),
        "notifications listed: {:?}",
        l.unsupported
    );
}

#[test]
fn unknown_keys_are_warnings_with_line_and_hint() {
    let text = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /x\n    rootdir: 1\nhttp:\n  addr: :5000\n  nonsense: true\nlogLevel: debug\ndatabase:\n  dsn: x\n";
    let l = ok(text, &[]);
    let all: Vec<String> = l.unknown.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(
        all.iter().any(|s| s.starts_with("config.yml:5:5:")
            && s.contains("storage.filesystem.rootdir`")
            && s.contains("did you mean `storage.filesystem.rootdirectory`")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|s| s.starts_with("config.yml:8:3:") && s.contains("http.nonsense")),
        "{all:?}"
    );
    // distribution's keys are case-sensitive: `logLevel` is not `loglevel`, but the hint says so.
    assert!(
        all.iter()
            .any(|s| s.starts_with("config.yml:9:1:") && s.contains("did you mean `loglevel`")),
        "{all:?}"
    );
    assert!(l.config.loglevel.is_none());
    assert!(
        all.iter()
            .any(|s| s.starts_with("config.yml:10:1:") && s.contains("`database`")),
        "{all:?}"
    );
}

#[test]
fn type_errors_carry_their_line() {
    let p = problems(
        "version: 0.1\nstorage:\n  inmemory:\nhttp:\n  relativeurls: maybe\n",
        &[],
    );
    assert!(p[0].location.starts_with("config.yml:5"), "{p:?}");
    // `storage.delete` is one of distribution's untyped parameter maps: a word there is not an
    // error, it leaves deletes off (with a warning).
    let l = ok(
        "version: 0.1\nstorage:\n  inmemory:\n  delete:\n    enabled: maybe\n",
        &[],
    );
    assert!(!l.config.storage.delete.enabled);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.starts_with("config.yml:5:14:") && w.contains("deletes stay off")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn semantic_problems_are_reported_together() {
    let text = "version: 0.2\nstorage:\n  filesystem: {rootdirectory: /a}\n  inmemory:\nhttp:\n  addr: nope\n  draintimeout: 10 parsecs\nlog:\n  level: loud\n";
    let p = problems(text, &[]);
    let locs: Vec<&str> = p.iter().map(|p| p.location.as_str()).collect();
    for l in [
        "version",
        "storage",
        "http.addr",
        "http.draintimeout",
        "log.level",
    ] {
        assert!(locs.contains(&l), "{l} missing from {p:?}");
    }
    let p = problems("version: 0.1\nhttp:\n  addr: :5000\n", &[]);
    assert_eq!(p[0].location, "storage");
}

#[test]
fn env_overrides_follow_distributions_rule() {
    let l = ok(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /a\n",
        &[
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/b"),
            ("REGISTRY_HTTP_ADDR", ":5001"),
            ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
            ("REGISTRY_LOG_LEVEL", "debug"),
            ("REGISTRY_HTTP_SECRET", "12345"),
            ("REGISTRY_CATALOG_MAXENTRIES", "50"),
        ],
    );
    assert!(
        matches!(l.config.storage.driver(), StorageDriver::Filesystem(f) if f.rootdirectory == "/b")
    );
    assert_eq!(l.config.http.addr, ":5001");
    assert!(l.config.storage.delete.enabled);
    assert_eq!(l.config.log.level.as_deref(), Some("debug"));
    assert_eq!(
        l.config.http.secret.as_deref(),
        Some("12345"),
        "a numeric-looking string key stays a string"
    );
    assert_eq!(l.config.catalog.maxentries, 50);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn env_can_select_the_storage_driver() {
    let l = ok(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /a\n  delete: {enabled: true}\n",
        &[("REGISTRY_STORAGE", "inmemory")],
    );
    assert!(matches!(l.config.storage.driver(), StorageDriver::InMemory));
    // As in distribution, the variable replaces the whole section: the file's delete setting
    // is gone, and a warning says so.
    assert!(!l.config.storage.delete.enabled);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("REGISTRY_STORAGE ") && w.contains("storage.delete")),
        "{:?}",
        l.warnings
    );
    // Later variables (sorted by name) fill the new section.
    let l = ok(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /a\n",
        &[
            ("REGISTRY_STORAGE", "inmemory"),
            ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        ],
    );
    assert!(matches!(l.config.storage.driver(), StorageDriver::InMemory));
    assert!(l.config.storage.delete.enabled);
}

#[test]
fn kubernetes_and_podman_variables_are_ignored_with_warnings() {
    let vars = [
        ("REGISTRY_AUTH_PORT", "tcp://10.0.0.1:443"),
        ("REGISTRY_AUTH_PORT_443_TCP_ADDR", "10.0.0.1"),
        ("REGISTRY_AUTH_SERVICE_HOST", "10.0.0.1"),
        ("REGISTRY_PORT", "tcp://10.0.0.5:5000"),
        ("REGISTRY_PORT_5000_TCP", "tcp://10.0.0.5:5000"),
        ("REGISTRY_SERVICE_HOST", "10.0.0.5"),
        ("REGISTRY_SERVICE_PORT", "5001"),
        ("REGISTRY_AUTH_FILE", "/run/user/0/containers/auth.json"),
        ("REGISTRY__WEIRD", "x"),
    ];
    let l = ok("version: 0.1\nstorage:\n  inmemory:\n", &vars);
    assert_eq!(l.warnings.len(), vars.len(), "{:?}", l.warnings);
    for (k, v) in vars {
        assert!(l.warnings.iter().any(|w| w.contains(k)), "{k}");
        assert!(
            !l.warnings.iter().any(|w| w.contains(v)),
            "value of {k} echoed"
        );
    }
    assert!(
        l.config.auth.is_none(),
        "an ignored variable must not create a section"
    );
}

#[test]
fn wrong_typed_override_is_a_problem() {
    let p = problems(
        "version: 0.1\nstorage:\n  inmemory:\n",
        &[("REGISTRY_STORAGE_DELETE_ENABLED", "maybe")],
    );
    assert_eq!(p[0].location, "REGISTRY_STORAGE_DELETE_ENABLED");
    assert!(
        !p[0].message.contains("maybe") || p[0].message.contains("bool"),
        "{p:?}"
    );
}

#[test]
fn search_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yml");
    let b = dir.path().join("b.yml");
    std::fs::write(
        &a,
        "version: 0.1\nstorage:\n  filesystem: {rootdirectory: /from-a}\n",
    )
    .unwrap();
    std::fs::write(
        &b,
        "version: 0.1\nstorage:\n  filesystem: {rootdirectory: /from-b}\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.yml");
    let l = load_from(None, None, &[missing.clone(), b.clone(), a.clone()], &[]).unwrap();
    assert_eq!(l.source, ConfigSource::Standard(b.clone()));
    let l = load_from(None, Some(&a), std::slice::from_ref(&b), &[]).unwrap();
    assert_eq!(l.source, ConfigSource::Env(a.clone()));
    let l = load_from(Some(&b), Some(&a), &[], &[]).unwrap();
    assert_eq!(l.source, ConfigSource::Explicit(b.clone()));
    let l = load_from(None, None, std::slice::from_ref(&missing), &[]).unwrap();
    assert_eq!(l.source, ConfigSource::Embedded);
    assert!(
        matches!(l.config.storage.driver(), StorageDriver::Filesystem(f) if f.rootdirectory == DEFAULT_ROOT)
    );
    assert_eq!(l.config.http.addr, "127.0.0.1:5000");
    assert!(!l.config.storage.delete.enabled);
    assert!(load_from(Some(&missing), None, &[], &[]).is_err());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    // An integer is nanoseconds, as yaml.v2 reads it into a Go time.Duration.
    assert_eq!(parse_duration("500"), Ok(Duration::from_nanos(500)));
    assert_eq!(parse_duration("30000000000"), Ok(Duration::from_secs(30)));
    // The last two are found by fuzzing: they used to panic.
    for bad in [
        "",
        "-5",
        "s",
        "10 s",
        "5d",
        "1h-5m",
        "99999999999999999999h",
        "1e999s",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

/// The variables kubelet injects (docker-links style) for the Services of `deploy/kubernetes`:
/// `registry` (port `http` 5000) and `registry-redis` (port `redis` 6379), exactly as named.
const KUBERNETES_SERVICE_LINKS: [(&str, &str); 16] = [
    ("REGISTRY_SERVICE_HOST", "10.96.0.10"),
    ("REGISTRY_SERVICE_PORT", "5000"),
    ("REGISTRY_SERVICE_PORT_HTTP", "5000"),
    ("REGISTRY_PORT", "tcp://10.96.0.10:5000"),
    ("REGISTRY_PORT_5000_TCP", "tcp://10.96.0.10:5000"),
    ("REGISTRY_PORT_5000_TCP_PROTO", "tcp"),
    ("REGISTRY_PORT_5000_TCP_PORT", "5000"),
    ("REGISTRY_PORT_5000_TCP_ADDR", "10.96.0.10"),
    ("REGISTRY_REDIS_SERVICE_HOST", "10.96.0.11"),
    ("REGISTRY_REDIS_SERVICE_PORT", "6379"),
    ("REGISTRY_REDIS_SERVICE_PORT_REDIS", "6379"),
    ("REGISTRY_REDIS_PORT", "tcp://10.96.0.11:6379"),
    ("REGISTRY_REDIS_PORT_6379_TCP", "tcp://10.96.0.11:6379"),
    ("REGISTRY_REDIS_PORT_6379_TCP_PROTO", "tcp"),
    ("REGISTRY_REDIS_PORT_6379_TCP_PORT", "6379"),
    ("REGISTRY_REDIS_PORT_6379_TCP_ADDR", "10.96.0.11"),
];

#[test]
fn kubernetes_service_links_change_nothing_with_or_without_a_redis_section() {
    let plain = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n";
    let with_redis = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n  cache:\n    blobdescriptor: redis\nhttp:\n  addr: :5000\nredis:\n  addr: registry-redis:6379\n  db: 0\n";
    for text in [plain, with_redis] {
        let bare = ok(text, &[]);
        let l = ok(text, &KUBERNETES_SERVICE_LINKS);
        assert_eq!(
            l.warnings.len(),
            KUBERNETES_SERVICE_LINKS.len(),
            "one warning per variable: {:?}",
            l.warnings
        );
        for (k, v) in KUBERNETES_SERVICE_LINKS {
            assert!(
                l.warnings.iter().any(|w| w.contains(&format!("{k} "))),
                "no warning names {k}: {:?}",
                l.warnings
            );
            assert!(
                !l.warnings.iter().any(|w| w.contains(v) && v.contains('.')),
                "value of {k} echoed"
            );
        }
        // The effective configuration is exactly the one without the variables.
        assert_eq!(l.config.redacted_yaml(), bare.config.redacted_yaml());
        assert!(l.unsupported.is_empty(), "{:?}", l.unsupported);
    }
}

#[test]
fn service_links_below_a_scalar_key_are_ignored_too() {
    // Services `registry-auth-token`, `registry-version` and `registry-loglevel`: the variables
    // run through the string keys auth.token.service, version and loglevel.
    let vars = [
        ("REGISTRY_AUTH_TOKEN_SERVICE_HOST", "10.96.0.12"),
        ("REGISTRY_AUTH_TOKEN_SERVICE_PORT", "443"),
        ("REGISTRY_AUTH_TOKEN_PORT", "tcp://10.96.0.12:443"),
        ("REGISTRY_VERSION_PORT", "tcp://10.96.0.13:80"),
        ("REGISTRY_VERSION_SERVICE_HOST", "10.96.0.13"),
        ("REGISTRY_LOGLEVEL_SERVICE_HOST", "10.96.0.14"),
        ("REGISTRY_HTTP_RELATIVEURLS_PORT", "tcp://10.96.0.15:80"),
    ];
    let with_token = "version: 0.1\nstorage:\n  inmemory:\nauth:\n  token:\n    realm: https://auth.example.com/token\n    service: registry.example.com\n    issuer: auth\n    jwks: /etc/jwks.json\n";
    for text in ["version: 0.1\nstorage:\n  inmemory:\n", with_token] {
        let bare = ok(text, &[]);
        let l = ok(text, &vars);
        assert_eq!(l.warnings.len(), vars.len(), "{:?}", l.warnings);
        assert_eq!(l.config.redacted_yaml(), bare.config.redacted_yaml());
    }
    // A wrong value for a real scalar key is still a problem, not a warning.
    let p = problems(
        "version: 0.1\nstorage:\n  inmemory:\n",
        &[("REGISTRY_HTTP_RELATIVEURLS", "maybe")],
    );
    assert_eq!(p[0].location, "REGISTRY_HTTP_RELATIVEURLS");
}

#[test]
fn http_limits_are_berths_own_keys() {
    use crate::limits::{Limits, DEFAULT_MAX_HEADER_BYTES};
    use std::time::Duration;
    let base = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /a\n";
    assert_eq!(
        Limits::from_config(&ok(base, &[]).config),
        Limits::default()
    );
    let l = ok(
        &format!("{base}http:\n  limits:\n    readheadertimeout: 5s\n    bodyidletimeout: 0s\n    maxheaderbytes: 8192\n"),
        &[("REGISTRY_HTTP_LIMITS_WRITEIDLETIMEOUT", "2m")],
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let limits = Limits::from_config(&l.config);
    assert_eq!(limits.header_read_timeout, Some(Duration::from_secs(5)));
    assert_eq!(limits.body_idle_timeout, None);
    assert_eq!(limits.write_idle_timeout, Some(Duration::from_secs(120)));
    assert_eq!(limits.max_header_bytes, 8192);
    assert_ne!(DEFAULT_MAX_HEADER_BYTES, 8192);
    let p = problems(
        &format!("{base}http:\n  limits:\n    bodyidletimeout: soon\n    maxheaderbytes: 10\n"),
        &[],
    );
    let locs: Vec<&str> = p.iter().map(|p| p.location.as_str()).collect();
    assert!(locs.contains(&"http.limits.bodyidletimeout"), "{p:?}");
    assert!(locs.contains(&"http.limits.maxheaderbytes"), "{p:?}");
}

#[test]
fn http_listener_prefix_and_page_limits_as_distribution() {
    let base = "version: 0.1\nstorage:\n  inmemory: {}\n";
    // A Unix socket's address is a path; other networks are refused (distribution too).
    let l = ok(
        &format!("{base}http:\n  net: unix\n  addr: /run/registry.sock\n"),
        &[],
    );
    assert!(l.config.http.unix());
    let p = problems(&format!("{base}http:\n  net: udp\n  addr: :5000\n"), &[]);
    assert!(p.iter().any(|p| p.location == "http.net"), "{p:?}");
    let p = problems(
        &format!("{base}http:\n  net: tcp\n  addr: /run/x.sock\n"),
        &[],
    );
    assert!(p.iter().any(|p| p.location == "http.addr"), "{p:?}");

    // http.prefix is served: not listed; its form is normalised.
    for (prefix, path) in [
        ("/registry/", "/registry"),
        ("/a/b", "/a/b"),
        ("/", ""),
        ("registry/", "/registry"),
    ] {
        let l = ok(&format!("{base}http:\n  prefix: {prefix}\n"), &[]);
        assert_eq!(l.config.http.prefix_path(), path, "{prefix}");
        assert!(l.unsupported.is_empty(), "{:?}", l.unsupported);
    }
    let l = ok(base, &[("REGISTRY_HTTP_PREFIX", "/env/")]);
    assert_eq!(l.config.http.prefix_path(), "/env");

    // catalog.maxentries: 0 or less means 1000; tags.maxtags: 0 means 1000, negative refused.
    let l = ok(
        &format!("{base}catalog:\n  maxentries: -5\ntags:\n  maxtags: 0\n"),
        &[],
    );
    assert_eq!(l.config.catalog.max_entries(), 1000);
    assert_eq!(l.config.tags.max_tags(), 1000);
    let l = ok(
        &format!("{base}catalog:\n  maxentries: 7\ntags:\n  maxtags: 3\n"),
        &[],
    );
    assert_eq!(
        (l.config.catalog.max_entries(), l.config.tags.max_tags()),
        (7, 3)
    );
    let p = problems(&format!("{base}tags:\n  maxtags: -1\n"), &[]);
    assert!(p.iter().any(|p| p.location == "tags.maxtags"), "{p:?}");
}

#[test]
fn log_hooks_and_reporting_are_named_as_ignored() {
    let base = "version: 0.1\nstorage:\n  inmemory: {}\n";
    let l = ok(
        &format!("log:\n  hooks:\n    - type: mail\n      levels: [panic]\n{base}reporting:\n  bugsnag:\n    apikey: k\n"),
        &[],
    );
    assert_eq!(l.unsupported.len(), 2, "{:?}", l.unsupported);
    assert!(l.unsupported[0].starts_with("log.hooks"));
    assert!(l.unsupported[1].starts_with("reporting"));
    let l = ok(
        &format!("log:\n  hooks:\n    - type: mail\n      disabled: true\n{base}"),
        &[],
    );
    assert!(l.unsupported.is_empty(), "{:?}", l.unsupported);
}

/// Values as distribution's yaml.v2 reads them.
#[test]
fn values_are_read_as_go_reads_them() {
    let text = "version: 0.1
storage:
  filesystem:
    rootdirectory: /data
    maxthreads: \"100\"
  delete:
    enabled: yes
  maintenance:
    uploadpurging:
      enabled: on
      age: 168h
      interval: 24h
      dryrun: no
http:
  addr: :5000
  secret: 12345
  draintimeout: 0
  relativeurls: True
catalog:
  maxentries: 0x20
notifications:
  endpoints:
    - name: hook
      url: http://127.0.0.1:1/
      timeout: 500
      threshold: 5
      backoff: 1s
";
    let l = ok(text, &[]);
    let c = &l.config;
    assert!(c.storage.delete.enabled);
    assert!(c.http.relativeurls);
    assert_eq!(c.http.secret.as_deref(), Some("12345"));
    assert_eq!(c.catalog.maxentries, 32);
    assert!(
        matches!(c.storage.driver(), StorageDriver::Filesystem(f) if f.maxthreads == Some(100))
    );
    let u = c.storage.maintenance.uploadpurging.as_ref().unwrap();
    assert!(u.enabled && !u.dryrun);
    let ep = &c
        .notifications
        .as_ref()
        .unwrap()
        .endpoints
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        parse_duration(ep.timeout.as_deref().unwrap()),
        Ok(Duration::from_nanos(500))
    );
    assert_eq!(
        parse_duration(c.http.draintimeout.as_deref().unwrap()),
        Ok(Duration::ZERO)
    );
    // distribution treats maxentries <= 0 as its default.
    let l = ok(
        "version: 0.1\nstorage: inmemory\ncatalog:\n  maxentries: -1\n",
        &[],
    );
    assert_eq!(l.config.catalog.max_entries(), 1000);
}

#[test]
fn errors_name_file_line_or_variable() {
    let p = problems(
        "version: 0.1\nstorage:\n  inmemory:\nhttp:\n  draintimeout: soon\n  relativeurls: perhaps\n",
        &[],
    );
    assert!(
        p.iter()
            .any(|p| p.location == "config.yml:6:17" && p.message.contains("true or false")),
        "{p:?}"
    );
    let p = problems(
        "version: 0.1\nstorage:\n  inmemory:\n",
        &[("REGISTRY_HTTP_RELATIVEURLS", "hunter2")],
    );
    assert_eq!(p[0].location, "REGISTRY_HTTP_RELATIVEURLS", "{p:?}");
    assert!(!p[0].message.contains("hunter2"), "value echoed: {p:?}");
    let p = problems("version: 0.1\nstorage:\n  inmemory:\n   bad: [\n", &[]);
    assert!(p[0].location.starts_with("config.yml:"), "{p:?}");
    let p = problems("storage:\n  inmemory:\n", &[]);
    assert!(p[0].message.contains("version"), "{p:?}");
}

#[test]
fn repeated_keys_last_wins_with_a_warning() {
    let l = ok(
        "version: 0.1\nstorage:\n  inmemory:\nhttp:\n  addr: :5000\n  addr: :6000\n",
        &[],
    );
    assert_eq!(l.config.http.addr, ":6000");
    assert!(
        l.warnings
            .iter()
            .any(|w| w.starts_with("config.yml:6:3") && w.contains("config.yml:5:3")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn anchors_and_merge_keys() {
    let l = ok(
        "version: 0.1\nx-common: &common\n  enabled: true\n  interval: 5s\nstorage:\n  inmemory:\nhealth:\n  storagedriver:\n    <<: *common\n    threshold: 2\n",
        &[],
    );
    let sd = l.config.health.unwrap().storagedriver.unwrap();
    assert!(sd.enabled);
    assert_eq!(sd.interval.as_deref(), Some("5s"));
    assert_eq!(sd.threshold, Some(2));
    // The anchor's holder is a key distribution does not know.
    assert_eq!(l.unknown.len(), 1);
}

#[test]
fn indexed_list_variables() {
    let l = ok(
        "version: 0.1\nstorage:\n  inmemory:\n",
        &[
            ("REGISTRY_HEALTH_TCP_0_ADDR", "127.0.0.1:6379"),
            ("REGISTRY_HEALTH_TCP_0_INTERVAL", "3s"),
            ("REGISTRY_HEALTH_TCP_1_ADDR", "127.0.0.1:5432"),
            ("REGISTRY_NOTIFICATIONS_ENDPOINTS_0_NAME", "hook"),
            (
                "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL",
                "http://127.0.0.1:1/",
            ),
            ("REGISTRY_NOTIFICATIONS_ENDPOINTS_0_TIMEOUT", "500"),
        ],
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let tcp = l.config.health.unwrap().tcp.unwrap();
    assert_eq!(tcp.len(), 2);
    assert_eq!(tcp[0].interval.as_deref(), Some("3s"));
    assert_eq!(tcp[1].addr, "127.0.0.1:5432");
    let ep = &l.config.notifications.unwrap().endpoints.unwrap()[0];
    assert_eq!(ep.url.as_deref(), Some("http://127.0.0.1:1/"));
    // An index past the end is refused, as distribution refuses it.
    let p = problems(
        "version: 0.1\nstorage:\n  inmemory:\nhealth:\n  tcp:\n    - addr: a:1\n",
        &[("REGISTRY_HEALTH_TCP_5_ADDR", "b:2")],
    );
    assert_eq!(p[0].location, "REGISTRY_HEALTH_TCP_5_ADDR", "{p:?}");
}

#[test]
fn sections_set_to_a_word() {
    let base = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /a\n";
    let l = ok(
        base,
        &[
            ("REGISTRY_AUTH", "htpasswd"),
            ("REGISTRY_AUTH_HTPASSWD_PATH", "/auth/htpasswd"),
            ("REGISTRY_AUTH_HTPASSWD_REALM", "Registry Realm"),
        ],
    );
    let h = l.config.auth.unwrap().htpasswd.unwrap();
    assert_eq!(h.path.as_deref(), Some("/auth/htpasswd"));
    // Without its path, htpasswd is refused, as in distribution.
    let p = problems(base, &[("REGISTRY_AUTH", "htpasswd")]);
    assert!(
        p.iter().any(|p| p.location == "auth.htpasswd.path"),
        "{p:?}"
    );
    // The file may use the word form too.
    let l = ok("version: 0.1\nstorage: inmemory\n", &[]);
    assert!(matches!(l.config.storage.driver(), StorageDriver::InMemory));
    let l = ok(
        base,
        &[
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_STORAGE_S3_BUCKET", "b"),
            ("REGISTRY_STORAGE_S3_REGION", "us-east-1"),
        ],
    );
    assert!(
        matches!(l.config.storage.driver(), StorageDriver::S3(s) if s.bucket.as_deref() == Some("b"))
    );
}

#[test]
fn drivers_berth_lacks_refuse_never_fall_back() {
    let base = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /a\n";
    for driver in ["gcs", "azure", "swift", "oss"] {
        let p = problems(base, &[("REGISTRY_STORAGE", driver)]);
        assert!(
            p.iter().any(|p| p.location == "REGISTRY_STORAGE"
                && p.message.contains(&format!("`{driver}`"))
                && p.message.contains("not available")),
            "{p:?}"
        );
    }
    let p = problems("version: 0.1\nstorage:\n  gcs:\n    bucket: b\n", &[]);
    assert!(p.iter().any(|p| p.location == "config.yml:3:3"), "{p:?}");
    let p = problems("version: 0.1\nstorage:\n  floppy: {}\n", &[]);
    assert!(
        p.iter()
            .any(|p| p.message.contains("unknown storage driver `floppy`")),
        "{p:?}"
    );
    let p = problems(
        "version: 0.1\nstorage:\n  inmemory:\nauth:\n  ldap:\n    url: x\n",
        &[],
    );
    assert!(
        p.iter()
            .any(|p| p.location == "config.yml:5:3" && p.message.contains("unknown auth type")),
        "{p:?}"
    );
}

/// distribution's S3 driver checks the region against the AWS SDK's list, and not at all when
/// a custom endpoint is set; it uppercases the storage class and refuses unknown ones.
#[test]
fn s3_region_and_storage_class_as_distribution() {
    let s3 = |extra: &str| format!("version: 0.1\nstorage:\n  s3:\n    bucket: b\n{extra}");
    let p = problems(&s3("    region: moon-1\n"), &[]);
    assert!(p[0].message.contains("regionendpoint"), "{p:?}");
    let p = problems(&s3(""), &[]);
    assert_eq!(p[0].location, "storage.s3.region", "{p:?}");
    ok(&s3("    regionendpoint: http://minio:9000\n"), &[]);
    ok(
        &s3("    region: garage\n    regionendpoint: http://garage:3900\n"),
        &[],
    );
    ok(
        &s3("    region: us-east-1\n    storageclass: standard_ia\n"),
        &[],
    );
    let p = problems(
        &s3("    region: us-east-1\n    storageclass: GLACIER\n"),
        &[],
    );
    assert!(p[0].message.contains("GLACIER"), "{p:?}");
}

#[test]
fn old_and_other_names() {
    let l = ok(
        "version: 0.1\nstorage:\n  s3aws:\n    bucket: b\n    region: eu-west-1\n    usefipsendpoint: false\n  cache:\n    layerinfo: inmemory\n",
        &[],
    );
    assert!(matches!(l.config.storage.driver(), StorageDriver::S3(_)));
    assert_eq!(
        l.config.storage.cache.unwrap().blobdescriptor.as_deref(),
        Some("inmemory")
    );
    assert!(l.unknown.is_empty(), "{:?}", l.unknown);
}

#[test]
fn registry_configuration_path_is_honoured_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, root: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!("version: 0.1\nstorage:\n  filesystem: {{rootdirectory: {root}}}\n"),
        )
        .unwrap();
        p
    };
    let (a, b, std_path) = (
        write("a.yml", "/a"),
        write("b.yml", "/b"),
        write("s.yml", "/s"),
    );
    let env_b = env(&[("REGISTRY_CONFIGURATION_PATH", b.to_str().unwrap())]);
    let std_paths = [std_path.clone()];
    let l = load_from(None, None, &std_paths, &env_b).unwrap();
    assert_eq!(l.source, ConfigSource::RegistryEnv(b.clone()));
    // Not a key override: no warning about it.
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let l = load_from(None, Some(&a), &std_paths, &env_b).unwrap();
    assert_eq!(l.source, ConfigSource::Env(a.clone()));
    let l = load_from(Some(&std_path), Some(&a), &std_paths, &env_b).unwrap();
    assert_eq!(l.source, ConfigSource::Explicit(std_path.clone()));
    let l = load_from(None, None, &std_paths, &[]).unwrap();
    assert_eq!(l.source, ConfigSource::Standard(std_path));
}

#[test]
fn go_scalars() {
    use yaml::{parse_int, resolve, Resolved};
    assert_eq!(resolve("yes", true), Resolved::Bool(true));
    assert_eq!(resolve("Off", true), Resolved::Bool(false));
    assert_eq!(resolve("yes", false), Resolved::Str("yes"));
    assert_eq!(resolve("~", true), Resolved::Null);
    assert_eq!(resolve("0.1", true), Resolved::Float(0.1));
    assert_eq!(resolve("1e3", true), Resolved::Float(1000.0));
    assert_eq!(resolve(":5000", true), Resolved::Str(":5000"));
    assert_eq!(resolve("10s", true), Resolved::Str("10s"));
    assert_eq!(parse_int("1_000"), Some(1000));
    assert_eq!(parse_int("0x1f"), Some(31));
    assert_eq!(parse_int("017"), Some(15));
    assert_eq!(parse_int("-5"), Some(-5));
    assert_eq!(parse_int("08"), None);
    assert_eq!(parse_int("5s"), None);
}

#[test]
fn hostile_yaml_is_refused_not_a_crash() {
    let deep = format!(
        "version: 0.1\nx: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(!problems(&deep, &[]).is_empty());
    let mut laughs = String::from("version: 0.1\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = i - 1;
        laughs.push_str(&format!(
            "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
        ));
    }
    let p = problems(&laughs, &[]);
    assert!(p[0].message.contains("aliases"), "{p:?}");
    // Aliases stacked on aliases, each level within the limit, the whole far deeper.
    let wrap = |inner: &str| format!("{}{inner}{}", "[".repeat(30), "]".repeat(30));
    let tall = format!(
        "version: 0.1\na0: &a0 {}\na1: &a1 {}\na2: {}\n",
        wrap("x"),
        wrap("*a0"),
        wrap("*a1")
    );
    let p = problems(&tall, &[]);
    assert!(p[0].message.contains("levels deep"), "{p:?}");
}

#[test]
fn semantic_problems_name_the_line_or_variable() {
    let p = problems(
        "version: 0.1\nstorage:\n  inmemory:\nhttp:\n  addr: nope\nhealth:\n  tcp:\n    - addr: a:1\n    - addr: broken\n",
        &[],
    );
    let addr = p.iter().find(|p| p.location == "http.addr").unwrap();
    assert!(addr.message.ends_with("(config.yml:5:3)"), "{p:?}");
    let tcp = p
        .iter()
        .find(|p| p.location == "health.tcp[1].addr")
        .unwrap();
    assert!(tcp.message.ends_with("(config.yml:9:7)"), "{p:?}");
    let p = problems(
        "version: 0.1\nstorage:\n  inmemory:\n",
        &[("REGISTRY_HTTP_ADDR", "nope")],
    );
    assert!(p[0].message.ends_with("(REGISTRY_HTTP_ADDR)"), "{p:?}");
    // A required key that is missing: its section's line.
    let p = problems(
        "version: 0.1\nstorage:\n  inmemory:\nauth:\n  htpasswd:\n    realm: r\n",
        &[],
    );
    assert!(p[0].message.ends_with("(config.yml:5:3)"), "{p:?}");
}

/// distribution starts with an empty `blobdescriptor` (no cache), and so does Berth.
#[test]
fn empty_blob_descriptor_cache_means_none() {
    let l = ok(
        "version: 0.1\nstorage:\n  inmemory: {}\n  cache:\n    blobdescriptor: \"\"\n",
        &[],
    );
    assert_eq!(
        l.config
            .storage
            .cache
            .as_ref()
            .and_then(|c| c.blobdescriptor.as_deref()),
        Some("")
    );
}

/// `auth.issuer.federated`: every setting that would let the wrong tokens in, or none at all,
/// is refused at start with the key that is wrong.
#[test]
fn federated_issuers_are_checked() {
    let config = |federated: &str, acl: &str| {
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /x\nauth:\n  token:\n    service: reg\n    issuer: berth\n  issuer:\n    keydir: /k\n    federated:\n{federated}    acl:\n{acl}"
        )
    };
    let good = "      - name: cluster\n        kind: kubernetes\n        issuer: https://kubernetes.default.svc\n        audience: reg\n        jwks: /etc/jwks.json\n";
    let rule = "      - source: cluster\n        name: \"${namespace}/*\"\n        actions: [push, pull]\n";
    let l = ok(&config(good, rule), &[]);
    let f = &l.config.auth.unwrap().issuer.unwrap().federated.unwrap()[0];
    assert_eq!(f.kind.as_deref(), Some("kubernetes"));
    let refused = |federated: &str, acl: &str| -> String {
        problems(&config(federated, acl), &[])
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let all = refused(&good.replace("        audience: reg\n", ""), rule);
    assert!(
        all.contains("auth.issuer.federated[0].audience") && all.contains("required"),
        "{all}"
    );
    let all = refused(&good.replace("name: cluster", "name: ldap"), rule);
    assert!(all.contains("built-in identity source"), "{all}");
    let all = refused(&format!("{good}{good}"), rule);
    assert!(
        all.contains("is used twice") && all.contains("trusted twice"),
        "{all}"
    );
    let all = refused(&good.replace("kind: kubernetes", "kind: k8s"), rule);
    assert!(all.contains("federated[0].kind"), "{all}");
    let all = refused(
        &good.replace(
            "        jwks: /etc/jwks.json\n",
            "        algorithms: [HS256]\n",
        ),
        rule,
    );
    assert!(all.contains("HS256"), "{all}");
    // No keys and an issuer that is not a URL: nothing to discover.
    let all = refused(
        &good.replace("        jwks: /etc/jwks.json\n", "").replace(
            "https://kubernetes.default.svc",
            "kubernetes/serviceaccount",
        ),
        rule,
    );
    assert!(all.contains("cannot be discovered"), "{all}");
    let all = refused(
        &format!("{good}        account: \"${{claims.sub}}-${{groups}}\"\n"),
        rule,
    );
    assert!(
        all.contains("federated[0].account") && all.contains("${groups}"),
        "{all}"
    );
    // A rule naming a variable that does not exist.
    let all = refused(good, &rule.replace("${namespace}", "${namespcae}"));
    assert!(
        all.contains("auth.issuer.acl[0]") && all.contains("unknown variable ${namespcae}"),
        "{all}"
    );
}

#[test]
fn robot_token_file_is_a_path() {
    let config = |line: &str| {
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /x\nauth:\n  token:\n    service: reg\n    issuer: berth\n  issuer:\n    keydir: /k\n{line}"
        )
    };
    let l = ok(&config("    robottokens: /etc/berth/robot-tokens\n"), &[]);
    let i = l.config.auth.unwrap().issuer.unwrap();
    assert_eq!(i.robottokens.as_deref(), Some("/etc/berth/robot-tokens"));
    let all: Vec<String> = problems(&config("    robottokens: \"\"\n"), &[])
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        all.iter().any(|p| p.contains("auth.issuer.robottokens")),
        "{all:?}"
    );
}
