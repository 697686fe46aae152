//! What kind of file a YAML document looks like, so that a file given to the wrong command says
//! which command it belongs to, instead of listing every field it does not know.

use serde_yaml::Value;

/// The kinds of YAML file the commands read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A rules file (`lifecycle check`, `--rules`).
    Rules,
    /// A scenario file (`lifecycle test`).
    Scenario,
}

/// The kind a document looks like, from its top-level keys; `None` when it is not clear.
pub fn looks_like(doc: &Value) -> Option<Kind> {
    let m = doc.as_mapping()?;
    let has = |k: &str| m.contains_key(Value::String(k.into()));
    let rules = has("phases") || has("execution") || has("version");
    let scenario = has("steps");
    match (rules, scenario) {
        (true, false) => Some(Kind::Rules),
        (false, true) => Some(Kind::Scenario),
        _ => None,
    }
}

/// The hint for a scenario given where a rules file is expected.
pub(crate) fn not_rules_hint(doc: &Value, file: &str) -> Option<String> {
    (looks_like(doc)? == Kind::Scenario).then(|| {
        format!(
            "this looks like a scenario file (it has `steps`), not a rules file: run it with `lifecycle test {file}`"
        )
    })
}

/// The hint for a rules file given where a scenario is expected (`text` is the file's text).
pub fn not_scenario_hint(text: &str, file: &str) -> Option<String> {
    let doc: Value = serde_yaml::from_str(text).ok()?;
    (looks_like(&doc)? == Kind::Rules).then(|| {
        format!(
            "this looks like a rules file, not a scenario: run `lifecycle check {file}` to check it, or `lifecycle test --rules {file} [SCENARIOS]` to run scenarios against it"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Option<Kind> {
        looks_like(&serde_yaml::from_str(text).unwrap())
    }

    #[test]
    fn rules_and_scenarios_are_told_apart_by_their_keys() {
        assert_eq!(kind("version: 1\nphases: {}\n"), Some(Kind::Rules));
        assert_eq!(
            kind("name: x\nresource: {}\nsteps: []\n"),
            Some(Kind::Scenario)
        );
        assert_eq!(kind("name: x\n"), None);
        assert_eq!(kind("[1, 2]\n"), None);
        assert_eq!(kind("version: 1\nsteps: []\n"), None);
        assert!(
            not_scenario_hint("version: 1\n", "r.yaml")
                .unwrap()
                .contains("lifecycle check r.yaml")
        );
        assert_eq!(not_scenario_hint("name: x\nsteps: []\n", "s.yaml"), None);
        assert_eq!(not_scenario_hint("{", "s.yaml"), None);
    }
}
