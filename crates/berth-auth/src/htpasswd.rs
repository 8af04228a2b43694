//! Users and passwords in Apache's htpasswd format with bcrypt hashes, as distribution's
//! `auth.htpasswd` (and Berth's issuer) read them. Only bcrypt is accepted: other hash
//! formats (MD5-crypt, SHA-1, plain text) are refused when the file is loaded.
//!
//! Timing does not tell whether a user exists: an unknown user is checked against a dummy hash
//! of the same cost. Password checks are cached for a few minutes by SHA-256 of the
//! credentials, so a client that sends Basic credentials with every request (Docker does, with
//! `auth.htpasswd`) does not pay a bcrypt round per request.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::Digest as _;

/// How long a verified password stays verified.
const CACHE_SECS: i64 = 300;
const CACHE_CAPACITY: usize = 10_000;

/// The users of one or more htpasswd files (or config entries).
#[derive(Debug, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// The cost of the users' hashes, for the dummy check of unknown users.
    dummy: String,
    verified: Mutex<HashMap<[u8; 32], i64>>,
}

impl Users {
    /// Parses htpasswd text (`user:$2y$...` lines; `#` comments and blank lines ignored).
    pub fn parse(text: &str, name: &str) -> Result<Users, String> {
        let mut users = Users::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("{name}:{}: expected user:hash", i + 1))?;
            users
                .add(user, hash)
                .map_err(|e| format!("{name}:{}: {e}", i + 1))?;
        }
        Ok(users)
    }

    /// Adds one user with a bcrypt hash.
    pub fn add(&mut self, user: &str, hash: &str) -> Result<(), String> {
        if user.is_empty() {
            return Err("empty user name".into());
        }
        if !(hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$")) {
            return Err(format!("user {user:?}: only bcrypt hashes ($2y$...) are supported; make one with `htpasswd -B`"));
        }
        if bcrypt::verify("", hash).is_err() {
            return Err(format!("user {user:?}: malformed bcrypt hash"));
        }
        if self.dummy.is_empty() {
            // Same cost as a real hash, so an unknown user takes as long as a wrong password.
            let cost = hash.get(4..6).and_then(|c| c.parse().ok()).unwrap_or(10);
            self.dummy = bcrypt::hash("berth-dummy", cost).map_err(|e| e.to_string())?;
        }
        self.hashes.insert(user.to_owned(), hash.to_owned());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.hashes.contains_key(user)
    }

    /// Whether `password` is `user`'s, at `now` (Unix seconds, for the cache).
    pub fn check(&self, user: &str, password: &str, now: i64) -> bool {
        let mut h = sha2::Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.get(&key).is_some_and(|&until| now < until) {
                return true;
            }
        }
        let ok = match self.hashes.get(user) {
            Some(hash) => bcrypt_matches(password, hash),
            None => {
                let _ = bcrypt_matches(password, &self.dummy);
                false
            }
        };
        if ok {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, until| now < *until);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(key, now + CACHE_SECS);
        }
        ok
    }
}

/// bcrypt (the crate compares the computed hash in constant time).
fn bcrypt_matches(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_users() {
        // Cost 4 keeps the test fast; `htpasswd -B -C 4` makes the same kind of line.
        let alice = bcrypt::hash("wonderland", 4).unwrap_or_default();
        let text = format!("# users\nalice:{alice}\n\n");
        let users = Users::parse(&text, "htpasswd").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(users.len(), 1);
        assert!(users.check("alice", "wonderland", 0));
        assert!(users.check("alice", "wonderland", 1)); // cached
        assert!(!users.check("alice", "Wonderland", 0));
        assert!(!users.check("bob", "wonderland", 0));
        // After the cached verdict expires the password is checked again, and still passes.
        assert!(users.check("alice", "wonderland", CACHE_SECS + 10));
        assert!(!users.check("alice", "", CACHE_SECS + 10));
        // Apache writes $2y$; $2a$ and $2b$ are the same hash.
        let b = alice.replacen("$2b$", "$2a$", 1);
        let users = Users::parse(&format!("alice:{b}"), "x").unwrap_or_else(|e| panic!("{e}"));
        assert!(users.check("alice", "wonderland", 0));
    }

    #[test]
    fn refuses_weak_or_broken_lines() {
        assert!(Users::parse("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "x").is_err());
        assert!(Users::parse("alice:$apr1$abc$def", "x").is_err());
        assert!(Users::parse("alice:plaintext", "x").is_err());
        assert!(Users::parse("no-colon-here", "x").is_err());
        assert!(Users::parse("alice:$2y$10$short", "x").is_err());
    }
}
