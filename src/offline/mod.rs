//! The offline world: a simulated cluster over a virtual clock ([`simulate`]) and rule-file
//! scenarios ([`scenario`]), for `render`, `simulate` and `test`. Nothing here talks to a cluster.

pub mod scenario;
pub mod simulate;

use serde_json::Value;
use std::path::Path;

/// Reads a YAML or JSON object from a file.
pub fn read_object(path: &Path) -> Result<Value, String> {
    let text = crate::rules::read_limited(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if !v.is_object() {
        return Err(format!(
            "{}: expected a YAML mapping (one object)",
            path.display()
        ));
    }
    Ok(v)
}
