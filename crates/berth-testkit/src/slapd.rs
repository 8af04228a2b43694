//! A real OpenLDAP `slapd` (Debian's `slapd` and `ldap-utils`) on ephemeral loopback ports with a
//! temporary `slapd.conf` and database, loaded with a small directory of people and groups:
//!
//! - `dc=example,dc=org`, admin `cn=admin,dc=example,dc=org` / [`ADMIN_PASSWORD`];
//! - people under `ou=people` (`uid=NAME`, password `NAME-pw`), [`PEOPLE`];
//! - `groupOfNames` groups under `ou=groups` with `member` DNs, so the `memberof` overlay fills
//!   each person's `memberOf`, and `posixGroup`s with `memberUid` under `ou=posix`;
//! - a service account `cn=berth,ou=services,dc=example,dc=org` / [`SERVICE_PASSWORD`];
//! - unauthenticated binds allowed (`allow bind_anon_dn`), so a client that sends a DN with an
//!   empty password is "bound" (RFC 4513 5.1.2), as many directories allow.
//!
//! With a certificate and key it also listens on `ldaps://` and offers StartTLS. Ready when
//! `ldapadd` has loaded the directory; stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub const SUFFIX: &str = "dc=example,dc=org";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
pub const ADMIN_PASSWORD: &str = "admin-secret";
pub const SERVICE_DN: &str = "cn=berth,ou=services,dc=example,dc=org";
pub const SERVICE_PASSWORD: &str = "berth-service-pw";
/// People and their `groupOfNames` groups (also `posixGroup`s of the same names).
pub const PEOPLE: &[(&str, &[&str])] = &[
    ("alice", &["admins", "team-a"]),
    ("bob", &["team-b"]),
    ("carol", &[]),
];

/// A running `slapd`.
pub struct Slapd {
    child: Option<Child>,
    pub port: u16,
    /// The `ldaps://` port, with TLS.
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
}

fn slapd_bin() -> PathBuf {
    ["/usr/sbin/slapd", "/usr/local/libexec/slapd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "slapd".into())
}

fn ldif() -> String {
    let mut l = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"
    );
    for ou in ["people", "groups", "posix", "services"] {
        l += &format!("dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n\n");
    }
    l += &format!(
        "dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: berth\nuserPassword: {SERVICE_PASSWORD}\n\n"
    );
    for (i, (name, _)) in PEOPLE.iter().enumerate() {
        l += &format!(
            "dn: uid={name},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: {name}\ncn: {name}\nsn: {name}\nuidNumber: {n}\ngidNumber: {n}\nhomeDirectory: /home/{name}\nuserPassword: {name}-pw\n\n",
            n = 1000 + i
        );
    }
    let mut groups: Vec<&str> = PEOPLE.iter().flat_map(|(_, g)| g.iter().copied()).collect();
    groups.sort();
    groups.dedup();
    for (i, g) in groups.iter().enumerate() {
        let members: Vec<&str> = PEOPLE
            .iter()
            .filter(|(_, gs)| gs.contains(g))
            .map(|(n, _)| *n)
            .collect();
        l += &format!("dn: cn={g},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {g}\n");
        for m in &members {
            l += &format!("member: uid={m},ou=people,{SUFFIX}\n");
        }
        l += &format!(
            "\ndn: cn={g},ou=posix,{SUFFIX}\nobjectClass: posixGroup\ncn: {g}\ngidNumber: {}\n",
            2000 + i
        );
        for m in &members {
            l += &format!("memberUid: {m}\n");
        }
        l += "\n";
    }
    l
}

impl Slapd {
    /// On plain `ldap://` only.
    pub fn start() -> Slapd {
        Slapd::start_with_tls(None)
    }

    /// With `Some((certificate PEM, key PEM))`, also `ldaps://` on [`Slapd::tls_port`] and
    /// StartTLS on the plain port.
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("db")).unwrap();
        let mut conf = String::new();
        for s in ["core", "cosine", "inetorgperson", "nis"] {
            conf += &format!("include /etc/ldap/schema/{s}.schema\n");
        }
        conf += &format!(
            "# Unauthenticated binds (a DN, no password) succeed, as on many directories: the\n# hole Berth must close itself.\nallow bind_anon_dn\npidfile {pid}\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\nmoduleload memberof\n",
            pid = d.join("slapd.pid").display()
        );
        if let Some((cert, key)) = tls {
            std::fs::write(d.join("cert.pem"), cert).unwrap();
            std::fs::write(d.join("key.pem"), key).unwrap();
            conf += &format!(
                "TLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
                d.join("cert.pem").display(),
                d.join("key.pem").display()
            );
        }
        conf += &format!(
            "database mdb\nmaxsize 16777216\nsuffix \"{SUFFIX}\"\nrootdn \"{ADMIN_DN}\"\nrootpw {ADMIN_PASSWORD}\ndirectory {db}\n\
             overlay memberof\nmemberof-group-oc groupOfNames\nmemberof-member-ad member\nmemberof-memberof-ad memberOf\n\
             access to attrs=userPassword by anonymous auth by self write by * none\naccess to * by users read by * none\n",
            db = d.join("db").display()
        );
        std::fs::write(d.join("slapd.conf"), conf).unwrap();
        let mut s = Slapd {
            child: None,
            port: 0,
            tls_port: None,
            dir,
        };
        for _ in 0..3 {
            s.port = free_port();
            s.tls_port = tls.map(|_| free_port());
            if s.spawn() {
                s.load();
                return s;
            }
        }
        panic!("slapd did not start; see {}", s.dir.path().display());
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT` (with TLS only).
    pub fn tls_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port.unwrap())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) -> bool {
        let mut urls = self.url();
        if let Some(p) = self.tls_port {
            urls += &format!(" ldaps://127.0.0.1:{p}");
        }
        let log = std::fs::File::create(self.dir.path().join("slapd.log")).unwrap();
        // `-d 0`: stay in the foreground (the harness owns the process), log nothing.
        let child = Command::new(slapd_bin())
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .args(["-h", &urls, "-d", "0"])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("slapd (scripts/install-test-deps.sh installs Debian's slapd)");
        self.child = Some(child);
        let port = self.port;
        let up = crate::wait_until_up(&mut self.child, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            self.stop();
        }
        up
    }

    /// Loads [`PEOPLE`] and their groups with `ldapadd` (online, so the `memberof` overlay
    /// sees the groups).
    fn load(&self) {
        let path = self.dir.path().join("people.ldif");
        std::fs::write(&path, ldif()).unwrap();
        let out = Command::new("ldapadd")
            .args([
                "-x",
                "-H",
                &self.url(),
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PASSWORD,
                "-f",
            ])
            .arg(&path)
            .env_clear()
            .output()
            .expect("ldapadd (ldap-utils)");
        assert!(
            out.status.success(),
            "ldapadd: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `ldapwhoami` bound as `dn` with `password` (simple bind): whether it succeeded.
    pub fn bind_ok(&self, dn: &str, password: &str) -> bool {
        Command::new("ldapwhoami")
            .args(["-x", "-H", &self.url(), "-D", dn, "-w", password])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("ldapwhoami (ldap-utils)")
            .success()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the server: a stopped server accepts
    /// connections (the kernel does) but never answers, as a hung directory does.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
        // A signal is delivered asynchronously: wait until the process state says so.
        let want = if signal == "STOP" { Some('T') } else { None };
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(want) = want {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
            if state == Some(want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "slapd {pid} did not stop: {stat}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
