//! Content digests (`algorithm:encoded`), per the OCI image-spec descriptor grammar:
//! <https://github.com/opencontainers/image-spec/blob/main/descriptor.md#digests>.
//!
//! Invariant: a `Digest` value is always of a supported algorithm with a well-formed,
//! lower-case hex encoding of the right length, so it is safe to build storage paths from it.

use std::fmt;
use std::str::FromStr;

/// Hash algorithms Berth can address content by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Why a string is not a digest Berth accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest has no algorithm separator ':'")]
    Format,
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("digest encoding is not {expected} lower-case hex characters")]
    Encoding { expected: usize },
}

/// A validated content digest such as `sha256:e3b0…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// The digest of `data` with SHA-256.
    pub fn sha256_of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        let out = sha2::Sha256::digest(data);
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex(&out),
        }
    }

    /// The digest of `data` with `algorithm`.
    pub fn compute(algorithm: Algorithm, data: &[u8]) -> Digest {
        use sha2::Digest as _;
        match algorithm {
            Algorithm::Sha256 => Digest::sha256_of(data),
            Algorithm::Sha512 => Digest {
                algorithm,
                hex: hex(&sha2::Sha512::digest(data)),
            },
        }
    }

    /// Builds a SHA-256 digest from a raw 32-byte hash.
    pub fn from_sha256_bytes(bytes: &[u8; 32]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex(bytes),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded part (lower-case hex).
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

/// Lower-case hex encoding.
pub fn hex(bytes: &[u8]) -> String {
    const CHARS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(CHARS[(b >> 4) as usize] as char);
        s.push(CHARS[(b & 15) as usize] as char);
    }
    s
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, enc) = s.split_once(':').ok_or(DigestError::Format)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(DigestError::UnsupportedAlgorithm(
                    other.chars().take(32).collect(),
                ))
            }
        };
        let expected = algorithm.hex_len();
        if enc.len() != expected
            || !enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::Encoding { expected });
        }
        Ok(Digest {
            algorithm,
            hex: enc.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_sha256() {
        let d = Digest::sha256_of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../../../etc/passwd000000000000000000000000000000000000000000",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_roundtrips(s in ".{0,140}") {
            if let Ok(d) = s.parse::<Digest>() {
                prop_assert_eq!(d.to_string(), s);
            }
        }

        #[test]
        fn any_hash_roundtrips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let d = Digest::sha256_of(&bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d));
        }
    }
}
