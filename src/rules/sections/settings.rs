//! `settings`: the declared settings with the deployment's overrides (`--set NAME=VALUE`).
//!
//! An override must name a declared setting and keep its type (a number stays a number, a
//! boolean a boolean); its problems are reported against `--set`, not the rules file.

use crate::rules::Problem;
use crate::rules::compiler::{Compiler, list_or_none};
use crate::rules::model::Setting;
use crate::rules::suggest::did_you_mean;
use indexmap::IndexMap;
use serde_json::Value;

impl Compiler<'_> {
    /// The settings after overrides, as a JSON object.
    pub(crate) fn compile_settings(
        &mut self,
        declared: &IndexMap<String, Setting>,
        overrides: &[(String, String)],
    ) -> Value {
        let mut settings = serde_json::Map::new();
        for (k, v) in declared {
            settings.insert(k.clone(), serde_json::to_value(v).unwrap_or(Value::Null));
        }
        for (k, v) in overrides {
            match settings.get(k) {
                None => self.problems.push(Problem {
                    file: "--set".into(),
                    line: 1,
                    column: 1,
                    path: k.clone(),
                    message: format!(
                        "unknown setting `{k}`{} (the rules define: {})",
                        did_you_mean(k, &declared.keys().collect::<Vec<_>>()),
                        list_or_none(&declared.keys().cloned().collect::<Vec<_>>())
                    ),
                }),
                Some(old) => {
                    let new = match old {
                        Value::Number(_) => match v.trim().parse::<i64>() {
                            Ok(i) => Some(Value::from(i)),
                            Err(_) => v
                                .trim()
                                .parse::<f64>()
                                .ok()
                                .and_then(serde_json::Number::from_f64)
                                .map(Value::Number),
                        },
                        Value::Bool(_) => v.parse::<bool>().ok().map(Value::Bool),
                        _ => Some(Value::String(v.clone())),
                    };
                    match new {
                        Some(n) => {
                            settings.insert(k.clone(), n);
                        }
                        None => self.problems.push(Problem {
                            file: "--set".into(),
                            line: 1,
                            column: 1,
                            path: k.clone(),
                            message: format!(
                                "setting `{k}` is a {}, `{v}` is not",
                                if old.is_number() { "number" } else { "boolean" }
                            ),
                        }),
                    }
                }
            }
        }
        Value::Object(settings)
    }
}
