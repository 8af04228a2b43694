//! A SHA-256 whose state can be saved and restored, so a chunked upload resumes (after a
//! restart, or on another replica) without re-reading the bytes it already received.
//!
//! The saved form is byte-for-byte the one Go's `crypto/sha256` produces with
//! `MarshalBinary` (`"sha\x03"`, eight big-endian state words, the 64-byte block buffer, the
//! big-endian length), which is what distribution writes to
//! `_uploads/<id>/hashstates/sha256/<offset>`: an upload begun on distribution can be finished
//! by Berth and the other way round. Compression uses `sha2::compress256` (SHA-NI when the CPU
//! has it).

use sha2::digest::generic_array::GenericArray;

use crate::digest::Digest;

const MAGIC: &[u8; 4] = b"sha\x03";
const MARSHALED_LEN: usize = 4 + 32 + 64 + 8;
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Incremental SHA-256 with a Go-compatible serializable state.
#[derive(Clone)]
pub struct ResumableSha256 {
    h: [u32; 8],
    buf: [u8; 64],
    nbuf: usize,
    len: u64,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        ResumableSha256 {
            h: IV,
            buf: [0; 64],
            nbuf: 0,
            len: 0,
        }
    }
}

/// The saved state could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid saved sha256 state")]
pub struct InvalidState;

impl ResumableSha256 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.nbuf > 0 {
            let take = (64 - self.nbuf).min(data.len());
            self.buf[self.nbuf..self.nbuf + take].copy_from_slice(&data[..take]);
            self.nbuf += take;
            data = &data[take..];
            if self.nbuf < 64 {
                return;
            }
            let block = *GenericArray::from_slice(&self.buf);
            sha2::compress256(&mut self.h, std::slice::from_ref(&block));
            self.nbuf = 0;
        }
        let mut blocks = data.chunks_exact(64);
        for chunk in &mut blocks {
            sha2::compress256(
                &mut self.h,
                std::slice::from_ref(GenericArray::from_slice(chunk)),
            );
        }
        let rest = blocks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.nbuf = rest.len();
    }

    /// The digest of everything hashed so far (the state itself is not consumed).
    pub fn digest(&self) -> Digest {
        let mut h = self.h;
        let bitlen = self.len.wrapping_mul(8);
        let mut tail = [0u8; 128];
        tail[..self.nbuf].copy_from_slice(&self.buf[..self.nbuf]);
        tail[self.nbuf] = 0x80;
        let total = if self.nbuf < 56 { 64 } else { 128 };
        tail[total - 8..total].copy_from_slice(&bitlen.to_be_bytes());
        for chunk in tail[..total].chunks_exact(64) {
            sha2::compress256(
                &mut h,
                std::slice::from_ref(GenericArray::from_slice(chunk)),
            );
        }
        let mut out = [0u8; 32];
        for (i, w) in h.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        Digest::from_sha256_bytes(&out)
    }

    /// The state in Go's `MarshalBinary` form.
    pub fn save(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MARSHALED_LEN);
        out.extend_from_slice(MAGIC);
        for w in self.h {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&self.buf[..self.nbuf]);
        out.resize(4 + 32 + 64, 0);
        out.extend_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Restores a state saved by [`save`](Self::save) or by Go.
    pub fn restore(saved: &[u8]) -> Result<Self, InvalidState> {
        if saved.len() != MARSHALED_LEN || &saved[..4] != MAGIC {
            return Err(InvalidState);
        }
        let mut h = [0u32; 8];
        for (i, w) in h.iter_mut().enumerate() {
            let o = 4 + i * 4;
            *w = u32::from_be_bytes([saved[o], saved[o + 1], saved[o + 2], saved[o + 3]]);
        }
        let mut buf = [0u8; 64];
        buf.copy_from_slice(&saved[36..100]);
        let mut lenb = [0u8; 8];
        lenb.copy_from_slice(&saved[100..108]);
        let len = u64::from_be_bytes(lenb);
        // SHA-256 hashes at most 2^64 - 1 bits. A longer length cannot come from a real
        // upload, and hashing on from it overflowed (found by fuzzing).
        if len >= 1 << 61 {
            return Err(InvalidState);
        }
        Ok(ResumableSha256 {
            h,
            buf,
            nbuf: (len % 64) as usize,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            ResumableSha256::new().digest().to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = ResumableSha256::new();
        h.update(b"abc");
        assert_eq!(
            h.digest().to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Go: `h := sha256.New(); h.Write([]byte("abc")); b, _ := h.(encoding.BinaryMarshaler).MarshalBinary()`.
    #[test]
    fn go_marshal_format() {
        let mut h = ResumableSha256::new();
        h.update(b"abc");
        let s = h.save();
        assert_eq!(s.len(), 108);
        assert_eq!(&s[..4], b"sha\x03");
        assert_eq!(&s[4..8], &0x6a09e667u32.to_be_bytes()); // no block compressed yet
        assert_eq!(&s[36..39], b"abc");
        assert!(s[39..100].iter().all(|&b| b == 0));
        assert_eq!(&s[100..], &3u64.to_be_bytes());
        assert!(ResumableSha256::restore(&s[..107]).is_err());
        // Found by fuzzing: a length no message can have overflowed on the next update.
        let mut huge = s.clone();
        huge[100..].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(ResumableSha256::restore(&huge).is_err());
    }

    proptest! {
        #[test]
        fn matches_sha2_across_splits_and_restores(
            data in proptest::collection::vec(any::<u8>(), 0..700),
            cuts in proptest::collection::vec(0usize..700, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut h = ResumableSha256::new();
            let mut prev = 0;
            for c in cuts {
                h.update(&data[prev..c]);
                h = ResumableSha256::restore(&h.save()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prev = c;
            }
            h.update(&data[prev..]);
            prop_assert_eq!(h.len(), data.len() as u64);
            prop_assert_eq!(h.digest(), Digest::sha256_of(&data));
        }
    }
}
