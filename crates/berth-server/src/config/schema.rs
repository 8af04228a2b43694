//! The configuration file's schema: distribution's (`configuration/configuration.go` there),
//! as serde structs with defaults. Unknown keys are not silently dropped: loading collects
//! every key serde ignored and reports it with its line (see `super::load`). Sections that
//! later work implements (auth, redis, proxy, notifications, health, ...) are parsed now so a
//! distribution config loads unchanged and `config check` can say what is not supported yet.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml::Value;

/// `version: 0.1` is a YAML float; accept numbers and strings alike.
fn version_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        other => {
            return Err(serde::de::Error::custom(format!(
                "version must be a string, not {other:?}"
            )))
        }
    })
}

/// A key that is present with an empty value (`inmemory:`) is still present.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(
        deserialize_with = "version_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub version: Option<String>,
    pub log: Log,
    /// Deprecated top-level log level (distribution 2.x still accepts it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loglevel: Option<String>,
    pub storage: Storage,
    pub http: Http,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<Redis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Notifications>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Berth: trace export (off by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
    pub validation: Validation,
    pub catalog: Catalog,
    /// distribution 3.1: the tags endpoint's page limit.
    pub tags: Tags,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reporting: Option<Value>,
    /// distribution's middleware lists by injection point (`registry`, `repository`,
    /// `storage`); see `crate::storage_middleware`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub middleware: Option<BTreeMap<String, Vec<Middleware>>>,
    /// `policy.repository.classes`: the manifest classes a repository accepts (both versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Value>,
}

/// One middleware entry (distribution's `configuration.Middleware`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Middleware {
    pub name: String,
    /// distribution applies storage middleware whatever this says; Berth skips it, with a WARN.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Free-form, read by the middleware itself (distribution's `Parameters`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Log {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formatter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, Value>>,
    pub accesslog: AccessLog,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reportcaller: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessLog {
    pub disabled: bool,
}

/// `storage`: exactly one driver key beside the common keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Storage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub inmemory: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3>,
    pub delete: Enabled,
    pub redirect: Redirect,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
    pub maintenance: Maintenance,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<TagOptions>,
}

/// The storage driver chosen, as code sees it.
#[derive(Debug, Clone)]
pub enum StorageDriver {
    Filesystem(Filesystem),
    InMemory,
    S3(Box<S3>),
}

impl Storage {
    /// The configured driver. Validation guarantees exactly one; with none (impossible after
    /// validation) the filesystem default applies.
    pub fn driver(&self) -> StorageDriver {
        if let Some(fs) = &self.filesystem {
            StorageDriver::Filesystem(fs.clone())
        } else if self.inmemory.is_some() {
            StorageDriver::InMemory
        } else if let Some(s3) = &self.s3 {
            StorageDriver::S3(Box::new(s3.clone()))
        } else {
            StorageDriver::Filesystem(Filesystem::default())
        }
    }

    pub(crate) fn driver_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.filesystem.is_some() {
            v.push("filesystem");
        }
        if self.inmemory.is_some() {
            v.push("inmemory");
        }
        if self.s3.is_some() {
            v.push("s3");
        }
        v
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Filesystem {
    pub rootdirectory: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxthreads: Option<u64>,
    /// Berth: small reads and metadata calls on the request's thread (default true); false
    /// for a root on a network filesystem, where a stat may stall.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inlineio: Option<bool>,
}

impl Default for Filesystem {
    fn default() -> Self {
        // distribution's default.
        Filesystem {
            rootdirectory: "/var/lib/registry".to_owned(),
            maxthreads: None,
            inlineio: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct S3 {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regionendpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootdirectory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accesskey: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secretkey: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessiontoken: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipverify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forcepathstyle: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v4auth: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunksize: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multipartcopychunksize: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multipartcopymaxconcurrency: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multipartcopythresholdsize: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storageclass: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objectacl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loglevel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usedualstack: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usefipsendpoint: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub useragent: Option<String>,
    /// Berth's own: deadlines of each S3 call (see `berth_storage::S3Config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connecttimeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub responsetimeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idletimeout: Option<String>,
    /// Berth's own: attempts per S3 call, the first included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxattempts: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Enabled {
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Redirect {
    pub disable: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Cache {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blobdescriptor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blobdescriptorsize: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Maintenance {
    /// Absent: distribution's defaults (enabled, 168h, 24h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploadpurging: Option<UploadPurging>,
    pub readonly: Enabled,
    /// Berth's own: online garbage collection (`berth garbage-collect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcSettings>,
}

/// `storage.maintenance.uploadpurging`. As in distribution, a section without `enabled` is
/// enabled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadPurging {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    pub dryrun: bool,
}

impl Default for UploadPurging {
    fn default() -> Self {
        UploadPurging {
            enabled: true,
            age: None,
            interval: None,
            dryrun: false,
        }
    }
}

/// `storage.maintenance.gc` (Berth's own).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GcSettings {
    /// How often the registry refreshes content it confirms to clients (default 5m); an
    /// online collection's grace period must be at least three times this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touchinterval: Option<String>,
    /// The default grace period of `berth garbage-collect` (1h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TagOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrencylimit: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Http {
    /// `host:port`, or the socket's path when `net` is `unix`.
    pub addr: String,
    /// `tcp` (default) or `unix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    /// The path the API is served below (`/registry/`); see [`Http::prefix_path`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub relativeurls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draintimeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2: Option<Http2>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2c: Option<Enabled>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<Debug>,
    /// Berth: connection timeouts and header limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<HttpLimits>,
}

/// `http.limits` (Berth): see `crate::limits` for the defaults. `0s` turns a timeout off.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpLimits {
    /// Time to receive a request's line and headers; also closes idle keep-alive connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readheadertimeout: Option<String>,
    /// Longest wait for the next byte of a request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bodyidletimeout: Option<String>,
    /// Longest wait for the client to accept the next byte of a response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writeidletimeout: Option<String>,
    /// Largest request head (request line and headers), in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxheaderbytes: Option<usize>,
}

impl Http {
    /// Whether `net` asks for a Unix socket at `addr`.
    pub fn unix(&self) -> bool {
        self.net.as_deref() == Some("unix")
    }

    /// `prefix` as a path without its trailing slash (`/registry`), empty for none. A prefix
    /// without its leading slash gets one (distribution would answer 404 to every request).
    pub fn prefix_path(&self) -> String {
        let p = self.prefix.as_deref().unwrap_or("").trim_end_matches('/');
        if p.is_empty() || p.starts_with('/') {
            p.to_owned()
        } else {
            format!("/{p}")
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            // Loopback, unlike distribution's ":5000": nothing is exposed unless asked for.
            addr: "127.0.0.1:5000".to_owned(),
            net: None,
            prefix: None,
            host: None,
            secret: None,
            relativeurls: false,
            draintimeout: None,
            headers: None,
            http2: None,
            h2c: None,
            tls: None,
            debug: None,
            limits: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Http2 {
    pub disabled: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Tls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clientcas: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clientauth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimumtls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphersuites: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub letsencrypt: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Debug {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<Prometheus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Prometheus {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `auth`: one of distribution's access controllers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Auth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silly: Option<Silly>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<Htpasswd>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub none: Option<Value>,
    /// Berth: its own token issuer (not an access controller; it works with `token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Issuer>,
}

/// `auth.issuer` (Berth's own): serves Docker's token endpoint at `/auth/token` and its keys
/// at `/auth/jwks.json`, with the service and issuer name of `auth.token`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Issuer {
    /// Signing keys with their certificates; the first signs, all are published (rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<IssuerKey>>,
    /// A directory of `*.key` files (with `*.crt` beside them); the newest signs. A key is
    /// generated there on first start if it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keydir: Option<String>,
    /// Lifetime of access tokens (default 5m).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// Lifetime of refresh tokens (`docker login`'s identity token; default 720h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refreshexpiration: Option<String>,
    /// An htpasswd file (bcrypt) of accounts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<String>,
    /// More accounts: name to bcrypt hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<BTreeMap<String, String>>,
    /// Ordered access rules (see `berth_auth::acl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<berth_auth::acl::Rule>>,
    /// LDAP accounts for people (see `crate::ldap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ldap: Option<crate::ldap::Config>,
    /// External issuers whose tokens are accepted as the password (workload identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub federated: Option<Vec<Federated>>,
    /// Failed-login throttling at the token endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// Robot token records in this file (one JSON record per line) instead of the storage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub robottokens: Option<String>,
}

/// `auth.issuer.throttle`: after `accountfailures` failed logins for one account (or
/// `addressfailures` from one client address), each further failure locks it out for twice as
/// long as the last, up to `maxdelay` (`0s`: never).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Throttle {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accountfailures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addressfailures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxdelay: Option<String>,
}

/// `auth.issuer.federated[]`: an OIDC issuer (a Kubernetes cluster's service-account issuer,
/// GitHub Actions, GitLab, ...) whose tokens log workloads in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Federated {
    /// The identity source name, which rules' `source:` match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `kubernetes` (service-account tokens: `${namespace}`, `${serviceaccount}`) or `oidc`
    /// (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The `iss` of its tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The `aud` its tokens must have for this registry (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Its keys: a JWKS file (re-read when a token names an unknown key)...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// ... or a JWKS URL; with neither, OpenID discovery on the issuer URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwksurl: Option<String>,
    /// CA certificates for fetching the keys over HTTPS (a cluster's `ca.crt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cafile: Option<String>,
    /// A file whose content is sent as a bearer token when fetching the keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearertokenfile: Option<String>,
    /// Accepted algorithms (default: every asymmetric one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// The account name, a template over `${claims.NAME}`, `${namespace}`, `${serviceaccount}`
    /// (default `${claims.sub}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Claims its tokens must carry, with a glob their value must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IssuerKey {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Silly {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootcertbundle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Berth: a JWKS URL fetched and refreshed (OIDC issuers such as Keycloak).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwksurl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signingalgorithms: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoredirect: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoredirectpath: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Htpasswd {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `redis`, in both the 2.x (`addr`, `pool`) and 3.x (`addrs` and go-redis's
/// `UniversalOptions`) spellings. Durations are Go durations or integer nanoseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Redis {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addrs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clientname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinelusername: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinelpassword: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mastername: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxretries: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minretrybackoff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxretrybackoff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dialtimeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readtimeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writetimeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contexttimeoutenabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poolfifo: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poolsize: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooltimeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minidleconns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxidleconns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxactiveconns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connmaxidletime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connmaxlifetime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxredirects: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routebylatency: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routerandomly: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disableidentity: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identitysuffix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unstableresp3: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<RedisPool>,
}

/// `redis.tls`: 3.1's `certificate`, `key`, `rootcas`; 3.0's `clientcas` (read as `rootcas`,
/// what it was meant for) and `enabled` (TLS with the system's CAs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisTls {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootcas: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clientcas: Option<Vec<String>>,
}

/// `redis.pool` (distribution 2.x; `size` and `maxlifetime` from early 3.0 pre-releases).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisPool {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxidle: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxactive: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idletimeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxlifetime: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Proxy {
    /// distribution's single upstream: a pure mirror (every name it serves is its).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remoteurl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// How long cached content is kept (distribution's meaning: default 168h; 0 or
    /// negative: for good).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Berth: how long `remoteurl`'s tags are trusted before one HEAD asks upstream again
    /// (default 0: every pull by tag asks, as distribution does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tagttl: Option<String>,
    /// Berth: several upstreams, each owning a name prefix, with its own credentials, TTL and
    /// allow/deny patterns; names that no upstream owns are hosted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<ProxyUpstream>>,
    /// Berth: where blobs arriving from upstream are spooled while clients stream them
    /// (default: the system's temporary directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spooldir: Option<String>,
    /// distribution 3: a credential helper that gives the upstream's credentials instead of
    /// `username`/`password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ProxyExec>,
    /// distribution 3: how long a blob may take to reach the cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cachewritetimeout: Option<String>,
}

/// `proxy.exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyExec {
    /// The helper program, run with the argument `get`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// How long its answer is reused: absent, for good; 0, not at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<String>,
}

/// One of Berth's `proxy.upstreams`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyUpstream {
    /// The name prefix it owns (`docker.io`), also matched by containerd's `?ns=`.
    pub name: String,
    pub remoteurl: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// How long a tag is trusted before one HEAD asks upstream again (default 24h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// How long cached content is kept, as `proxy.ttl` for distribution's form (default:
    /// `proxy.ttl`, else 168h; 0 or negative: for good).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cachettl: Option<String>,
    /// Remote repositories that may be pulled (`library/*`); absent: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Remote repositories that may not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
    /// Also answers names without the prefix (a Docker daemon's `registry-mirrors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// Docker Hub's rule that `alpine` means `library/alpine` (default: on for docker.io).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<bool>,
    /// distribution 3's `proxy.exec` for this upstream: a credential helper instead of
    /// `username`/`password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ProxyExec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Notifications {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Events>,
    /// Berth's own: the durable event queue shared by the replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<NotificationQueue>,
}

/// `notifications.queue` (Berth's own).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NotificationQueue {
    /// A replica whose heartbeat has not changed for this long is gone: the others deliver
    /// the events it had queued (default 60s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphanafter: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignoredmediatypes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore: Option<Value>,
    /// Berth's own: events queued for this endpoint at most; beyond, the oldest are dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxpending: Option<u64>,
    /// Berth's own: queued events older than this are dropped (`0`: no age bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxage: Option<String>,
    /// Berth's own: `/debug/health` lists the endpoint once it has failed for this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthyafter: Option<String>,
    /// Berth's own: events per POST at most when several are queued (default 1, as
    /// distribution sends them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxbatch: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Events {
    pub includereferences: bool,
}

/// `health`: distribution's periodic checks. While a storage, file, HTTP or TCP check fails,
/// every API request answers 503 (as distribution), `/readyz` fails, and `/debug/health`
/// shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storagedriver: Option<StorageDriverCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<Vec<FileCheck>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpCheck>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Vec<TcpCheck>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageDriverCheck {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
}

/// Down while the file exists (an operator's maintenance switch).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileCheck {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpCheck {
    pub uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statuscode: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpCheck {
    pub addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
}

/// Berth's `telemetry`: trace export, off unless `traces.enabled`. The `OTEL_*` variables
/// refine an enabled exporter (endpoint, headers, timeout) but never enable one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Telemetry {
    pub traces: Traces,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Traces {
    pub enabled: bool,
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); `/v1/traces` is added
    /// unless the URL already has a path. Default: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, then `http://localhost:4318`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Share of traces kept, 0.0 to 1.0 (default 1.0); a sampled parent is always followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samplingratio: Option<f64>,
    /// Extra request headers (an API key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// `service.name` of the spans (default `berth`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servicename: Option<String>,
    /// Export request timeout (default 10s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// `validation`: checks on pushed manifests (see `config::validation` for how they apply).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Validation {
    /// Turns the checks below off (foreign layer URLs are then any http(s) URL, and index
    /// children are not required).
    pub disabled: bool,
    /// The deprecated opposite of `disabled`; `true` wins over `disabled: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifests: Option<ManifestValidation>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ManifestValidation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub urls: Option<UrlRules>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indexes: Option<IndexValidation>,
}

/// Regular expressions (Go RE2 syntax, unanchored) for layer URLs. Neither set: no URL is
/// admitted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UrlRules {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
}

/// `validation.manifests.indexes` (distribution 3.x): which children of a pushed index must
/// already be in the repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IndexValidation {
    /// `all` (the default), `none` or `list`, in any case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platforms: Option<String>,
    /// With `list`: the platforms whose images must exist (an empty list means all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platformlist: Option<Vec<PlatformEntry>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PlatformEntry {
    pub architecture: String,
    pub os: String,
}

/// `catalog`: the largest page of `/v2/_catalog`; `0` or less means distribution's default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Catalog {
    pub maxentries: i64,
}

/// distribution's default for `catalog.maxentries` and `tags.maxtags`.
pub const DEFAULT_PAGE_LIMIT: usize = 1000;

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            maxentries: DEFAULT_PAGE_LIMIT as i64,
        }
    }
}

impl Catalog {
    /// The limit in force (distribution replaces `0` or less by its default).
    pub fn max_entries(&self) -> usize {
        page_limit(self.maxentries)
    }
}

/// `tags` (distribution 3.1): a larger `n` on `/v2/<name>/tags/list` is clamped to
/// `maxtags`; `0` means the default, a negative value is refused (as distribution does).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Tags {
    pub maxtags: i64,
}

impl Default for Tags {
    fn default() -> Self {
        Tags {
            maxtags: DEFAULT_PAGE_LIMIT as i64,
        }
    }
}

impl Tags {
    /// The limit in force.
    pub fn max_tags(&self) -> usize {
        page_limit(self.maxtags)
    }
}

/// A configured page limit, with distribution's default in place of `0` or less.
fn page_limit(configured: i64) -> usize {
    usize::try_from(configured)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_PAGE_LIMIT)
}
