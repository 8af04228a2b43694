//! LDAP accounts at Berth's token issuer (issue 14, part 2), through a real `berth serve` and a
//! real OpenLDAP `slapd` started by the test ([`berth_testkit::slapd`]): direct and search
//! binds, groups from `memberOf` and from a group search mapped to ACL rules, StartTLS and
//! LDAPS with a private CA (and a wrong CA refused), the empty-password hole closed, the bind
//! cache, a hung directory answered 503 while other accounts keep working, and skopeo pushing
//! with directory credentials.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/clients.rs"]
mod clients_support;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use berth_conformance::client::{Body, Client, Resp};
use berth_testkit::slapd::{self, Slapd};
use clients_support::{Lab, Layout};
use support::{get_token, Berth, Ca, SERVICE};

/// The issuer's rules: LDAP admins everything, each account its namespace, each LDAP group
/// `teams/<group>/*`.
const ACL: &str = r#"    acl:
      - { groups: [admins], name: "*", actions: ["*"] }
      - { account: "*", name: "${account}/*", actions: ["*"] }
      - { source: ldap, name: "teams/${groups}/*", actions: ["*"] }
"#;

/// Berth with its issuer: the local account `ops` (and a local `carol`, who is also in the
/// directory), and LDAP with the settings `ldap` (YAML lines under `ldap:`, indented 6).
fn berth(dir: &Path, ldap: &str) -> Berth {
    Berth::start_on(&dir.join("data"), &config(dir, ldap))
}

fn config(dir: &Path, ldap: &str) -> String {
    format!(
        "auth:\n  token:\n    service: {SERVICE}\n    issuer: berth\n  issuer:\n    keydir: {keys}\n    users:\n      ops: \"{ops}\"\n      carol: \"{carol}\"\n{ACL}    ldap:\n{ldap}",
        keys = dir.join("keys").display(),
        ops = bcrypt::hash("ops-pw", 4).unwrap(),
        carol = bcrypt::hash("carol-local-pw", 4).unwrap(),
    )
}

/// Direct bind with `memberOf`, short timeouts.
fn direct(s: &Slapd, extra: &str) -> String {
    format!(
        "      url: {url}\n      userdn: \"uid=${{username}},ou=people,{base}\"\n      memberofattribute: memberOf\n      dialtimeout: 1s\n      timeout: 1s\n{extra}",
        url = s.url(),
        base = slapd::SUFFIX
    )
}

/// What a token response granted (its `scope`), or its status when it is not 200.
fn granted(r: &Resp) -> Result<Vec<String>, u16> {
    if r.status != 200 {
        return Err(r.status);
    }
    let v = r.json().unwrap();
    Ok(v["scope"]
        .as_str()
        .unwrap()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The token's `sub`.
fn subject(r: &Resp) -> String {
    let token = r.json().unwrap()["token"].as_str().unwrap().to_owned();
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

/// The OAuth2 password grant, as `docker login` sends it.
fn password_grant(url: &str, user: &str, pw: &str, scope: &str) -> Resp {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let form = format!(
        "grant_type=password&username={}&password={}&service={SERVICE}&client_id=docker&access_type=offline&scope={}",
        enc(user),
        enc(pw),
        enc(scope)
    );
    Client::new(url, None)
        .send(
            "POST",
            "/auth/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Body::Bytes(form.as_bytes()),
        )
        .unwrap()
}

fn pp(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

#[test]
fn direct_bind_with_groups_from_member_of() {
    let s = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let b = berth(dir.path(), &direct(&s, ""));
    let url = &b.url;

    // alice is in admins: everything.
    let r = get_token(url, Some(("alice", "alice-pw")), &[&pp("anything/x")]);
    assert_eq!(granted(&r), Ok(vec![pp("anything/x")]), "{}", r.describe());
    // bob: his namespace and his team's, not another team's.
    let r = get_token(
        url,
        Some(("bob", "bob-pw")),
        &[
            &pp("bob/app"),
            &pp("teams/team-b/app"),
            &pp("teams/team-a/app"),
        ],
    );
    assert_eq!(
        granted(&r),
        Ok(vec![pp("bob/app"), pp("teams/team-b/app")]),
        "{}",
        r.describe()
    );
    // The password grant (docker login): a token, but no refresh token (the directory must
    // be asked again, so that a locked or removed person loses access).
    let r = password_grant(url, "bob", "bob-pw", &pp("teams/team-b/app"));
    assert_eq!(
        granted(&r),
        Ok(vec![pp("teams/team-b/app")]),
        "{}",
        r.describe()
    );
    assert!(r.json().unwrap().get("refresh_token").is_none());
    let r = password_grant(url, "bob", "wrong", &pp("teams/team-b/app"));
    assert_eq!(r.status, 401, "{}", r.describe());

    // Wrong password, unknown person, and names that try to change the DN: 401.
    for (user, pw) in [
        ("alice", "bob-pw"),
        ("dave", "dave-pw"),
        ("*", "alice-pw"),
        ("alice,ou=people", "alice-pw"),
    ] {
        let r = get_token(url, Some((user, pw)), &[&pp("anything/x")]);
        assert_eq!(r.status, 401, "{user}: {}", r.describe());
    }
    // An empty password is an unauthenticated bind, which this slapd (like many directories)
    // answers with success: Berth refuses it before the directory is asked.
    let alice_dn = format!("uid=alice,ou=people,{}", slapd::SUFFIX);
    assert!(
        s.bind_ok(&alice_dn, ""),
        "slapd should accept unauthenticated binds"
    );
    assert!(!s.bind_ok(&alice_dn, "wrong"));
    let r = get_token(url, Some(("alice", "")), &[&pp("anything/x")]);
    assert_eq!(r.status, 401, "{}", r.describe());
    let r = password_grant(url, "alice", "", &pp("anything/x"));
    assert_eq!(r.status, 401, "{}", r.describe());
    b.wait_log("the empty password's refusal", |l| {
        l.contains("token request refused: empty password")
    });

    // carol is a local account: the issuer's own password decides, not the directory's.
    assert_eq!(
        get_token(url, Some(("carol", "carol-pw")), &[&pp("carol/x")]).status,
        401
    );
    let r = get_token(url, Some(("carol", "carol-local-pw")), &[&pp("carol/x")]);
    assert_eq!(granted(&r), Ok(vec![pp("carol/x")]));

    let log = b.log();
    let issued: Vec<&str> = log.lines().filter(|l| l.contains("token issued")).collect();
    assert!(
        issued
            .iter()
            .any(|l| l.contains("alice") && l.contains("ldap")),
        "{log}"
    );
    assert!(
        issued
            .iter()
            .any(|l| l.contains("carol") && l.contains("password")),
        "{log}"
    );
    for pw in ["alice-pw", "bob-pw", "carol-pw", "dave-pw"] {
        assert!(!log.contains(pw), "a password reached the log: {pw}");
    }
}

/// A slapd with LDAPS and StartTLS, its CA, and a CA file for Berth.
fn tls_slapd(dir: &Path) -> (Slapd, std::path::PathBuf) {
    let ca = Ca::new("ldap test CA");
    let (cert, key, _) = ca.leaf("slapd", false);
    let s = Slapd::start_with_tls(Some((&cert, &key)));
    let ca_file = dir.join("ldap-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    (s, ca_file)
}

/// A search bind as a service account with a posixGroup search, over StartTLS and LDAPS.
fn search(url: &str, tls: &str, ca_file: &Path) -> String {
    format!(
        "      url: {url}\n{tls}      cafile: {ca}\n      binddn: \"{svc}\"\n      bindpassword: {pw}\n      userbase: \"ou=people,{base}\"\n      userfilter: \"(&(objectClass=inetOrgPerson)(uid=${{username}}))\"\n      accountattribute: uid\n      groupbase: \"ou=posix,{base}\"\n      groupfilter: \"(memberUid=${{username}})\"\n      dialtimeout: 2s\n      timeout: 2s\n",
        ca = ca_file.display(),
        svc = slapd::SERVICE_DN,
        pw = slapd::SERVICE_PASSWORD,
        base = slapd::SUFFIX,
    )
}

#[test]
fn search_bind_with_group_search_over_starttls_and_ldaps() {
    let dir = tempfile::tempdir().unwrap();
    let (s, ca_file) = tls_slapd(dir.path());
    for (name, ldap) in [
        (
            "starttls",
            search(&s.url(), "      starttls: true\n", &ca_file),
        ),
        ("ldaps", search(&s.tls_url(), "", &ca_file)),
    ] {
        let d = dir.path().join(name);
        let b = berth(&d, &ldap);
        let url = &b.url;
        let r = get_token(url, Some(("alice", "alice-pw")), &[&pp("anything/x")]);
        assert_eq!(
            granted(&r),
            Ok(vec![pp("anything/x")]),
            "{name}: {}",
            r.describe()
        );
        // The account name is the directory's (uid), whatever case was typed.
        let r = get_token(
            url,
            Some(("BOB", "bob-pw")),
            &[&pp("bob/app"), &pp("teams/team-b/x")],
        );
        assert_eq!(
            granted(&r),
            Ok(vec![pp("bob/app"), pp("teams/team-b/x")]),
            "{name}: {}",
            r.describe()
        );
        assert_eq!(subject(&r), "bob");
        // Filter injection: `*` is escaped and matches no one (unescaped it would match all).
        for (user, pw) in [
            ("bob", "nope"),
            ("*", "bob-pw"),
            ("b*", "bob-pw"),
            ("nobody", "x"),
        ] {
            let r = get_token(url, Some((user, pw)), &[&pp("bob/app")]);
            assert_eq!(r.status, 401, "{name} {user}: {}", r.describe());
        }
    }

    // No verification at all works, and says so at start.
    let insecure = search(&s.tls_url(), "", &ca_file).replace(
        &format!("cafile: {}", ca_file.display()),
        "insecureskipverify: true",
    );
    let b = berth(&dir.path().join("insecure"), &insecure);
    b.wait_log("the WARN about insecureskipverify", |l| {
        l.contains("WARN") && l.contains("insecureskipverify")
    });
    let r = get_token(&b.url, Some(("alice", "alice-pw")), &[&pp("anything/x")]);
    assert_eq!(granted(&r), Ok(vec![pp("anything/x")]), "{}", r.describe());
    drop(b);

    // The wrong CA: the directory cannot be trusted, so logins are 503 with a WARN.
    let other = Ca::new("another CA");
    let wrong = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, other.pem()).unwrap();
    for (name, ldap) in [
        (
            "wrong-starttls",
            search(&s.url(), "      starttls: true\n", &wrong),
        ),
        ("wrong-ldaps", search(&s.tls_url(), "", &wrong)),
    ] {
        let d = dir.path().join(name);
        let b = berth(&d, &ldap);
        let r = get_token(&b.url, Some(("alice", "alice-pw")), &[&pp("anything/x")]);
        assert_eq!(r.status, 503, "{name}: {}", r.describe());
        assert_eq!(r.json().unwrap()["error"], "temporarily_unavailable");
        let log = b.wait_log("the untrusted directory's WARN", |l| {
            l.contains("WARN") && l.contains("LDAP directory did not answer")
        });
        assert!(log.contains("UnknownIssuer"), "{name}: {log}");
        // The local account is not affected.
        assert_eq!(
            get_token(&b.url, Some(("ops", "ops-pw")), &[&pp("ops/x")]).status,
            200
        );
    }
}

#[test]
fn a_hung_directory_is_503_while_cached_and_local_logins_work() {
    let mut s = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let b = berth(dir.path(), &direct(&s, "      cachettl: 60s\n"));
    let url = &b.url;
    let scope = pp("anything/x");
    assert_eq!(
        granted(&get_token(url, Some(("alice", "alice-pw")), &[&scope])),
        Ok(vec![scope.clone()])
    );

    // The directory hangs: it accepts connections and never answers.
    s.signal("STOP");
    // alice's login is cached: no directory needed.
    let r = get_token(url, Some(("alice", "alice-pw")), &[&scope]);
    assert_eq!(granted(&r), Ok(vec![scope.clone()]), "{}", r.describe());
    // A different password is not the cached login: the directory is asked, and it hangs.
    let started = Instant::now();
    let r = get_token(url, Some(("alice", "other-pw")), &[&scope]);
    assert_eq!(r.status, 503, "{}", r.describe());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // bob is not cached: 503, again and again, never 429 (a down directory is not a failed
    // login; the throttle locks an account out after five).
    for _ in 0..7 {
        let r = get_token(url, Some(("bob", "bob-pw")), &[&pp("bob/x")]);
        assert_eq!(r.status, 503, "{}", r.describe());
        assert_eq!(r.json().unwrap()["error"], "temporarily_unavailable");
    }
    let log = b.wait_log("the WARN for the hung directory", |l| {
        l.contains("WARN") && l.contains("bob") && l.contains("LDAP directory did not answer")
    });
    assert!(!log.contains("locked out"), "{log}");
    // The issuer's own accounts and anonymous tokens keep working.
    let r = get_token(url, Some(("ops", "ops-pw")), &[&pp("ops/x")]);
    assert_eq!(granted(&r), Ok(vec![pp("ops/x")]), "{}", r.describe());

    // The directory is back: bob logs in.
    s.signal("CONT");
    let r = get_token(url, Some(("bob", "bob-pw")), &[&pp("bob/x")]);
    assert_eq!(granted(&r), Ok(vec![pp("bob/x")]), "{}", r.describe());

    // The directory is gone (connection refused): 503 at once; the cache still answers.
    s.stop();
    let started = Instant::now();
    assert_eq!(
        get_token(url, Some(("carol", "carol-pw")), &[]).status,
        401,
        "carol is local"
    );
    assert_eq!(get_token(url, Some(("dave", "dave-pw")), &[]).status, 503);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        get_token(url, Some(("bob", "bob-pw")), &[&pp("bob/x")]).status,
        200
    );
    let log = b.log();
    assert!(!log.contains("bob-pw") && !log.contains("alice-pw"));
}

#[test]
fn without_the_cache_each_login_asks_the_directory() {
    let s = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let b = berth(dir.path(), &direct(&s, "      cachettl: 0s\n"));
    assert_eq!(
        get_token(&b.url, Some(("alice", "alice-pw")), &[]).status,
        200
    );
    s.signal("STOP");
    assert_eq!(
        get_token(&b.url, Some(("alice", "alice-pw")), &[]).status,
        503
    );
    s.signal("CONT");
}

/// A TCP forwarder to `to` on a port of its own that counts the connections made through it.
fn counting_forwarder(to: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            counted.fetch_add(1, Ordering::SeqCst);
            let Ok(server) = std::net::TcpStream::connect(&to) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (port, count)
}

/// Logins with one name and password that arrive together ask the directory once: the first
/// asks, the others wait for its answer. Refusals are not remembered: each asks in turn.
#[test]
fn simultaneous_logins_ask_the_directory_once() {
    use std::sync::atomic::Ordering;
    let s = Slapd::start();
    let slapd_at = s.url().trim_start_matches("ldap://").to_owned();
    let (port, connections) = counting_forwarder(slapd_at);
    let dir = tempfile::tempdir().unwrap();
    let settings =
        direct(&s, "      cachettl: 60s\n").replace(&s.url(), &format!("ldap://127.0.0.1:{port}"));
    let b = berth(dir.path(), &settings);
    let logins = |pw: &'static str, n: usize| -> Vec<u16> {
        let url = b.url.clone();
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || get_token(&url, Some(("alice", pw)), &[]).status)
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    assert_eq!(logins("alice-pw", 16), vec![200; 16]);
    assert_eq!(connections.load(Ordering::SeqCst), 1, "{}", b.log());
    assert_eq!(logins("wrong", 3), vec![401; 3]);
    assert_eq!(connections.load(Ordering::SeqCst), 4, "{}", b.log());
}

#[test]
fn config_check_refuses_broken_ldap_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    // `berth config check` of a configuration with these `ldap:` settings: (passed, output).
    let check = |ldap: &str| {
        std::fs::write(
            &path,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n{}",
                dir.path().join("data").display(),
                config(dir.path(), ldap)
            ),
        )
        .unwrap();
        let out = Command::new(support::bin())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let bad = "      url: ldap.example.org\n      userdn: \"uid=bob,ou=people\"\n      binddn: cn=svc\n      groupbase: ou=groups\n      timeout: soon\n";
    let (passed, text) = check(bad);
    assert!(!passed, "{text}");
    for what in [
        "auth.issuer.ldap.url",
        "auth.issuer.ldap.userdn",
        "auth.issuer.ldap.groupfilter",
        "auth.issuer.ldap.timeout",
    ] {
        assert!(text.contains(what), "{what} missing in:\n{text}");
    }
    // A search bind's password is hidden in the effective configuration.
    let ok = "      url: ldaps://ldap.example.org\n      binddn: cn=svc\n      bindpassword: Sv9-secret\n      userbase: ou=people\n      userfilter: \"(uid=${username})\"\n";
    let (passed, text) = check(ok);
    assert!(passed, "{text}");
    assert!(text.contains("bindpassword: <redacted>"), "{text}");
    assert!(!text.contains("Sv9-secret"));
}

#[test]
fn skopeo_pushes_with_directory_credentials() {
    let s = Slapd::start();
    let lab = Lab::start_with(|d| berth(d, &direct(&s, "")));
    let layout = Layout::init(&lab, &lab.path("in"));
    let img = layout.add_image(&lab, "v1", "amd64", &[("/hello", "team b\n")]);
    // bob pushes into his team's namespace with his directory password.
    lab.run(&mut lab.skopeo_push(
        "bob:bob-pw",
        &layout.reference("v1"),
        &lab.docker_ref("teams/team-b/app", "v1"),
    ));
    let served = lab.run(
        lab.skopeo_inspect("bob:bob-pw", &lab.docker_ref("teams/team-b/app", "v1"))
            .args(["--format", "{{.Digest}}"]),
    );
    lab.check_eq(served.trim(), img.manifest.as_str(), "teams/team-b/app:v1");
    // Not into team-a's, and not with a wrong password.
    let out = lab.run_failing(&mut lab.skopeo_push(
        "bob:bob-pw",
        &layout.reference("v1"),
        &lab.docker_ref("teams/team-a/app", "v1"),
    ));
    lab.check(
        out.stderr.contains("denied") || out.stderr.contains("unauthorized"),
        &format!("push into teams/team-a: {}", out.stderr),
    );
    let out = lab.run_failing(
        &mut lab.skopeo_inspect("bob:wrong", &lab.docker_ref("teams/team-b/app", "v1")),
    );
    lab.check(
        out.stderr.contains("unauthorized") || out.stderr.contains("401"),
        &format!("wrong password: {}", out.stderr),
    );
    // alice (admins) reads it too.
    lab.run(&mut lab.skopeo_inspect("alice:alice-pw", &lab.docker_ref("teams/team-b/app", "v1")));
}
