//! CRD files for `lifecycle check`: the ones given with `--crd`, or by default those of the
//! checkout the rules file sits in (`deploy/crds/`), read and searched for the governed kind.

use crate::rules::{KindSchema, LoadError, find_kind_schema, read_limited};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The YAML files of the first `deploy/crds/` folder found in the rules file's folder or a
/// folder above it, up to the root of the checkout (the first folder holding `.git`).
pub(super) fn default_crds(rules_file: &Path) -> Vec<PathBuf> {
    let dir = match rules_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(dir) = std::path::absolute(&dir) else {
        return Vec::new();
    };
    let cwd = std::env::current_dir().ok();
    for d in dir.ancestors() {
        let crds = d.join("deploy").join("crds");
        if crds.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&crds)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .map(|p| match &cwd {
                    Some(c) => p.strip_prefix(c).map(Path::to_path_buf).unwrap_or(p),
                    None => p,
                })
                .collect();
            files.sort();
            return files;
        }
        if d.join(".git").exists() {
            break;
        }
    }
    Vec::new()
}

/// The schema of `api_version` / `kind` in `files` (each may hold several YAML documents).
pub(super) fn kind_schema(
    files: &[PathBuf],
    api_version: &str,
    kind: &str,
) -> Result<Option<KindSchema>, LoadError> {
    let mut docs = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let unusable = |message: String| LoadError::Unusable {
            file: name.clone(),
            message,
        };
        let text = read_limited(f).map_err(unusable)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .map_err(|e| unusable(format!("not a YAML CRD document: {e}")))?;
            if !v.is_null() {
                docs.push((name.clone(), v));
            }
        }
    }
    find_kind_schema(&docs, api_version, kind).map_err(|message| LoadError::Unusable {
        file: files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        message,
    })
}
