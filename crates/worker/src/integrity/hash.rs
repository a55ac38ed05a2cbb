//! Digests of an image file computed while its bytes pass through, and the
//! comparison with the hash fields of its JSON.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use md5::Md5;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use sha2::{Digest, Sha256, Sha512};

/// A digest algorithm of a JSON hash field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgo {
    Md5,
    Sha256,
    Sha512,
}

impl HashAlgo {
    /// Lower-case name (`md5`, `sha256`, `sha512`).
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }
    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }
}

impl FromStr for HashAlgo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "md5" => Ok(HashAlgo::Md5),
            "sha256" => Ok(HashAlgo::Sha256),
            "sha512" => Ok(HashAlgo::Sha512),
            other => Err(format!(
                "unknown hash algorithm {other:?}: use md5, sha256 or sha512"
            )),
        }
    }
}

/// One JSON field holding a hex digest of the image file's bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HashSpec {
    pub field: String,
    pub algo: HashAlgo,
}

impl FromStr for HashSpec {
    type Err = String;
    /// `NAME=md5|sha256|sha512`, as given to `--hash-field`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (field, algo) = s.split_once('=').ok_or_else(|| {
            format!("--hash-field {s:?}: expected NAME=ALGO, e.g. md5_file_hash=md5")
        })?;
        let field = field.trim();
        if field.is_empty() {
            return Err(format!("--hash-field {s:?}: the field name is empty"));
        }
        let algo = algo
            .parse()
            .map_err(|e| format!("--hash-field {s:?}: {e}"))?;
        Ok(HashSpec {
            field: field.to_string(),
            algo,
        })
    }
}

impl fmt::Display for HashSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.field, self.algo.name())
    }
}

/// The hash fields of the DALLE-3 JSONs that are digests of the file bytes:
/// `md5_file_hash` (MD5) and `sha512_hash` (SHA-512). Their `md5_pil_hash` is
/// an MD5 of the pixels as decoded by PIL, not of the file, and is not checked.
pub fn dalle3_hash_fields() -> Vec<HashSpec> {
    vec![
        HashSpec {
            field: "md5_file_hash".into(),
            algo: HashAlgo::Md5,
        },
        HashSpec {
            field: "sha512_hash".into(),
            algo: HashAlgo::Sha512,
        },
    ]
}

/// Hash fields of a named preset (`None`: no such preset).
pub fn preset_hash_fields(preset: &str) -> Option<Vec<HashSpec>> {
    (preset == "dalle3").then(dalle3_hash_fields)
}

/// Computes the requested digests of one file, fed chunk by chunk.
#[derive(Clone, Default)]
pub struct ImageHasher {
    md5: Option<Md5>,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
}

impl ImageHasher {
    /// A hasher computing each algorithm of `specs` once.
    pub fn for_specs(specs: &[HashSpec]) -> Self {
        Self::new(specs.iter().map(|s| s.algo))
    }

    pub fn new(algos: impl IntoIterator<Item = HashAlgo>) -> Self {
        let mut h = ImageHasher::default();
        for a in algos {
            match a {
                HashAlgo::Md5 => h.md5 = Some(Md5::new()),
                HashAlgo::Sha256 => h.sha256 = Some(Sha256::new()),
                HashAlgo::Sha512 => h.sha512 = Some(Sha512::new()),
            }
        }
        h
    }

    /// Whether any digest is computed.
    pub fn is_active(&self) -> bool {
        self.md5.is_some() || self.sha256.is_some() || self.sha512.is_some()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        if let Some(h) = &mut self.md5 {
            h.update(chunk);
        }
        if let Some(h) = &mut self.sha256 {
            h.update(chunk);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(chunk);
        }
    }

    pub fn finish(self) -> Digests {
        let mut d = Digests::default();
        if let Some(h) = self.md5 {
            d.md5 = Some(h.finalize().into());
        }
        if let Some(h) = self.sha256 {
            d.sha256 = Some(h.finalize().into());
        }
        if let Some(h) = self.sha512 {
            let out = h.finalize();
            let mut a = [0u8; 64];
            a.copy_from_slice(&out);
            d.sha512 = Some(a);
        }
        d
    }
}

/// The digests of one file (only those computed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digests {
    pub md5: Option<[u8; 16]>,
    pub sha256: Option<[u8; 32]>,
    pub sha512: Option<[u8; 64]>,
}

impl Digests {
    pub fn get(&self, algo: HashAlgo) -> Option<&[u8]> {
        match algo {
            HashAlgo::Md5 => self.md5.as_ref().map(|a| &a[..]),
            HashAlgo::Sha256 => self.sha256.as_ref().map(|a| &a[..]),
            HashAlgo::Sha512 => self.sha512.as_ref().map(|a| &a[..]),
        }
    }
    /// Lower-case hex of one digest.
    pub fn hex(&self, algo: HashAlgo) -> Option<String> {
        self.get(algo).map(to_hex)
    }
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares a JSON's claimed hex digest with the computed one:
/// `Err(detail)` on a mismatch or a value that is not such a digest.
pub fn compare_digest(spec: &HashSpec, claimed: &str, digests: &Digests) -> Result<(), String> {
    let Some(actual) = digests.get(spec.algo) else {
        return Ok(());
    };
    let want = claimed.trim();
    let well_formed =
        want.len() == spec.algo.digest_len() * 2 && want.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(format!(
            "{}: {want:?} is not a {}-digit hex {} digest",
            spec.field,
            spec.algo.digest_len() * 2,
            spec.algo.name()
        ));
    }
    let actual = to_hex(actual);
    if want.eq_ignore_ascii_case(&actual) {
        Ok(())
    } else {
        Err(format!(
            "{}: the JSON says {} {want}, the file's is {actual}",
            spec.field,
            spec.algo.name()
        ))
    }
}

/// The values of the hash fields in a JSON, in the order of `specs`
/// (`None`: absent, or not a string). A JSON that does not parse gives no
/// claims (its error is reported where the sample is parsed).
pub fn hash_claims(json: &[u8], specs: &[HashSpec]) -> Vec<Option<String>> {
    if specs.is_empty() {
        return Vec::new();
    }
    let names: Vec<&str> = specs.iter().map(|s| s.field.as_str()).collect();
    let mut de = serde_json::Deserializer::from_slice(json);
    match (Claimed { names: &names }).deserialize(&mut de) {
        Ok(found) => found,
        Err(_) => vec![None; specs.len()],
    }
}

/// Picks string fields by name out of a JSON object, skipping the rest.
struct Claimed<'n> {
    names: &'n [&'n str],
}

impl<'de> DeserializeSeed<'de> for Claimed<'_> {
    type Value = Vec<Option<String>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Claimed<'_> {
    type Value = Vec<Option<String>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = vec![None; self.names.len()];
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.names.iter().position(|n| *n == key) {
                Some(i) => {
                    let v: serde_json::Value = map.next_value()?;
                    found[i] = v.as_str().map(str::to_string);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let mut h = ImageHasher::new([HashAlgo::Md5, HashAlgo::Sha256, HashAlgo::Sha512]);
        h.update(b"a");
        h.update(b"bc");
        let d = h.finish();
        assert_eq!(
            d.hex(HashAlgo::Md5).unwrap(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            d.hex(HashAlgo::Sha256).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(
            d.hex(HashAlgo::Sha512)
                .unwrap()
                .starts_with("ddaf35a193617aba")
        );
    }

    #[test]
    fn spec_parsing_names_the_fault() {
        let s: HashSpec = "md5_file_hash=MD5".parse().unwrap();
        assert_eq!(s.algo, HashAlgo::Md5);
        assert_eq!(s.to_string(), "md5_file_hash=md5");
        assert!("x".parse::<HashSpec>().unwrap_err().contains("NAME=ALGO"));
        assert!("x=crc32".parse::<HashSpec>().unwrap_err().contains("crc32"));
        assert!("=md5".parse::<HashSpec>().unwrap_err().contains("empty"));
    }

    #[test]
    fn claims_are_picked_by_name() {
        let specs = dalle3_hash_fields();
        let json = br#"{"md5_pil_hash":"zz","sha512_hash":"ab","nested":{"md5_file_hash":"no"},"md5_file_hash":7}"#;
        assert_eq!(hash_claims(json, &specs), vec![None, Some("ab".into())]);
        assert_eq!(hash_claims(b"not json", &specs), vec![None, None]);
    }
}
