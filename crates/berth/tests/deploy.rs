//! The deployment files (`Dockerfile`, `deploy/`) checked as far as this machine allows: every
//! YAML file parses; the Kubernetes overlays build with kustomize (when `kubectl` or
//! `kustomize` is installed) into manifests that keep their promises (non-root, read-only root,
//! probes on `/livez` and `/readyz`, no `enableServiceLinks: false`, every referenced ConfigMap,
//! volume and file present); every configuration shipped passes `berth config check` with
//! Kubernetes' service-link variables set; the real binary serves the Kubernetes
//! configurations with those variables (filesystem; S3 + Redis with the built-in issuer, two
//! replicas sharing tokens and uploads); the systemd unit passes `systemd-analyze verify`; the
//! Dockerfile builds with the same script and cargo invocation as documented, runs as a
//! non-root user and keeps its data and config where the manifests expect them.
//!
//! Not done here: building the image (no base images can be pulled on this machine) and
//! applying the manifests to a cluster (there is none).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use berth_conformance::client::{Body, Client};
use berth_conformance::fixtures::{digest, Image};
use serde::Deserialize as _;
use serde_yaml::Value;
use support::{debug_url, get, Garage, Redis};

/// What kubelet injects (docker-links style) into every pod of the namespace for the Services of
/// deploy/kubernetes: `registry` (port `http` 5000) and `registry-redis` (port `redis` 6379).
const SERVICE_LINKS: [(&str, &str); 16] = [
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

const OVERLAYS: [&str; 3] = ["filesystem", "s3-redis", "workload-identity"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every document of a YAML text (merge keys `<<` applied, empty documents dropped).
fn docs(text: &str, what: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let mut v = Value::deserialize(d).unwrap_or_else(|e| panic!("{what}: {e}"));
        v.apply_merge().unwrap_or_else(|e| panic!("{what}: {e}"));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

/// `berth config check FILE` with `env` added; (success, stdout, stderr).
fn config_check(path: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(support::bin());
    c.args(["config", "check"])
        .arg(path)
        .env_remove("BERTH_CONFIG")
        .env("BERTH_CONFIG_SEARCH_PATH", "/nonexistent/berth-test.yml");
    for (k, _) in std::env::vars() {
        if k.starts_with("REGISTRY_") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// YAML and kustomize

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut files = Vec::new();
    files_under(&repo().join("deploy"), &mut files);
    let yaml: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    assert!(yaml.len() >= 12, "{yaml:?}");
    for p in yaml {
        let text = std::fs::read_to_string(p).unwrap();
        let d = docs(&text, &p.display().to_string());
        assert!(!d.is_empty(), "{}: no document", p.display());
        for doc in &d {
            assert!(
                doc.is_mapping(),
                "{}: a document is not a mapping",
                p.display()
            );
        }
    }
}

/// Files a kustomization names exist (this holds without kustomize too).
#[test]
fn kustomizations_name_only_existing_files() {
    for dir in ["base", "overlays/filesystem", "overlays/s3-redis"] {
        let dir = repo().join("deploy/kubernetes").join(dir);
        let k = &docs(
            &std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap(),
            "kustomization",
        )[0];
        let mut named: Vec<String> = Vec::new();
        named.extend(
            seq(&k["resources"])
                .iter()
                .map(|r| str_of(r, "resource").to_owned()),
        );
        named.extend(
            seq(&k["patches"])
                .iter()
                .map(|p| str_of(&p["path"], "patch").to_owned()),
        );
        for g in seq(&k["configMapGenerator"]) {
            named.extend(
                seq(&g["files"])
                    .iter()
                    .map(|f| str_of(f, "file").to_owned()),
            );
        }
        assert!(!named.is_empty());
        for n in named {
            assert!(
                dir.join(&n).exists(),
                "{}: {n} does not exist",
                dir.display()
            );
        }
    }
}

/// `kubectl kustomize` (kustomize v4 or later) or `kustomize build`, if installed.
fn kustomize_build(dir: &Path) -> Option<String> {
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let mut cmd = match kubectl {
        Some(v) if v.contains("Kustomize Version: v4") || v.contains("Kustomize Version: v5") => {
            let mut c = Command::new("kubectl");
            c.arg("kustomize");
            c
        }
        _ if Command::new("kustomize").arg("version").output().is_ok() => {
            let mut c = Command::new("kustomize");
            c.arg("build");
            c
        }
        _ => {
            eprintln!(
                "SKIPPED (kustomize part only): neither kubectl with kustomize v4+ nor kustomize \
                 is installed; Debian 12 has only kubernetes-client 1.20, whose kustomize v2 \
                 predates these kustomizations"
            );
            return None;
        }
    };
    let out = support::run_ok(cmd.arg(dir));
    Some(String::from_utf8(out.stdout).unwrap())
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objs.iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_mapping().unwrap();
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Is `path` (a file the configuration names) inside one of the container's mounts?
fn mounted(container: &Value, path: &str) -> bool {
    seq(&container["volumeMounts"]).iter().any(|m| {
        let at = m["mountPath"].as_str().unwrap_or("");
        path == at || path.starts_with(&format!("{}/", at.trim_end_matches('/')))
    })
}

/// Absolute paths of files and directories the configuration reads or writes.
fn config_paths(config: &Value) -> Vec<String> {
    let mut out = vec![];
    if let Some(r) = config["storage"]["filesystem"]["rootdirectory"].as_str() {
        out.push(r.to_owned());
    }
    let issuer = &config["auth"]["issuer"];
    for k in seq(&issuer["keys"]) {
        out.push(str_of(&k["key"], "key").to_owned());
        if let Some(c) = k["certificate"].as_str() {
            out.push(c.to_owned());
        }
    }
    for key in ["htpasswd", "keydir"] {
        if let Some(p) = issuer[key].as_str() {
            out.push(p.to_owned());
        }
    }
    for f in seq(&issuer["federated"]) {
        for key in ["jwks", "cafile", "bearertokenfile"] {
            if let Some(p) = f[key].as_str() {
                out.push(p.to_owned());
            }
        }
    }
    out
}

#[test]
fn overlays_build_into_manifests_that_keep_their_promises() {
    let mut built = 0;
    for overlay in OVERLAYS {
        let dir = repo().join("deploy/kubernetes/overlays").join(overlay);
        let Some(text) = kustomize_build(&dir) else {
            return;
        };
        built += 1;
        assert!(
            !text.contains("enableServiceLinks"),
            "{overlay}: the manifests must work with service links on"
        );
        let objs = docs(&text, overlay);
        let svc = find(&objs, "Service", "registry").expect("Service registry");
        let dep = find(&objs, "Deployment", "registry").expect("Deployment registry");
        let pdb = find(&objs, "PodDisruptionBudget", "registry").expect("PDB");
        let pod = &dep["spec"]["template"];
        let labels = &pod["metadata"]["labels"];
        assert!(labels_match(
            &dep["spec"]["selector"]["matchLabels"],
            labels
        ));
        assert!(
            labels_match(&svc["spec"]["selector"], labels),
            "{overlay}: Service selects no pod"
        );
        assert!(labels_match(
            &pdb["spec"]["selector"]["matchLabels"],
            labels
        ));
        assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1));

        let spec = &pod["spec"];
        assert_eq!(spec["automountServiceAccountToken"].as_bool(), Some(false));
        assert!(
            spec["terminationGracePeriodSeconds"].as_i64().unwrap() >= 40,
            "http.draintimeout (30s) + margin"
        );
        let psc = &spec["securityContext"];
        assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true));
        assert_eq!(psc["runAsUser"].as_i64(), Some(65532));
        assert_eq!(psc["fsGroup"].as_i64(), Some(65532));
        let containers = seq(&spec["containers"]);
        let c = containers
            .iter()
            .find(|c| c["name"].as_str() == Some("registry"))
            .unwrap();
        let csc = &c["securityContext"];
        assert_eq!(csc["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(csc["allowPrivilegeEscalation"].as_bool(), Some(false));
        assert_eq!(seq(&csc["capabilities"]["drop"]), [Value::from("ALL")]);
        assert!(c["resources"]["requests"]["memory"].is_string());
        assert!(c["resources"]["limits"]["memory"].is_string());
        assert!(
            mounted(c, "/tmp/spool"),
            "the proxy spool needs a writable /tmp"
        );

        // Probes: the right paths, on ports the container has.
        let ports: BTreeSet<&str> = seq(&c["ports"])
            .iter()
            .map(|p| str_of(&p["name"], "port"))
            .collect();
        assert!(ports.contains("http"));
        for (probe, path) in [
            ("startupProbe", "/livez"),
            ("livenessProbe", "/livez"),
            ("readinessProbe", "/readyz"),
        ] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{overlay}: {probe}");
            assert!(
                ports.contains(str_of(&get["port"], probe)),
                "{overlay}: {probe} port"
            );
        }
        let svc_port = &seq(&svc["spec"]["ports"])[0];
        assert_eq!(svc_port["port"].as_i64(), Some(5000));
        assert!(ports.contains(str_of(&svc_port["targetPort"], "targetPort")));

        // Volumes: every ConfigMap and claim exists; Secrets are created by the operator, as
        // the overlay's kustomization.yaml says.
        let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
        let mut config_text = None;
        for v in seq(&spec["volumes"]) {
            if let Some(cm) = v["configMap"]["name"].as_str() {
                let cm = find(&objs, "ConfigMap", cm)
                    .unwrap_or_else(|| panic!("{overlay}: no ConfigMap {cm}"));
                config_text = Some(str_of(&cm["data"]["config.yml"], "config.yml").to_owned());
            }
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                assert!(
                    find(&objs, "PersistentVolumeClaim", claim).is_some(),
                    "{overlay}: no PVC {claim}"
                );
            }
            if let Some(secret) = v["secret"]["secretName"].as_str() {
                assert!(
                    kustomization.contains(&format!("kubectl create secret generic {secret}")),
                    "{overlay}: how to create Secret {secret} is not documented"
                );
            }
        }
        for e in seq(&c["env"]) {
            let name = str_of(&e["name"], "env");
            if let Some(secret) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                assert!(
                    kustomization.contains(&format!("kubectl create secret generic {secret}")),
                    "{secret}"
                );
            }
            assert!(name.starts_with("REGISTRY_"), "{name}");
        }

        // The configuration: the overlay's own file (or the base's), mounted where the image's
        // entrypoint reads it, and every file it names is on a volume.
        let config_text = config_text.expect("a ConfigMap volume");
        let source = if dir.join("config.yml").exists() {
            dir.join("config.yml")
        } else {
            repo().join("deploy/kubernetes/base/config.yml")
        };
        assert_eq!(config_text, std::fs::read_to_string(source).unwrap());
        assert_eq!(
            seq(&c["args"]),
            [Value::from("/etc/distribution/config.yml")]
        );
        assert!(mounted(c, "/etc/distribution/config.yml"));
        let config = &docs(&config_text, "config.yml")[0];
        for p in config_paths(config) {
            assert!(
                mounted(c, &p),
                "{overlay}: {p} (named by config.yml) is on no volume"
            );
        }
        // Files the configuration reads from a Secret are keys the documented command creates.
        for m in seq(&c["volumeMounts"]) {
            let vol = seq(&spec["volumes"])
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap();
            let (Some(secret), Some(at)) = (
                vol["secret"]["secretName"].as_str(),
                m["mountPath"].as_str(),
            ) else {
                continue;
            };
            let files: Vec<String> = config_paths(config)
                .into_iter()
                .filter_map(|p| p.strip_prefix(&format!("{at}/")).map(str::to_owned))
                .collect();
            assert!(
                !files.is_empty(),
                "{overlay}: Secret {secret} is mounted for nothing"
            );
            let command = kustomization
                .split(&format!("kubectl create secret generic {secret}"))
                .nth(1)
                .unwrap()
                .split("\n#   kubectl")
                .next()
                .unwrap()
                .to_owned();
            for f in files {
                let added = command.split_whitespace().any(|t| {
                    t.strip_prefix("--from-file=")
                        .is_some_and(|src| Path::new(src).file_name() == Some(f.as_ref()))
                });
                assert!(
                    added,
                    "{overlay}: the command creating {secret} does not add {f}: {command}"
                );
            }
        }
        for e in seq(&c["env"]) {
            let r = &e["valueFrom"]["secretKeyRef"];
            if let (Some(secret), Some(key)) = (r["name"].as_str(), r["key"].as_str()) {
                assert!(
                    kustomization.contains(&format!("kubectl create secret generic {secret}"))
                        && kustomization.contains(&format!("--from-literal={key}=")),
                    "{overlay}: {secret}/{key} is not documented"
                );
            }
        }

        match overlay {
            "filesystem" => {
                assert_eq!(dep["spec"]["replicas"].as_i64(), Some(1));
                assert_eq!(dep["spec"]["strategy"]["type"].as_str(), Some("Recreate"));
                let data = seq(&spec["volumes"])
                    .iter()
                    .find(|v| v["name"].as_str() == Some("data"))
                    .unwrap();
                assert!(
                    data["persistentVolumeClaim"].is_mapping() && data.get("emptyDir").is_none(),
                    "{data:?}"
                );
            }
            "s3-redis" => {
                assert_eq!(dep["spec"]["replicas"].as_i64(), Some(3));
                assert_eq!(
                    dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as_i64(),
                    Some(0)
                );
                assert_eq!(seq(&spec["topologySpreadConstraints"]).len(), 2);
                assert!(spec["affinity"]["podAntiAffinity"].is_mapping());
                assert!(
                    config["storage"]["s3"].is_mapping()
                        && config["auth"]["issuer"]["keys"].is_sequence()
                );
                assert!(
                    config["auth"]["issuer"]["keydir"].is_null(),
                    "keydir differs per replica"
                );
                let redis = config["redis"]["addr"].as_str().unwrap();
                let host = redis.split(':').next().unwrap();
                assert!(
                    find(&objs, "Service", host).is_some(),
                    "redis.addr {redis}: no such Service"
                );
            }
            "workload-identity" => {
                assert_eq!(dep["spec"]["replicas"].as_i64(), Some(3));
                // No passwords: no account file or list, and the only Secret holds the key.
                let issuer = &config["auth"]["issuer"];
                assert!(issuer["htpasswd"].is_null() && issuer["users"].is_null());
                assert!(!kustomization.contains("htpasswd"));
                let f = &seq(&issuer["federated"])[0];
                assert_eq!(f["kind"].as_str(), Some("kubernetes"));
                // The registry's own token for the API server is projected, not automounted.
                let cluster = seq(&spec["volumes"])
                    .iter()
                    .find(|v| v["name"].as_str() == Some("cluster"))
                    .unwrap();
                assert!(seq(&cluster["projected"]["sources"])
                    .iter()
                    .any(|s| s["serviceAccountToken"].is_mapping()));
            }
            _ => unreachable!(),
        }
    }
    assert!(built == 0 || built == OVERLAYS.len());
}

// ---------------------------------------------------------------------------------------------
// Configurations

/// Every configuration file shipped under deploy/, with the environment the deployment gives it.
fn shipped_configs() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        ("deploy/config.yml", vec![]),
        ("deploy/kubernetes/base/config.yml", vec![]),
        (
            "deploy/kubernetes/overlays/s3-redis/config.yml",
            vec![
                ("REGISTRY_STORAGE_S3_ACCESSKEY", "AKIATEST"),
                ("REGISTRY_STORAGE_S3_SECRETKEY", "not-a-real-secret"),
            ],
        ),
        (
            "deploy/kubernetes/overlays/workload-identity/config.yml",
            vec![
                ("REGISTRY_STORAGE_S3_ACCESSKEY", "AKIATEST"),
                ("REGISTRY_STORAGE_S3_SECRETKEY", "not-a-real-secret"),
            ],
        ),
        (
            "deploy/compose/config.s3.yml",
            vec![
                ("REGISTRY_STORAGE_S3_ACCESSKEY", "AKIACOMPOSETEST"),
                ("REGISTRY_STORAGE_S3_SECRETKEY", "compose-test-secret"),
            ],
        ),
    ]
}

#[test]
fn shipped_configs_pass_config_check_with_service_links_set() {
    for (file, env) in shipped_configs() {
        let path = repo().join(file);
        let (ok, bare, err) = config_check(&path, &env);
        assert!(ok, "{file}: {err}");
        assert!(
            !bare.contains("# not supported yet"),
            "{file} uses unsupported features:\n{bare}"
        );
        assert!(!bare.contains("# warning"), "{file}: {bare}");
        // The variables the deployment sets name real keys: they are applied (and redacted).
        for (k, v) in &env {
            assert!(!bare.contains(v), "{file}: {k}'s value echoed");
        }
        if !env.is_empty() {
            assert!(bare.contains("accesskey: <redacted>"), "{bare}");
        }

        let mut with_links = env.clone();
        with_links.extend(SERVICE_LINKS);
        let (ok, linked, err) = config_check(&path, &with_links);
        assert!(ok, "{file} with Kubernetes service links: {err}");
        for (k, _) in SERVICE_LINKS {
            assert!(
                linked.contains(&format!(
                    "# warning: environment variable {k} names no configuration key"
                )),
                "{file}: {k}:\n{linked}"
            );
        }
        assert!(
            !linked.contains("10.96.0."),
            "values of ignored variables are not echoed"
        );
        let effective = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            effective(&linked),
            effective(&bare),
            "{file}: service links changed the configuration"
        );
    }
}

/// Starts `berth serve` with a shipped configuration text and the environment a deployment
/// gives it, plus Kubernetes' service links; addresses are moved to loopback by variables, as
/// an operator would.
/// What the overlays' Deployments set from their Secret and ConfigMap, pointed at the test's
/// Garage and Redis.
fn s3_redis_env(garage: &Garage, redis: &Redis) -> [(&'static str, String); 6] {
    [
        ("REGISTRY_STORAGE_S3_REGIONENDPOINT", garage.url.clone()),
        ("REGISTRY_STORAGE_S3_REGION", "garage".into()),
        ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "true".into()),
        ("REGISTRY_STORAGE_S3_ACCESSKEY", garage.key_id.clone()),
        ("REGISTRY_STORAGE_S3_SECRETKEY", garage.secret.clone()),
        ("REGISTRY_REDIS_ADDR", format!("127.0.0.1:{}", redis.port)),
    ]
}

fn serve(config: &str, dir: &Path, env: &[(&str, &str)]) -> support::Berth {
    let mut all: Vec<(&str, &str)> = vec![
        ("REGISTRY_HTTP_ADDR", "127.0.0.1:0"),
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
    ];
    all.extend_from_slice(env);
    all.extend(SERVICE_LINKS);
    support::Berth(berth_testkit::Berth::start_with_env(
        support::bin(),
        config,
        dir,
        &all,
    ))
}

#[test]
fn filesystem_configs_serve_with_kubernetes_service_links() {
    for file in ["deploy/kubernetes/base/config.yml", "deploy/config.yml"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("registry");
        // The one substitution: the data directory (/var/lib/registry in the pod).
        let text = read(file).replace("/var/lib/registry", &data.display().to_string());
        assert_ne!(text, read(file));
        let b = serve(&text, &data, &[]);
        let debug = debug_url(&b);
        for url in [&b.url, &debug] {
            assert_eq!(get(&format!("{url}/livez")).0, 200, "{file}");
            assert_eq!(get(&format!("{url}/readyz")).0, 200, "{file}");
        }
        let (status, metrics) = get(&format!("{debug}/metrics"));
        assert_eq!(status, 200, "{file}");
        assert!(metrics.contains("# TYPE"), "{metrics}");
        // It stores where the config says.
        let c = Client::new(&b.url, None);
        let blob = b"deploy test layer";
        c.push_blob("deploy/test", blob).unwrap();
        assert!(data
            .join("docker/registry/v2/blobs/sha256")
            .join(&digest(blob)[7..9])
            .exists());
        let log = b.log();
        for (k, v) in SERVICE_LINKS {
            assert!(
                log.contains(&format!(
                    "environment variable {k} names no configuration key"
                )),
                "{file}: {k}\n{log}"
            );
            assert!(
                !v.contains("10.96.") || !log.contains(v),
                "{file}: {k}'s value logged"
            );
        }
    }
}

/// The S3 + Redis overlay's configuration, verbatim but for the paths of the issuer's files,
/// as two replicas on one bucket (Garage) and one Redis: a token issued by one replica is valid on
/// the other, and an upload started on one is finished on the other.
#[test]
fn s3_redis_config_runs_replicas_that_share_tokens_and_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("issuer");
    // The documented way to make the signing key (kustomization.yaml).
    support::run_ok(
        Command::new(support::bin())
            .args(["keys", "generate", "--out"])
            .arg(&secrets),
    );
    std::fs::write(
        secrets.join("htpasswd"),
        format!("alice:{}\n", bcrypt::hash("alice-pw", 4).unwrap()),
    )
    .unwrap();
    let text = read("deploy/kubernetes/overlays/s3-redis/config.yml")
        .replace("/etc/berth/issuer", &secrets.display().to_string());

    let garage = Garage::start();
    let bucket = "registry";
    assert!(text.contains(&format!("bucket: {bucket}")));
    garage.create_bucket(bucket);
    let redis = Redis::start();
    let env = s3_redis_env(&garage, &redis);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = serve(&text, dir.path(), &env);
    let b = serve(&text, dir.path(), &env);
    for r in [&a, &b] {
        assert_eq!(get(&format!("{}/readyz", r.url)).0, 200, "{}", r.log());
        assert_eq!(get(&format!("{}/readyz", debug_url(r))).0, 200);
    }

    // Anonymous: a challenge to the registry's own token endpoint.
    let r = Client::new(&a.url, None).get("/v2/", &[]).unwrap();
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("service=\"registry.example.com\""));

    // alice's token from replica a ...
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:alice-pw")
    );
    let r = Client::new(&a.url, Some(basic))
        .get(
            "/auth/token?service=registry.example.com&scope=repository:alice/app:pull,push",
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    let token = r.json().unwrap()["token"].as_str().unwrap().to_owned();
    let on_a = Client::new(&a.url, Some(format!("Bearer {token}")));
    let on_b = Client::new(&b.url, Some(format!("Bearer {token}")));
    // ... starts an upload on a and finishes it on b; the image is pushed through b.
    let blob = b"one layer, two replicas".to_vec();
    let loc = on_a.start_upload("alice/app").unwrap();
    let loc = on_a.url(&loc).replace(&a.url, &b.url);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = on_b
        .send(
            "PUT",
            &format!("{loc}{sep}digest={}", digest(&blob)),
            &[("Content-Type", "application/octet-stream")],
            Body::Bytes(&blob),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.describe());
    let img = Image::oci("deploy", 1, "");
    on_b.push_image("alice/app", "v1", &img).unwrap();
    // Pulled through a.
    let r = on_a
        .get("/v2/alice/app/manifests/v1", &[("Accept", img.media_type)])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    // Not alice's namespace: refused on both.
    for c in [&on_a, &on_b] {
        assert_eq!(c.get("/v2/bob/app/tags/list", &[]).unwrap().status, 401);
    }
    for (k, _) in SERVICE_LINKS {
        assert!(
            a.log().contains(&format!(
                "environment variable {k} names no configuration key"
            )),
            "{k}"
        );
    }
    assert!(!a.log().contains("not supported yet"), "{}", a.log());
    // Each replica uses the one Redis (its address moved by REGISTRY_REDIS_ADDR, past the
    // REGISTRY_REDIS_* service links).
    for r in [&a, &b] {
        let log = r.log();
        assert!(
            log.contains("blob-descriptor cache in redis")
                && log.contains(&format!("127.0.0.1:{}", redis.port)),
            "{log}"
        );
    }
}

/// The workload-identity overlay's configuration, verbatim but for the paths of its files and
/// the cluster's key URL: the example build pod's projected token (its namespace, service
/// account and audience as build-pod.yaml says) pushes to its namespace and nowhere else; the
/// registry reads the cluster's keys with its own token and the cluster's CA.
#[test]
fn workload_identity_overlay_admits_the_example_build_pod() {
    let dir = tempfile::tempdir().unwrap();
    let base = "deploy/kubernetes/overlays/workload-identity";
    // The example pod: namespace, service account, and the audience of its projected token.
    let objs = docs(&read(&format!("{base}/build-pod.yaml")), "build-pod.yaml");
    let pod = find(&objs, "Pod", "build-app").unwrap();
    let namespace = str_of(&pod["metadata"]["namespace"], "namespace").to_owned();
    let sa = str_of(&pod["spec"]["serviceAccountName"], "serviceAccountName").to_owned();
    assert!(find(&objs, "ServiceAccount", &sa).is_some());
    let projected = seq(&pod["spec"]["volumes"])
        .iter()
        .flat_map(|v| seq(&v["projected"]["sources"]))
        .find(|s| s["serviceAccountToken"].is_mapping())
        .expect("a projected service-account token")["serviceAccountToken"]
        .clone();
    let audience = str_of(&projected["audience"], "audience").to_owned();
    assert!(projected["expirationSeconds"].as_i64().unwrap() >= 600);
    let text = read(&format!("{base}/config.yml"));
    let config = &docs(&text, "config.yml")[0];
    assert_eq!(
        config["auth"]["token"]["service"].as_str(),
        Some(audience.as_str())
    );
    let fed = &seq(&config["auth"]["issuer"]["federated"])[0];
    assert_eq!(fed["audience"].as_str(), Some(audience.as_str()));
    let issuer = str_of(&fed["issuer"], "issuer").to_owned();
    let image = format!("{audience}/{namespace}/app:latest");
    assert!(
        seq(&pod["spec"]["containers"])
            .iter()
            .any(|c| format!("{:?}", c["args"]).contains(&image)),
        "the pod pushes {image}"
    );

    // The cluster: a signing key, its JWKS behind a bearer token, the CA file.
    let cluster_key = berth_auth::signer::Signer::from_pem(
        &berth_auth::signer::generate(berth_auth::keys::Alg::RS256, "sa-signer", 30)
            .unwrap()
            .key_pem,
        None,
    )
    .unwrap();
    let kid = "cluster-key-1";
    let jwks = serde_json::json!({"keys": [cluster_key.public.to_jwk(kid, &[])]}).to_string();
    let (jwks_url, seen) = bearer_jwks_server(jwks);
    let secrets = dir.path().join("issuer");
    support::run_ok(
        Command::new(support::bin())
            .args(["keys", "generate", "--out"])
            .arg(&secrets),
    );
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir).unwrap();
    std::fs::write(cluster_dir.join("token"), "registry-pod-token\n").unwrap();
    std::fs::write(
        cluster_dir.join("ca.crt"),
        berth_auth::signer::generate(berth_auth::keys::Alg::ES256, "cluster-ca", 30)
            .unwrap()
            .cert_pem,
    )
    .unwrap();
    let text = text
        .replace("/etc/berth/issuer", &secrets.display().to_string())
        .replace(
            "/var/run/secrets/registry-cluster",
            &cluster_dir.display().to_string(),
        )
        .replace("https://kubernetes.default.svc/openid/v1/jwks", &jwks_url);

    let garage = Garage::start();
    garage.create_bucket("registry");
    let redis = Redis::start();
    let env = s3_redis_env(&garage, &redis);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let b = serve(&text, dir.path(), &env);
    assert_eq!(get(&format!("{}/readyz", b.url)).0, 200, "{}", b.log());
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["Bearer registry-pod-token"],
        "the registry reads the cluster's keys once, with its own token"
    );

    // The pod's token, as the kubelet projects it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = cluster_key
        .sign_with_header(
            &serde_json::json!({"alg": "RS256", "kid": kid}),
            &serde_json::json!({
                "aud": [audience], "iss": issuer, "sub": format!("system:serviceaccount:{namespace}:{sa}"),
                "iat": now, "nbf": now, "exp": now + 600,
                "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa, "uid": "1"},
                    "pod": {"name": "build-app", "uid": "2"}}
            }),
        )
        .unwrap();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{sa}:{token}"))
    );
    let r = Client::new(&b.url, Some(basic))
        .get(
            &format!("/auth/token?service={audience}&scope=repository:{namespace}/app:pull,push&scope=repository:prod/app:push"),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json().unwrap();
    assert_eq!(
        v["scope"].as_str(),
        Some(format!("repository:{namespace}/app:pull,push").as_str())
    );
    let registry_token = v["token"].as_str().unwrap();
    let c = Client::new(&b.url, Some(format!("Bearer {registry_token}")));
    let img = Image::oci("built-in-a-pod", 1, "");
    c.push_image(&format!("{namespace}/app"), "latest", &img)
        .unwrap();
    let r = c
        .get(
            &format!("/v2/{namespace}/app/manifests/latest"),
            &[("Accept", img.media_type)],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        c.get("/v2/prod/app/tags/list", &[]).unwrap().status,
        401,
        "not the pod's namespace"
    );
}

/// A JWKS endpoint that, like the API server's, answers only with a bearer token; returns its
/// URL and the Authorization headers it saw.
fn bearer_jwks_server(body: String) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/openid/v1/jwks", l.local_addr().unwrap());
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let mut auth = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if let Some(v) = line
                    .strip_prefix("authorization: ")
                    .or_else(|| line.strip_prefix("Authorization: "))
                {
                    auth = v.trim().to_owned();
                }
                line.clear();
            }
            s2.lock().unwrap().push(auth.clone());
            let (status, body) = if auth.is_empty() {
                ("401 Unauthorized", String::new())
            } else {
                ("200 OK", body.clone())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

// ---------------------------------------------------------------------------------------------
// Compose and systemd

#[test]
fn compose_file_is_consistent() {
    let compose = &docs(&read("deploy/compose.yml"), "compose.yml")[0];
    let services = compose["services"].as_mapping().unwrap();
    let registry = &compose["services"]["registry"];
    assert_eq!(registry["build"]["context"].as_str(), Some(".."));
    assert!(repo()
        .join(str_of(&registry["build"]["dockerfile"], "dockerfile"))
        .is_file());
    for (name, s) in services {
        let name = name.as_str().unwrap();
        if s["image"].as_str() == Some("berth:local") {
            assert_eq!(s["read_only"].as_bool(), Some(true), "{name}");
            assert_eq!(seq(&s["cap_drop"]), [Value::from("ALL")], "{name}");
            assert!(seq(&s["tmpfs"]).contains(&Value::from("/tmp")), "{name}");
            assert!(s["stop_grace_period"].as_str().is_some(), "{name}");
            assert!(
                s.get("healthcheck").is_none(),
                "{name}: the image has no shell to run a healthcheck"
            );
        }
        for v in seq(&s["volumes"]) {
            let v = str_of(v, "volume");
            let src = v.split(':').next().unwrap();
            if src.starts_with('.') {
                assert!(repo().join("deploy").join(src).exists(), "{name}: {src}");
            } else {
                assert!(
                    compose["volumes"].get(src).is_some(),
                    "{name}: volume {src} not declared"
                );
            }
        }
    }
    // The filesystem service keeps the image's default configuration and data directory.
    assert!(seq(&registry["volumes"]).contains(&Value::from("registry-data:/var/lib/registry")));
    // Everything but the filesystem registry is behind the s3 profile.
    for (name, s) in services {
        if name.as_str() != Some("registry") {
            assert_eq!(seq(&s["profiles"]), [Value::from("s3")], "{name:?}");
        }
    }
}

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit = read("deploy/systemd/berth.service");
    for directive in [
        "ExecStart=/usr/local/bin/berth serve /etc/distribution/config.yml",
        "DynamicUser=yes",
        "StateDirectory=registry",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "PrivateTmp=yes",
        "SystemCallFilter=@system-service",
        "TimeoutStopSec=45s",
    ] {
        assert!(unit.contains(directive), "missing {directive:?}");
    }
    // StateDirectory=registry is /var/lib/registry, where deploy/config.yml keeps the data.
    assert!(read("deploy/config.yml").contains("rootdirectory: /var/lib/registry"));

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED (systemd-analyze part only): systemd-analyze is not installed");
        return;
    }
    // `verify` wants the executable to exist: the binary under test stands in for it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/berth", support::bin().to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .split("Overall exposure level for berth.service: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        level <= 2.0,
        "exposure {level} (a network service can reach about 1.2)"
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// The Dockerfile's instructions: (stage index, INSTRUCTION, arguments), continuation lines
/// joined, comments dropped.
fn dockerfile() -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let mut stage = 0usize;
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        pending.push_str(t.trim_end_matches('\\'));
        pending.push(' ');
        if t.ends_with('\\') {
            continue;
        }
        let full = std::mem::take(&mut pending);
        let (ins, args) = full.trim().split_once(' ').unwrap_or((full.trim(), ""));
        let ins = ins.to_ascii_uppercase();
        if ins == "FROM" {
            stage += 1;
        }
        out.push((
            stage,
            ins,
            args.split_whitespace().collect::<Vec<_>>().join(" "),
        ));
    }
    out
}

#[test]
fn dockerfile_builds_with_the_release_script_and_runs_unprivileged() {
    let ins = dockerfile();
    let stages = ins.iter().filter(|(_, i, _)| i == "FROM").count();
    assert_eq!(stages, 2, "builder and runtime");
    let of = |stage: usize, name: &str| -> Vec<String> {
        ins.iter()
            .filter(|(s, i, _)| *s == stage && i == name)
            .map(|(_, _, a)| a.clone())
            .collect()
    };
    // Builder: the release script, nothing else builds.
    let runs = of(1, "RUN").join(" ; ");
    assert!(runs.contains("scripts/build-release.sh /out/bin"), "{runs}");
    assert!(
        !runs.contains("cargo "),
        "the builder must build only through the script: {runs}"
    );
    // Runtime: the script's output, the default config, a data directory owned by the user.
    let copies = of(2, "COPY");
    // The script's whole output directory (berth and the `registry` symlink) onto PATH.
    assert!(
        copies.contains(&"--from=build /out/bin/ /usr/local/bin/".to_owned()),
        "{copies:?}"
    );
    assert!(
        copies.contains(&"deploy/config.yml /etc/distribution/config.yml".to_owned()),
        "{copies:?}"
    );
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("--from=build --chown=65532:65532")
                && c.ends_with(" /var/lib/registry")),
        "{copies:?}"
    );
    assert_eq!(of(2, "USER"), ["65532:65532"], "numeric and not root");
    assert!(of(2, "EXPOSE").join(" ").split(' ').any(|p| p == "5000"));
    assert_eq!(of(2, "VOLUME"), ["[\"/var/lib/registry\"]"]);
    // distribution's: `registry` with the config path as the command serves it.
    assert_eq!(of(2, "ENTRYPOINT"), ["[\"/usr/local/bin/registry\"]"]);
    assert_eq!(of(2, "CMD"), ["[\"/etc/distribution/config.yml\"]"]);
    assert!(
        of(2, "RUN").is_empty(),
        "a distroless runtime stage has no shell to RUN with"
    );
    // The image's config keeps data in the volume and listens where EXPOSE says.
    let config = read("deploy/config.yml");
    assert!(config.contains("rootdirectory: /var/lib/registry") && config.contains("addr: :5000"));

    // The script: one cargo invocation, the one CI tests, in the release profile.
    let script = read("scripts/build-release.sh");
    let cargo: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cargo "))
        .collect();
    assert_eq!(
        cargo,
        ["cargo build --release --locked -p berth --bin berth"]
    );
    for forbidden in [
        "--target",
        "--features",
        "RUSTFLAGS",
        "--no-default-features",
    ] {
        assert!(
            !script
                .lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains(forbidden)),
            "{forbidden}"
        );
    }
    assert!(script.contains("install -m 0755 \"$target_dir/release/berth\" \"$out/berth\""));
    // `registry` beside it: distribution's command name, for `docker exec ... registry
    // garbage-collect` and cron jobs (crates/berth/tests/registry_cmd.rs runs it that way).
    assert!(
        script.contains("ln -sfn berth \"$out/registry\""),
        "{script}"
    );
    assert!(script.contains("\"$out/registry\" --version"), "{script}");
    assert!(
        read("scripts/test.sh").contains("--workspace --locked"),
        "CI tests the same Cargo.lock"
    );
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(repo().join("scripts/build-release.sh"))
        .status()
        .unwrap();
    assert!(syntax.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(repo().join("scripts/build-release.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "the Dockerfile runs the script directly");
    }

    // The build context keeps what the build needs.
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(ignored.contains(&"target") && ignored.contains(&".git"));
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "crates",
        "conformance",
        "bench",
        "scripts",
        "deploy",
        "deploy/config.yml",
    ] {
        assert!(
            !ignored.contains(&needed),
            "{needed} is needed by the build"
        );
        assert!(repo().join(needed).exists(), "{needed}");
    }
}

/// The release script's output, as the image and the archive ship it: run with a stand-in
/// `cargo` (the real build is the one CI tests; this binary is that build in the dev profile),
/// the output directory holds `berth` and `registry`, a symlink to it that answers with
/// distribution's command line.
#[test]
fn release_output_provides_the_registry_command() {
    let tmp = tempfile::tempdir().unwrap();
    let (bin, target, out) = (
        tmp.path().join("bin"),
        tmp.path().join("target"),
        tmp.path().join("out"),
    );
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_berth"), target.join("release/berth")).unwrap();
    let fake_cargo = bin.join("cargo");
    std::fs::write(&fake_cargo, "#!/bin/sh\nexit 0\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&fake_cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new(repo().join("scripts/build-release.sh"))
        .arg(&out)
        .env("PATH", &path)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("registry berth v"), "{stdout}");
    let link = std::fs::read_link(out.join("registry")).unwrap();
    assert_eq!(
        link,
        Path::new("berth"),
        "a relative symlink, valid once copied"
    );
    // On PATH, as in the image (`docker exec <c> registry garbage-collect ...`).
    let path = format!(
        "{}:{}",
        out.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let help = Command::new("registry")
        .args(["garbage-collect", "--help"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--dry-run",
        "--delete-untagged",
        "--quiet",
        "-d",
        "-m",
        "-q",
    ] {
        assert!(help.contains(flag), "{flag} in\n{help}");
    }
}
