//! distribution 3's `proxy.exec`: upstream credentials from a Docker credential helper.
//!
//! The helper is run as Docker's credential helpers are (the protocol of
//! `docker-credential-helpers`): the program itself, no shell, with the single argument `get`,
//! the host (`host[:port]`) the credentials are for on stdin, and
//! `{"ServerURL":…,"Username":…,"Secret":…}` on stdout; its stderr is the registry's.
//! As in distribution, one set of credentials is kept: without `lifetime` the helper runs once
//! (until it succeeds), with `lifetime: 0` for every use, otherwise again when `lifetime` has
//! passed. A helper that fails is logged and the upstream is asked anonymously.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `proxy.exec` as configured.
#[derive(Debug, Clone)]
pub struct ExecHelper {
    /// The program (a path, or a name looked up in `PATH`).
    pub command: String,
    /// `None`: run once; zero: every time; otherwise how long an answer is reused.
    pub lifetime: Option<Duration>,
}

/// A helper that hangs must not hold pulls for ever.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Enough for any credentials; more is not read.
const MAX_OUTPUT: u64 = 1 << 20;

/// Username and secret.
pub type Credentials = (String, String);

/// The helper with the credentials it last gave.
pub struct ExecCredentials {
    helper: ExecHelper,
    /// The last answer and until when it may be reused (`None`: for good, or, with a zero
    /// lifetime, not at all). An async mutex: one helper run at a time, as in distribution.
    last: tokio::sync::Mutex<Option<(Credentials, Option<Instant>)>>,
}

impl ExecCredentials {
    pub fn new(helper: ExecHelper) -> ExecCredentials {
        ExecCredentials {
            helper,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The credentials for `host`: the kept ones while they are valid, else the helper's
    /// answer; `None` when the helper fails (logged).
    pub async fn get(&self, host: &str) -> Option<Credentials> {
        let mut last = self.last.lock().await;
        let now = Instant::now();
        if let Some((creds, until)) = &*last {
            let fresh = match self.helper.lifetime {
                None => true,
                Some(_) => until.is_some_and(|u| now < u),
            };
            if fresh {
                return Some(creds.clone());
            }
        }
        let command = self.helper.command.clone();
        let h = host.to_owned();
        let answer = tokio::task::spawn_blocking(move || run(&command, &h))
            .await
            .unwrap_or_else(|e| Err(format!("the helper's thread failed: {e}")));
        match answer {
            Ok(creds) => {
                let until = self
                    .helper
                    .lifetime
                    .filter(|l| !l.is_zero())
                    .map(|l| now + l);
                *last = Some((creds.clone(), until));
                Some(creds)
            }
            Err(e) => {
                tracing::error!(
                    command = %self.helper.command,
                    host,
                    "proxy.exec: the credential helper gave no credentials, asking upstream anonymously: {e}"
                );
                None
            }
        }
    }
}

/// Runs `command get` with `host` on stdin and reads its answer.
fn run(command: &str, host: &str) -> Result<Credentials, String> {
    let mut child = Command::new(command)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that does not read its input may have exited already: not an error here.
        let _ = stdin.write_all(host.as_bytes());
    }
    let Some(stdout) = child.stdout.take() else {
        return Err("no standard output".to_owned());
    };
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.take(MAX_OUTPUT).read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "it did not finish within {}s and was killed",
                    HELPER_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        // The helpers' protocol puts the error message on stdout.
        let text = String::from_utf8_lossy(&out);
        let text: String = text.trim().chars().take(200).collect();
        return Err(format!("it exited with {status}: {text}"));
    }
    parse(&out)
}

/// The helper's JSON answer. Field names are matched without regard to case, as Go's
/// `encoding/json` (which the helpers' client uses) does.
fn parse(out: &[u8]) -> Result<Credentials, String> {
    let v: serde_json::Value =
        serde_json::from_slice(out).map_err(|e| format!("its answer is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("its answer is not a JSON object")?;
    let field = |name: &str| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    Ok((field("Username"), field("Secret")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_go_reads_them() {
        assert_eq!(
            parse(br#"{"ServerURL":"h","Username":"u","Secret":"s"}"#),
            Ok(("u".to_owned(), "s".to_owned()))
        );
        assert_eq!(
            parse(br#"{"username":"u","secret":"s"}"#),
            Ok(("u".to_owned(), "s".to_owned()))
        );
        assert!(parse(b"credentials not found in native keychain").is_err());
    }
}
