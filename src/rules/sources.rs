//! The texts rules are compiled from, and the one place that reads them from files.
//!
//! [`Sources`] holds the rules file's text and the text of every file of its templates folder,
//! with the names problems are reported under. [`Sources::read`] is the only code of the rules
//! loader that touches the file system; compilation ([`super::Rules::compile`]) is a function of
//! a `Sources` value, so tests and tools build one in memory ([`Sources::from_text`],
//! [`Sources::with_template`]) and compile it without any file. What could not be read is kept
//! in the sources as data, and compilation reports it in its place among the other problems.

use super::LoadError;
use super::locate::SourceMap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest rules file or template accepted.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A rules file and its templates, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// The rules file (problems in its text name it as displayed).
    pub file: PathBuf,
    /// The rules file's text.
    pub text: String,
    /// The templates folder: `templates:` of the rules (default `templates`), relative to the
    /// rules file. Problems in a template name the file inside it.
    pub templates_dir: PathBuf,
    /// Template files by file name.
    pub templates: BTreeMap<String, String>,
    /// Template files that could not be read: file name and why.
    pub unreadable: Vec<(String, String)>,
    /// Why the templates folder itself could not be read, if it could not.
    pub templates_dir_error: Option<String>,
}

impl Sources {
    /// Reads a rules file and every regular, non-hidden file of its templates folder.
    ///
    /// Only the rules file itself must be readable; a template folder or file that cannot be
    /// read is recorded for compilation to report.
    pub fn read(file: &Path) -> Result<Sources, LoadError> {
        let text = read_limited(file).map_err(|message| LoadError::Unusable {
            file: file.display().to_string(),
            message,
        })?;
        let mut sources = Sources::from_text(file, text);
        let dir = sources.templates_dir.clone();
        match list_files(&dir) {
            Ok(names) => {
                for name in names {
                    match read_limited(&dir.join(&name)) {
                        Ok(text) => {
                            sources.templates.insert(name, text);
                        }
                        Err(why) => sources.unreadable.push((name, why)),
                    }
                }
            }
            Err(e) => sources.templates_dir_error = Some(e),
        }
        Ok(sources)
    }

    /// Sources held in memory: `text` as the rules file `file`, with no templates yet.
    pub fn from_text(file: impl Into<PathBuf>, text: impl Into<String>) -> Sources {
        let file = file.into();
        let text = text.into();
        let folder = templates_folder(&text).unwrap_or_else(|| "templates".to_string());
        let templates_dir = file.parent().unwrap_or(Path::new(".")).join(folder);
        Sources {
            file,
            text,
            templates_dir,
            templates: BTreeMap::new(),
            unreadable: Vec::new(),
            templates_dir_error: None,
        }
    }

    /// These sources with the template file `name` added, or replaced, in memory.
    pub fn with_template(mut self, name: &str, text: impl Into<String>) -> Sources {
        self.templates.insert(name.to_string(), text.into());
        self
    }
}

/// The `templates:` entry of a rules text, when the text parses and the entry is a string.
///
/// The source map is built first because it refuses input nested deep enough to exhaust the
/// stack of a recursive parser; compilation reports every problem this function ignores.
fn templates_folder(text: &str) -> Option<String> {
    SourceMap::build(text).ok()?;
    let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let entry = doc.as_mapping()?.get("templates")?;
    serde_yaml::from_value::<Option<String>>(entry.clone())
        .ok()
        .flatten()
}

/// Names of the regular, non-hidden files in `dir`, sorted; symbolic links are followed (a
/// mounted ConfigMap's files are links into `..data`).
fn list_files(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    let mut names: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as UTF-8.
pub fn read_limited(file: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read: not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes; the limit is {} bytes",
            meta.len(),
            MAX_FILE_BYTES
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}
