//! Repository names, tags and manifest references, per the distribution-spec grammar
//! (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pulling-manifests>):
//!
//! ```text
//! name      = component ( "/" component )*
//! component = [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag       = [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
//! ```
//!
//! Invariant: a `RepoName` never contains `..`, an empty component, a leading or trailing
//! slash, or any character outside the grammar, so it can be joined into a storage path.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// distribution's limit on the whole name (docker/reference `NameTotalLengthMax`).
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name such as `library/alpine`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name must not be empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("invalid repository name component {0:?}")]
    Component(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-"+, always followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        for c in s.split('/') {
            if !valid_component(c) {
                return Err(NameError::Component(c.chars().take(64).collect()));
            }
        }
        Ok(RepoName(s.to_owned()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Tag {
    /// Whether `s` matches the spec's tag grammar, `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    pub fn is_valid(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if Tag::is_valid(s) {
            Ok(Tag(s.to_owned()))
        } else {
            Err(NameError::Tag(s.chars().take(140).collect()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a manifest URL names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

/// Why a reference is invalid; the two cases map to different OCI error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
    #[error(transparent)]
    Tag(#[from] NameError),
}

impl FromStr for Reference {
    type Err = ReferenceError;

    /// A reference containing ':' is a digest (tags cannot contain it); anything else is a tag.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for good in [
            "a",
            "library/alpine",
            "a/b/c/d/e/f",
            "foo.bar",
            "foo__bar",
            "foo---bar",
            "a0/b-1.c_d",
        ] {
            assert!(good.parse::<RepoName>().is_ok(), "{good} rejected");
        }
        for bad in [
            "", "A", "Foo/bar", "a//b", "/a", "a/", "a/../b", "..", "a/.", "-a", "a-", "a___b",
            "a._b", "a/b%2fc", "a b", "a\\b", "ä",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad} accepted");
        }
        let long = vec!["abcdefghi"; 26].join("/");
        assert!(long.len() > MAX_NAME_LEN);
        assert_eq!(long.parse::<RepoName>(), Err(NameError::TooLong));
    }

    #[test]
    fn tags() {
        for good in ["latest", "v1.0.0", "_x", "A-b.C_d", &"a".repeat(128)] {
            assert!(good.parse::<Tag>().is_ok(), "{good} rejected");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129), "..", "a b"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn references() {
        assert!(matches!(
            "latest".parse::<Reference>(),
            Ok(Reference::Tag(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Reference>(),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            "bad/tag".parse::<Reference>(),
            Err(ReferenceError::Tag(_))
        ));
    }

    proptest! {
        #[test]
        fn valid_names_are_path_safe(s in "[a-z0-9._/-]{1,80}") {
            if let Ok(n) = s.parse::<RepoName>() {
                prop_assert!(!n.as_str().contains(".."));
                prop_assert!(!n.as_str().contains("//"));
                prop_assert!(!n.as_str().starts_with('/') && !n.as_str().ends_with('/'));
                prop_assert!(n.components().all(|c| c != "." && !c.is_empty()));
            }
        }

        #[test]
        fn parsers_never_panic(s in ".{0,300}") {
            let _ = s.parse::<RepoName>();
            let _ = s.parse::<Tag>();
            let _ = s.parse::<Reference>();
        }
    }
}
