//! The SHA-256 digest of a blob together with its size, as in REAPI. Never a bare string.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hash: [u8; 32],
    size: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a digest (expected `sha256:<64 hex digits>/<size>`)")]
pub struct DigestParseError(pub String);

impl Digest {
    pub fn new(hash: [u8; 32], size: u64) -> Self {
        Self { hash, size }
    }

    pub fn from_hex(hex_str: &str, size: u64) -> Result<Self, DigestParseError> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut hash)
            .map_err(|_| DigestParseError(hex_str.to_string()))?;
        Ok(Self { hash, size })
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// A short form for people: the first 12 hex digits.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

/// `sha256:<hex>/<size>`: what lock files and messages show.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}/{}", self.hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}/{})", self.short(), self.size)
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DigestParseError(s.to_string());
        let rest = s.strip_prefix("sha256:").ok_or_else(bad)?;
        let (hex_part, size) = rest.split_once('/').ok_or_else(bad)?;
        let size = size.parse().map_err(|_| bad())?;
        Digest::from_hex(hex_part, size).map_err(|_| bad())
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

    #[test]
    fn display_parse_roundtrip() {
        let d = crate::hash_bytes(b"abc");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad/3"
        );
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert!("sha256:zz/1".parse::<Digest>().is_err());
        assert!("md5:abc/1".parse::<Digest>().is_err());
    }
}
