//! The sources of one rules revision as the data of a ConfigMap, and back.
//!
//! Small sources are stored as they are, readable with `kubectl get configmap -o yaml`: the
//! rules file under `lifecycle.yaml`, each template under `template.NAME`. Sources over
//! [`PLAIN_AT_MOST`] bytes, or with a template whose name cannot be a ConfigMap key, are stored
//! gzip-compressed as one JSON document under `binaryData` `sources.json.gz`. What does not fit a
//! ConfigMap even compressed is not stored (the caller keeps it in memory only).

use crate::rules::Sources;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

/// Key of the rules file's text.
pub const RULES_KEY: &str = "lifecycle.yaml";
/// Prefix of the key of each template.
pub const TEMPLATE_PREFIX: &str = "template.";
/// Key of the compressed form.
pub const COMPRESSED_KEY: &str = "sources.json.gz";
/// Largest sources stored uncompressed (bytes of text).
pub const PLAIN_AT_MOST: usize = 256 * 1024;
/// Largest stored data (a ConfigMap holds at most 1 MiB, metadata included).
pub const STORED_AT_MOST: usize = 900 * 1024;
/// The most a compressed copy may expand to when read back (the rules file and templates are
/// each at most 1 MiB; a revision has few templates).
const EXPANDED_AT_MOST: u64 = 64 * 1024 * 1024;

/// The data of a ConfigMap: `data` and `binaryData`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Text entries.
    pub data: BTreeMap<String, String>,
    /// Binary entries.
    pub binary: BTreeMap<String, Vec<u8>>,
}

/// Whether `key` may be a ConfigMap key.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The stored form of `sources`, or why they cannot be stored.
pub fn encode(sources: &Sources) -> Result<Stored, String> {
    let size = sources.text.len() + sources.templates.values().map(String::len).sum::<usize>();
    let keys_fit = sources
        .templates
        .keys()
        .all(|name| valid_key(&format!("{TEMPLATE_PREFIX}{name}")));
    if size <= PLAIN_AT_MOST && keys_fit {
        let mut data = BTreeMap::from([(RULES_KEY.to_string(), sources.text.clone())]);
        for (name, body) in &sources.templates {
            data.insert(format!("{TEMPLATE_PREFIX}{name}"), body.clone());
        }
        return Ok(Stored {
            data,
            binary: BTreeMap::new(),
        });
    }
    let document = json!({
        RULES_KEY: sources.text,
        "templates": sources.templates,
    });
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    let bytes = gz
        .write_all(document.to_string().as_bytes())
        .and_then(|()| gz.finish())
        .map_err(|e| format!("cannot compress the sources: {e}"))?;
    if bytes.len() > STORED_AT_MOST {
        return Err(format!(
            "the sources are {size} bytes, {} compressed; a ConfigMap holds at most {STORED_AT_MOST}",
            bytes.len()
        ));
    }
    Ok(Stored {
        data: BTreeMap::new(),
        binary: BTreeMap::from([(COMPRESSED_KEY.to_string(), bytes)]),
    })
}

/// The sources stored in `stored`, as the rules file `file` (where problems are reported).
pub fn decode(stored: &Stored, file: &Path) -> Result<Sources, String> {
    if let Some(bytes) = stored.binary.get(COMPRESSED_KEY) {
        let mut text = String::new();
        GzDecoder::new(&bytes[..])
            .take(EXPANDED_AT_MOST)
            .read_to_string(&mut text)
            .map_err(|e| format!("`{COMPRESSED_KEY}` cannot be read: {e}"))?;
        let document: Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| format!("`{COMPRESSED_KEY}` is not the expected document: {e}"))?;
        let rules = document
            .get(RULES_KEY)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("`{COMPRESSED_KEY}` holds no `{RULES_KEY}` text"))?;
        let mut sources = Sources::from_text(file, rules);
        if let Some(templates) = document.get("templates").and_then(Value::as_object) {
            for (name, body) in templates {
                let body = body
                    .as_str()
                    .ok_or_else(|| format!("template `{name}` is not text"))?;
                sources = sources.with_template(name, body);
            }
        }
        return Ok(sources);
    }
    let rules = stored
        .data
        .get(RULES_KEY)
        .ok_or_else(|| format!("neither `{RULES_KEY}` nor `{COMPRESSED_KEY}` is stored"))?;
    let mut sources = Sources::from_text(file, rules.as_str());
    for (key, body) in &stored.data {
        if let Some(name) = key.strip_prefix(TEMPLATE_PREFIX) {
            sources = sources.with_template(name, body.as_str());
        }
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(templates: &[(&str, String)]) -> Sources {
        let mut s = Sources::from_text("rules/lifecycle.yaml", "version: 1\n");
        for (name, body) in templates {
            s = s.with_template(name, body.clone());
        }
        s
    }

    #[test]
    fn small_sources_are_stored_readable_and_read_back_whole() {
        let s = sources(&[
            ("run.yaml", "kind: Job\n".into()),
            ("summary.txt", "{{ x }}".into()),
        ]);
        let stored = encode(&s).unwrap();
        assert!(stored.binary.is_empty());
        assert_eq!(stored.data["lifecycle.yaml"], "version: 1\n");
        assert_eq!(stored.data["template.run.yaml"], "kind: Job\n");
        assert_eq!(decode(&stored, &s.file).unwrap(), s);
    }

    #[test]
    fn large_sources_and_odd_template_names_are_compressed_and_read_back_whole() {
        // text that compresses well, over the plain limit
        let big = "      - name: step\n        image: busybox\n".repeat(8000);
        assert!(big.len() > PLAIN_AT_MOST);
        for s in [
            sources(&[("big.yaml", big.clone())]),
            sources(&[("with space.yaml", "x".into())]),
        ] {
            let stored = encode(&s).unwrap();
            assert!(stored.data.is_empty(), "{:?}", stored.data.keys());
            assert!(stored.binary[COMPRESSED_KEY].len() < STORED_AT_MOST);
            assert_eq!(decode(&stored, &s.file).unwrap(), s);
        }
    }

    #[test]
    fn what_does_not_fit_or_cannot_be_read_says_why() {
        // bytes that do not compress: a pseudo-random text over the stored limit
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: String = (0..STORED_AT_MOST * 2)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x % 90) as u8)
            })
            .collect();
        let err = encode(&sources(&[("noise.txt", noise)])).unwrap_err();
        assert!(err.contains("a ConfigMap holds at most"), "{err}");
        let file = Path::new("lifecycle.yaml");
        let err = decode(&Stored::default(), file).unwrap_err();
        assert!(err.contains("neither `lifecycle.yaml`"), "{err}");
        let damaged = Stored {
            binary: BTreeMap::from([(COMPRESSED_KEY.to_string(), b"not gzip".to_vec())]),
            ..Stored::default()
        };
        let err = decode(&damaged, file).unwrap_err();
        assert!(err.contains("cannot be read"), "{err}");
    }
}
