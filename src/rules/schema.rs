//! JSON Schema of the rules file, generated from the serde model.

use super::model::RulesFile;

/// The JSON Schema of `lifecycle.yaml`, pretty-printed, ending in a newline.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RulesFile);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    text
}
