//! The cluster key: 32 random bytes that every node of one cluster holds,
//! and everything else derives from (as Serf's `-encrypt` key). Holding it
//! is membership.
//!
//! The file is the key in standard base64 on one line, the format of
//! `serf keygen` and `consul keygen`, so it can be pasted into a secret
//! store and back. Each use gets its own sub-key through HKDF-SHA256 with a
//! label of its own, so the advert MAC key and the CA key are unrelated
//! even though one secret makes both.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use ring::hkdf;
use zeroize::Zeroizing;

use crate::secret::{self, Secret, SecretFileError};

/// Bytes of key material: 256 bits, the size of the HMAC-SHA256 key and
/// the Ed25519 seed made from it.
pub const KEY_LEN: usize = 32;
/// HKDF salt: binds every derived key to this project and key version.
const SALT: &[u8] = b"mesh-amb cluster key v1";

/// What a sub-key is for; each gets independent bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// HMAC-SHA256 of advertisements.
    Advert,
    /// Ed25519 seed of the cluster CA.
    ClusterCa,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Advert => b"advert mac",
            Purpose::ClusterCa => b"cluster ca ed25519 seed",
        }
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error(
        "{path} does not hold a cluster key: expected {KEY_LEN} bytes in base64 \
         on one line (make one with 'mesh-amb keygen FILE')"
    )]
    Format { path: String },
}

/// The cluster key. `Debug` shows a fingerprint, never the key.
pub struct ClusterKey(Secret);

impl ClusterKey {
    /// A new random key, from the operating system's generator.
    pub fn generate() -> ClusterKey {
        let mut bytes = vec![0u8; KEY_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the operating system's random generator failed");
        ClusterKey(Secret::new(bytes))
    }

    /// A key from its bytes (tests, and callers that keep keys elsewhere).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ClusterKey {
        ClusterKey(Secret::new(bytes.to_vec()))
    }

    /// Reads a key file (refused when group or others can read it).
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let text = secret::read_secret_file(path)?;
        Self::parse(text.expose()).ok_or_else(|| KeyError::Format {
            path: path.display().to_string(),
        })
    }

    /// The key from the text of a key file; `None` when it is not one.
    pub fn parse(text: &[u8]) -> Option<ClusterKey> {
        let text = std::str::from_utf8(text).ok()?.trim();
        let mut bytes = Zeroizing::new(vec![0u8; KEY_LEN + 3]);
        let n = base64::engine::general_purpose::STANDARD
            .decode_slice(text, &mut bytes)
            .ok()?;
        (n == KEY_LEN).then(|| {
            bytes.truncate(KEY_LEN);
            ClusterKey(Secret::new(bytes.to_vec()))
        })
    }

    /// The text of a key file for this key, newline included.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let mut text =
            Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0.expose()));
        text.push('\n');
        text
    }

    /// The sub-key for `purpose`.
    pub fn derive(&self, purpose: Purpose) -> Zeroizing<[u8; KEY_LEN]> {
        struct Len;
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                KEY_LEN
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(self.0.expose());
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        prk.expand(&[purpose.label()], Len)
            .and_then(|okm| okm.fill(&mut out[..]))
            .expect("HKDF-SHA256 gives 32 bytes");
        out
    }

    /// A short public name of the key (the first bytes of a hash of it), for
    /// logs: two nodes with different fingerprints hold different keys.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.expose());
        digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(fingerprint {})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_round_trips_and_bad_ones_are_refused() {
        let key = ClusterKey::generate();
        let text = key.to_file_text();
        let back = ClusterKey::parse(text.as_bytes()).unwrap();
        assert_eq!(back.0.expose(), key.0.expose());
        assert_eq!(text.trim().len(), 44, "Serf's format: 32 bytes in base64");
        for bad in [&b""[..], b"not base64!", b"AAAA", &[0xff, 0xfe][..]] {
            assert!(ClusterKey::parse(bad).is_none(), "{bad:?}");
        }
        // 31 and 33 bytes are not keys either.
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
        let long = base64::engine::general_purpose::STANDARD.encode([1u8; 33]);
        assert!(ClusterKey::parse(short.as_bytes()).is_none());
        assert!(ClusterKey::parse(long.as_bytes()).is_none());
    }

    #[test]
    fn sub_keys_are_deterministic_and_independent() {
        let a = ClusterKey::from_bytes([7; KEY_LEN]);
        let b = ClusterKey::from_bytes([7; KEY_LEN]);
        let c = ClusterKey::from_bytes([8; KEY_LEN]);
        assert_eq!(*a.derive(Purpose::Advert), *b.derive(Purpose::Advert));
        assert_ne!(*a.derive(Purpose::Advert), *a.derive(Purpose::ClusterCa));
        assert_ne!(*a.derive(Purpose::Advert), *c.derive(Purpose::Advert));
        assert_ne!(&a.derive(Purpose::Advert)[..], &[7; KEY_LEN][..]);
    }

    #[test]
    fn debug_shows_a_fingerprint_not_the_key() {
        let key = ClusterKey::from_bytes([0x41; KEY_LEN]);
        let shown = format!("{key:?}");
        assert!(shown.starts_with("ClusterKey(fingerprint "), "{shown}");
        assert!(
            !shown.contains("QUFB") && !shown.contains("4141"),
            "{shown}"
        );
    }
}
