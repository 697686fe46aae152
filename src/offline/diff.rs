//! `lifecycle diff OLD NEW`: what changed between two rule sets, and its impact.
//!
//! - [`changes`]: settings, phases, transitions, templates and every other section, entry by
//!   entry;
//! - [`scenarios`]: scenario files run against both, those whose result or trace differs;
//! - [`compare`]: two decisions for one resource, equal when they do the same thing (the rules
//!   revision each writes set aside): the shell decides each live resource under both.

use crate::engine::{Decision, Effect};
use crate::offline::scenario::{Trace, run_file_traced};
use crate::rules::{Rules, Sources};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// One change between the rule sets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Where: `settings.cooldown`, `phases.Running`, `phases.Running.transitions.succeeded`,
    /// `templates/pipelinerun.yaml`, `values.reason`, `cooldown`…
    pub what: String,
    /// `added`, `removed`, `changed` or `moved`.
    pub change: &'static str,
    /// Details: the old and new value of a setting, the fields of a phase that changed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Sections that are maps of named entries, compared entry by entry.
const NAMED: &[&str] = &[
    "settings",
    "children",
    "related",
    "values",
    "actions",
    "metrics",
    "renamedPhases",
];

/// What changed from `old` to `new`, in the order of the new file (removed entries last).
pub fn changes(old: &Rules, old_src: &Sources, new: &Rules, new_src: &Sources) -> Vec<Change> {
    let a = serde_json::to_value(&old.raw).unwrap_or(Value::Null);
    let b = serde_json::to_value(&new.raw).unwrap_or(Value::Null);
    let empty = Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut out = Vec::new();
    for key in keys(a, b) {
        let (x, y) = (a.get(&key), b.get(&key));
        if x == y {
            continue;
        }
        if key == "phases" {
            phases(x, y, &mut out);
        } else if NAMED.contains(&key.as_str()) {
            named(&key, x, y, &mut out);
        } else {
            out.push(whole(&key, x, y));
        }
    }
    // settings as the deployment sees them (after --set), where only the value moved
    for (k, v) in new.settings.as_object().into_iter().flatten() {
        let before = old.settings.get(k);
        let what = format!("settings.{k}");
        if before.is_some_and(|b| b != v) && !out.iter().any(|c| c.what == what) {
            out.push(Change {
                what,
                change: "changed",
                detail: format!("{} -> {v}", before.unwrap_or(&Value::Null)),
            });
        }
    }
    for (name, text) in &new_src.templates {
        match old_src.templates.get(name) {
            None => out.push(template(name, "added", text, None)),
            Some(t) if t != text => out.push(template(name, "changed", text, Some(t))),
            Some(_) => {}
        }
    }
    for (name, text) in &old_src.templates {
        if !new_src.templates.contains_key(name) {
            out.push(template(name, "removed", text, None));
        }
    }
    out
}

fn template(name: &str, change: &'static str, text: &str, old: Option<&str>) -> Change {
    let detail = match old {
        Some(o) => {
            let (a, b): (Vec<&str>, Vec<&str>) = (o.lines().collect(), text.lines().collect());
            let differing =
                a.iter().zip(&b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len());
            format!("{differing} line(s) differ")
        }
        None => String::new(),
    };
    Change {
        what: format!("templates/{name}"),
        change,
        detail,
    }
}

/// Keys of both maps: the new one's order, then those only in the old one.
fn keys(a: &Map<String, Value>, b: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = b.keys().cloned().collect();
    out.extend(a.keys().filter(|k| !b.contains_key(*k)).cloned());
    out
}

fn whole(what: &str, x: Option<&Value>, y: Option<&Value>) -> Change {
    let (change, detail) = match (x, y) {
        (None, Some(_)) => ("added", String::new()),
        (Some(_), None) => ("removed", String::new()),
        (Some(a), Some(b)) => ("changed", fields_changed(a, b)),
        (None, None) => ("changed", String::new()),
    };
    Change {
        what: what.to_string(),
        change,
        detail,
    }
}

/// The fields of two objects that differ (`poll, sync`), or the values when they are short.
fn fields_changed(a: &Value, b: &Value) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let fields: Vec<String> = keys(x, y)
                .into_iter()
                .filter(|k| x.get(k) != y.get(k))
                .collect();
            format!("{} changed", fields.join(", "))
        }
        _ => {
            let (s, t) = (a.to_string(), b.to_string());
            if s.len() + t.len() <= 120 {
                format!("{s} -> {t}")
            } else {
                String::new()
            }
        }
    }
}

fn named(section: &str, x: Option<&Value>, y: Option<&Value>, out: &mut Vec<Change>) {
    let empty = Map::new();
    let a = x.and_then(Value::as_object).unwrap_or(&empty);
    let b = y.and_then(Value::as_object).unwrap_or(&empty);
    for k in keys(a, b) {
        if a.get(&k) != b.get(&k) {
            out.push(whole(&format!("{section}.{k}"), a.get(&k), b.get(&k)));
        }
    }
}

fn phases(x: Option<&Value>, y: Option<&Value>, out: &mut Vec<Change>) {
    let empty = Map::new();
    let a = x.and_then(Value::as_object).unwrap_or(&empty);
    let b = y.and_then(Value::as_object).unwrap_or(&empty);
    for name in keys(a, b) {
        let what = format!("phases.{name}");
        let (p, q) = match (a.get(&name), b.get(&name)) {
            (Some(p), Some(q)) if p != q => (p, q),
            (Some(_), Some(_)) => continue,
            (p, q) => {
                out.push(whole(&what, p, q));
                continue;
            }
        };
        let mut p_rest = p.clone();
        let mut q_rest = q.clone();
        let pt = take_transitions(&mut p_rest);
        let qt = take_transitions(&mut q_rest);
        if p_rest != q_rest {
            out.push(Change {
                what: what.clone(),
                change: "changed",
                detail: fields_changed(&p_rest, &q_rest),
            });
        }
        transitions(&what, &pt, &qt, out);
    }
}

fn take_transitions(phase: &mut Value) -> Vec<Value> {
    phase
        .as_object_mut()
        .and_then(|m| m.remove("transitions"))
        .and_then(|t| t.as_array().cloned())
        .unwrap_or_default()
}

fn transitions(phase: &str, a: &[Value], b: &[Value], out: &mut Vec<Change>) {
    let name = |t: &Value| {
        t.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let a_names: Vec<String> = a.iter().map(name).collect();
    let b_names: Vec<String> = b.iter().map(name).collect();
    for (i, t) in b.iter().enumerate() {
        let n = &b_names[i];
        let what = format!("{phase}.transitions.{n}");
        match a_names.iter().position(|m| m == n) {
            None => out.push(Change {
                what,
                change: "added",
                detail: format!("at position {}", i + 1),
            }),
            Some(j) => {
                if a[j] != *t {
                    out.push(Change {
                        what: what.clone(),
                        change: "changed",
                        detail: fields_changed(&a[j], t),
                    });
                }
                let before: Vec<&String> = a_names.iter().filter(|m| b_names.contains(m)).collect();
                let after: Vec<&String> = b_names.iter().filter(|m| a_names.contains(m)).collect();
                let (pb, pa) = (
                    before.iter().position(|m| *m == n),
                    after.iter().position(|m| *m == n),
                );
                if pb != pa {
                    out.push(Change {
                        what,
                        change: "moved",
                        detail: format!("tried at position {} (was {})", i + 1, j + 1),
                    });
                }
            }
        }
    }
    for (j, n) in a_names.iter().enumerate() {
        if !b_names.contains(n) {
            out.push(Change {
                what: format!("{phase}.transitions.{n}"),
                change: "removed",
                detail: format!("was at position {}", j + 1),
            });
        }
    }
}

/// A scenario whose result differs between the rule sets.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioImpact {
    /// The file.
    pub file: PathBuf,
    /// Its name.
    pub name: String,
    /// Failures under the old rules (empty: passed).
    pub old: Vec<String>,
    /// Failures under the new rules.
    pub new: Vec<String>,
    /// What differs, in words.
    pub difference: String,
}

/// Runs every scenario file against both rule sets (as the rules for scenarios that name none);
/// returns how many ran and those whose result or trace differs.
pub fn scenarios(
    files: &[PathBuf],
    old: &Rules,
    old_file: &Path,
    new: &Rules,
    new_file: &Path,
) -> Vec<ScenarioImpact> {
    let mut out = Vec::new();
    for file in files {
        let (o, ot) = run_file_traced(file, old_file);
        let (n, nt) = run_file_traced(file, new_file);
        let (ot, nt) = (normalized(old, ot), normalized(new, nt));
        let difference = match (o.failures.is_empty(), n.failures.is_empty()) {
            (true, false) => "passes with the old rules, fails with the new".to_string(),
            (false, true) => "fails with the old rules, passes with the new".to_string(),
            (false, false) if o.failures != n.failures => "fails differently".to_string(),
            _ if ot.effects != nt.effects => first_effect_difference(&ot, &nt),
            _ if ot.status != nt.status => "the final status differs".to_string(),
            _ => continue,
        };
        out.push(ScenarioImpact {
            file: file.clone(),
            name: n.name,
            old: o.failures,
            new: n.failures,
            difference,
        });
    }
    out
}

fn first_effect_difference(a: &Trace, b: &Trace) -> String {
    let i = a
        .effects
        .iter()
        .zip(&b.effects)
        .position(|(x, y)| x != y)
        .unwrap_or(a.effects.len().min(b.effects.len()));
    let (x, y) = (a.effects.get(i), b.effects.get(i));
    if let (Some(x), Some(y)) = (x, y)
        && x["effect"]["effect"] == y["effect"]["effect"]
        && let Some((path, old, new)) = first_difference(&x["effect"], &y["effect"], String::new())
    {
        return format!(
            "same result, other effects: effect {} ({}) has {path} {} with the old rules, {} with the new",
            i + 1,
            brief(x),
            clip(&old.to_string(), 80),
            clip(&new.to_string(), 80)
        );
    }
    let describe = |t: Option<&Value>| t.map_or("nothing".to_string(), brief);
    format!(
        "same result, other effects: effect {} is {} with the old rules, {} with the new",
        i + 1,
        describe(x),
        describe(y)
    )
}

/// The first place two JSON values differ: its path, and the value on each side.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<(String, Value, Value)> {
    match (a, b) {
        _ if a == b => None,
        (Value::Object(x), Value::Object(y)) => keys(x, y).into_iter().find_map(|k| {
            let null = Value::Null;
            first_difference(
                x.get(&k).unwrap_or(&null),
                y.get(&k).unwrap_or(&null),
                format!("{at}.{k}"),
            )
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{at}[{i}]"))),
        _ => Some((at, a.clone(), b.clone())),
    }
}

/// A traced effect in a few words: `event WorkflowCompleted`, `patchStatus {…}`.
fn brief(entry: &Value) -> String {
    let e = &entry["effect"];
    let kind = e["effect"].as_str().unwrap_or("?");
    let what = match kind {
        "event" => e["reason"].as_str().unwrap_or("").to_string(),
        "metric" => e["name"].as_str().unwrap_or("").to_string(),
        _ => String::new(),
    };
    let at = crate::time::go_duration(entry["at"].as_f64().unwrap_or(0.0));
    format!("{} at {at}", format!("{kind} {what}").trim_end())
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    format!("{}…", s.chars().take(max).collect::<String>())
}

/// The trace with the rules revision each write records set aside.
fn normalized(rules: &Rules, mut t: Trace) -> Trace {
    let Some(field) = &rules.resource.status.revision else {
        return t;
    };
    if let Some(m) = t.status.as_object_mut() {
        m.remove(field);
    }
    for e in &mut t.effects {
        if let Some(m) = e
            .pointer_mut("/effect/patch")
            .and_then(Value::as_object_mut)
        {
            m.remove(field);
        }
    }
    t
}

/// A decision in words, for listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionSummary {
    /// The phase after it.
    pub phase: String,
    /// The transition taken.
    pub transition: Option<String>,
    /// Its effects, in words.
    pub effects: Vec<String>,
    /// Look again after (seconds).
    pub requeue_after: Option<f64>,
    /// The rules error it reports.
    pub error: Option<String>,
    /// The effects in full, for comparing.
    #[serde(skip)]
    full: Vec<Value>,
}

/// The two decisions for one resource, when they differ (the revision each writes set aside).
pub fn compare(
    old: &Rules,
    a: &Decision,
    new: &Rules,
    b: &Decision,
) -> Option<(DecisionSummary, DecisionSummary)> {
    let (x, y) = (summary(old, a), summary(new, b));
    (x != y).then_some((x, y))
}

fn summary(rules: &Rules, d: &Decision) -> DecisionSummary {
    let effects: Vec<Effect> = d
        .effects
        .iter()
        .filter_map(|e| match (e, &rules.resource.status.revision) {
            (Effect::PatchStatus { patch }, Some(field)) => {
                let mut patch = patch.clone();
                if let Some(m) = patch.as_object_mut() {
                    m.remove(field);
                }
                (patch.as_object().is_none_or(|m| !m.is_empty()))
                    .then_some(Effect::PatchStatus { patch })
            }
            _ => Some(e.clone()),
        })
        .collect();
    DecisionSummary {
        phase: d.phase.clone(),
        transition: d.transition.clone(),
        effects: effects.iter().map(crate::engine::drive::describe).collect(),
        requeue_after: d.requeue_after,
        error: d.error.as_ref().map(ToString::to_string),
        full: effects
            .iter()
            .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Observation;
    use serde_json::json;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// A copy of the default rules and templates in a folder of its own, with `edit` applied to
    /// the rules text; returns the folder (kept alive) and the rules file.
    fn copy(edit: impl Fn(String) -> String) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        for f in std::fs::read_dir(root().join("templates")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.path().join("templates").join(f.file_name())).unwrap();
        }
        let text = std::fs::read_to_string(root().join("lifecycle.yaml")).unwrap();
        let file = dir.path().join("lifecycle.yaml");
        std::fs::write(&file, edit(text)).unwrap();
        (dir, file)
    }

    fn replaced(text: String, from: &str, to: &str) -> String {
        assert!(text.contains(from), "`{from}` not in the rules");
        text.replacen(from, to, 1)
    }

    fn load(file: &Path) -> (Rules, Sources) {
        (
            Rules::load(file, &[]).unwrap(),
            Sources::read(file).unwrap(),
        )
    }

    #[test]
    fn identical_rules_have_no_changes_and_edits_are_named_where_they_are() {
        let (_a, old_file) = copy(|t| t);
        let (old, old_src) = load(&old_file);
        assert_eq!(changes(&old, &old_src, &old, &old_src), vec![]);

        let (dir, new_file) = copy(|t| {
            let t = replaced(t, "cooldown: 5m ", "cooldown: 7m ");
            let t = replaced(t, "  Running:\n", "  Executing:\n");
            let t = t.replace("to: Running\n", "to: Executing\n");
            format!("{t}renamedPhases:\n  Running: Executing\n")
        });
        let tmpl = dir.path().join("templates/pipelinerun.yaml");
        let text = std::fs::read_to_string(&tmpl).unwrap();
        std::fs::write(&tmpl, format!("{text}# a comment\n")).unwrap();
        let (new, new_src) = load(&new_file);
        let got: Vec<(String, &str)> = changes(&old, &old_src, &new, &new_src)
            .into_iter()
            .map(|c| (c.what, c.change))
            .collect();
        for want in [
            ("settings.cooldown", "changed"),
            ("phases.Pending.transitions.started", "changed"),
            ("phases.Executing", "added"),
            ("phases.Running", "removed"),
            ("renamedPhases.Running", "added"),
            ("templates/pipelinerun.yaml", "changed"),
        ] {
            assert!(
                got.contains(&(want.0.to_string(), want.1)),
                "{want:?} not in {got:?}"
            );
        }
        assert_eq!(got.len(), 6, "{got:?}");
    }

    #[test]
    fn transitions_added_removed_and_reordered_are_each_reported() {
        let (_a, old_file) = copy(|t| t);
        let (old, _) = load(&old_file);
        let phase = &old.raw.phases["Running"];
        let names: Vec<&str> = phase.transitions.iter().map(|t| t.name.as_str()).collect();
        assert!(names.len() >= 3, "{names:?}");
        // the same rules with Running's first two transitions swapped and its last one removed
        let mut raw = serde_json::to_value(&old.raw).unwrap();
        let list = raw["phases"]["Running"]["transitions"]
            .as_array_mut()
            .unwrap();
        list.swap(0, 1);
        let removed = list.pop().unwrap();
        let mut out = Vec::new();
        transitions(
            "phases.Running",
            &serde_json::to_value(&old.raw).unwrap()["phases"]["Running"]["transitions"]
                .as_array()
                .unwrap()
                .clone(),
            list,
            &mut out,
        );
        let got: Vec<(String, &str)> = out.into_iter().map(|c| (c.what, c.change)).collect();
        assert!(
            got.contains(&(format!("phases.Running.transitions.{}", names[0]), "moved")),
            "{got:?}"
        );
        assert!(
            got.contains(&(format!("phases.Running.transitions.{}", names[1]), "moved")),
            "{got:?}"
        );
        assert!(
            got.contains(&(
                format!(
                    "phases.Running.transitions.{}",
                    removed["name"].as_str().unwrap()
                ),
                "removed"
            )),
            "{got:?}"
        );
    }

    #[test]
    fn scenarios_whose_result_or_effects_differ_are_listed_and_others_not() {
        let (_a, old_file) = copy(|t| t);
        let (_b, new_file) = copy(|t| replaced(t, "cooldown: 5m ", "cooldown: 7m "));
        let (old, _) = load(&old_file);
        let (new, _) = load(&new_file);
        let dir = root().join("tests/lifecycle");
        let files: Vec<PathBuf> = [
            "cooldown-nothing-before-it-elapses.yaml",
            "create-started-moves-to-running.yaml",
        ]
        .iter()
        .map(|f| dir.join(f))
        .collect();
        let impact = scenarios(&files, &old, &old_file, &new, &new_file);
        assert_eq!(impact.len(), 1, "{impact:#?}");
        assert_eq!(impact[0].file, files[0]);
        assert!(impact[0].old.is_empty() && !impact[0].new.is_empty());
        assert_eq!(
            impact[0].difference,
            "passes with the old rules, fails with the new"
        );
        assert!(
            impact[0].new[0].contains("expected requeue after 5m, got 7m0s"),
            "{:?}",
            impact[0].new
        );

        // a change no expectation of this scenario pins still shows, by the first effect and
        // field that differ
        let (_c, lower_file) = copy(|t| {
            replaced(
                t,
                "phase: \"{{ transition.to }}\"",
                "phase: \"{{ transition.to | lower }}\"",
            )
        });
        let (lower, _) = load(&lower_file);
        let quiet = vec![dir.join("terminal-phase-never-changes.yaml")];
        let impact = scenarios(&quiet, &old, &old_file, &lower, &lower_file);
        assert_eq!(impact.len(), 1, "{impact:#?}");
        assert!(impact[0].old.is_empty() && impact[0].new.is_empty());
        assert!(
            impact[0].difference.starts_with("same result, other effects: effect ")
                && impact[0]
                    .difference
                    .contains("has .record.event_data.phase \"Running\" with the old rules, \"running\" with the new"),
            "{}",
            impact[0].difference
        );
    }

    #[test]
    fn decisions_compare_equal_but_for_the_revision_they_record() {
        let (_a, old_file) = copy(|t| t);
        let (_b, new_file) = copy(|t| replaced(t, "cooldown: 5m ", "cooldown: 7m "));
        let (old, _) = load(&old_file);
        let (new, _) = load(&new_file);
        assert_ne!(old.revision, new.revision);
        let resource =
            crate::offline::read_object(&root().join("examples/workflowexecution.yaml")).unwrap();
        let obs = Observation {
            resource,
            ..Observation::default()
        };
        // a fresh resource: both write Pending and create the same object
        let (a, b) = (
            crate::engine::decide(&old, &obs, 0.0),
            crate::engine::decide(&new, &obs, 0.0),
        );
        assert_ne!(a, b, "the status writes record different revisions");
        assert_eq!(compare(&old, &a, &new, &b), None);
        // a Completed resource in its cooldown: the next look moves from 5m to 7m
        let mut done = obs.clone();
        done.resource["status"] = json!({"phase": "Completed", "completionTime": "1970-01-01T00:00:00Z",
            "pipelineRunRef": {"name": "x"}, "rulesRevision": old.revision});
        let (a, b) = (
            crate::engine::decide(&old, &done, 60.0),
            crate::engine::decide(&new, &done, 60.0),
        );
        let (x, y) = compare(&old, &a, &new, &b).expect("the cooldown's end differs");
        assert_eq!(
            (x.requeue_after, y.requeue_after),
            (Some(240.0), Some(360.0))
        );
    }
}
