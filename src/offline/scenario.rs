//! Rule-file scenarios: `lifecycle test`.
//!
//! A scenario is a YAML file: a resource, optional existing objects and setting overrides, and
//! steps. Each step changes the in-memory world (advance the clock, change or delete objects,
//! make the next create fail, play an outcome of the rules' simulation block), reconciles it,
//! and checks expectations against the resource, the execution object and what the step
//! emitted (Events, audit records, metrics, effects). See `docs/rules.md` for the format.

use crate::engine::Effect;
use crate::expr::{Path as JPath, loose_eq};
use crate::offline::out;
use crate::offline::simulate::World;
use crate::rules::Rules;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    /// What it shows.
    pub name: String,
    /// Rules file, relative to the scenario (default: the `--rules` given to `lifecycle test`).
    #[serde(default)]
    pub rules: Option<String>,
    /// Setting overrides.
    #[serde(default)]
    pub settings: IndexMap<String, Value>,
    /// Virtual start time.
    #[serde(default)]
    pub start: Option<String>,
    /// The resource, inline.
    #[serde(default)]
    pub resource: Option<Value>,
    /// The resource, from a file relative to the scenario.
    #[serde(default)]
    pub resource_file: Option<String>,
    /// Merged over the resource (to vary a shared resource file).
    #[serde(default)]
    pub resource_patch: Option<Value>,
    /// Objects that exist from the start.
    #[serde(default)]
    pub objects: Vec<Value>,
    /// Steps.
    pub steps: Vec<Step>,
}

/// One step.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// A note shown on failure.
    #[serde(default)]
    pub name: Option<String>,
    /// Move the clock forward first (`30s`, `5m`).
    #[serde(default)]
    pub advance: Option<String>,
    /// Create or replace objects.
    #[serde(default)]
    pub put: Vec<Value>,
    /// Merge patch applied to the resource (someone edits it: spec, labels, annotations, status).
    #[serde(default)]
    pub patch_resource: Option<Value>,
    /// Merge patch applied to the execution object.
    #[serde(default)]
    pub patch_execution: Option<Value>,
    /// Delete the execution object.
    #[serde(default)]
    pub delete_execution: bool,
    /// Merge patches applied to children, by child name (the lock's name, or `execution`,
    /// patches the execution object).
    #[serde(default)]
    pub patch_children: IndexMap<String, Value>,
    /// Delete these children (someone else did).
    #[serde(default)]
    pub delete_children: Vec<String>,
    /// Request deletion of the resource.
    #[serde(default)]
    pub delete_resource: bool,
    /// The next create or delete of the execution object fails with this error.
    #[serde(default)]
    pub fail_next: Option<FailNext>,
    /// Apply the simulation's `started` change.
    #[serde(default)]
    pub started: bool,
    /// Apply a simulation outcome: `NAME` or `NAME:REASON:MESSAGE`.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Reconcile after the changes (default true).
    #[serde(default = "yes")]
    pub reconcile: bool,
    /// What must hold afterwards.
    #[serde(default)]
    pub expect: Option<Expect>,
}

fn yes() -> bool {
    true
}

/// An injected API error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailNext {
    /// `create` or `delete`.
    pub action: String,
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes reason.
    #[serde(default)]
    pub reason: String,
    /// Message.
    #[serde(default)]
    pub message: String,
}

/// Expectations.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    /// The resource's phase.
    #[serde(default)]
    pub phase: Option<String>,
    /// JSONPath (on the resource) → expected value.
    #[serde(default)]
    pub resource: IndexMap<String, Value>,
    /// JSONPaths (on the resource) that must select nothing.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Whether the execution object exists.
    #[serde(default)]
    pub execution_exists: Option<bool>,
    /// JSONPath (on the execution object) → expected value.
    #[serde(default)]
    pub execution: IndexMap<String, Value>,
    /// Whether each named child exists, by child name.
    #[serde(default)]
    pub children_exist: IndexMap<String, bool>,
    /// JSONPath (on a child) → expected value, by child name.
    #[serde(default)]
    pub children: IndexMap<String, IndexMap<String, Value>>,
    /// Whether the resource still exists.
    #[serde(default)]
    pub resource_exists: Option<bool>,
    /// Exactly these Events, in order (each a partial match).
    #[serde(default)]
    pub events: Option<Vec<Value>>,
    /// Exactly these audit records, in order (each: JSONPath → value).
    #[serde(default)]
    pub audit: Option<Vec<IndexMap<String, Value>>>,
    /// Exactly these metric updates, in order (partial match).
    #[serde(default)]
    pub metrics: Option<Vec<Value>>,
    /// Exactly these effect kinds, in order (`addFinalizer`, `createExecution`, …).
    #[serde(default)]
    pub effects: Option<Vec<String>>,
    /// When the last decision asked to look again (a duration), or `none`.
    #[serde(default)]
    pub requeue_after: Option<String>,
    /// Category of a rules error the step must report.
    #[serde(default)]
    pub error: Option<String>,
}

/// Result of one scenario.
pub struct Outcome {
    /// Scenario name.
    pub name: String,
    /// File.
    pub file: PathBuf,
    /// Failures (empty when it passed).
    pub failures: Vec<String>,
}

/// Runs every scenario under `paths`; prints results and `N passed, N failed`.
pub fn main(paths: &[PathBuf], default_rules: &Path, verbose: bool) -> ExitCode {
    let files = match collect(paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut passed = 0;
    let mut failed = 0;
    for file in &files {
        let o = run_file(file, default_rules);
        if o.failures.is_empty() {
            passed += 1;
            if verbose {
                out(&format!("ok      {} ({})\n", o.name, o.file.display()));
            }
        } else {
            failed += 1;
            let mut text = format!("FAILED  {} ({})\n", o.name, o.file.display());
            for f in &o.failures {
                text.push_str(&format!("        {f}\n"));
            }
            out(&text);
        }
    }
    out(&format!("{passed} passed, {failed} failed\n"));
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Scenario files under the given paths, sorted.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(format!("{}: no such file or folder", p.display()));
        }
    }
    if files.is_empty() {
        return Err("no scenario files found".into());
    }
    Ok(files)
}

/// What a scenario did, for comparing runs of it under two rule sets: every effect carried out
/// (with its virtual time) and the resource's final status (null when it is gone).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// `{at, effect}` entries, in order.
    pub effects: Vec<Value>,
    /// The final status.
    pub status: Value,
    /// `{at, decision}` entries, in order: every decision taken.
    pub decisions: Vec<Value>,
}

/// Runs one scenario file.
pub fn run_file(file: &Path, default_rules: &Path) -> Outcome {
    run_file_traced(file, default_rules).0
}

/// Runs one scenario file, and says what it did.
pub fn run_file_traced(file: &Path, default_rules: &Path) -> (Outcome, Trace) {
    run_file_observing(file, default_rules, false)
}

/// Runs one scenario file with the execution and related objects observed as the controller's
/// caches keep them (`projected`) or whole, and says what it did.
pub fn run_file_observing(file: &Path, default_rules: &Path, projected: bool) -> (Outcome, Trace) {
    let mut trace = Trace::default();
    let mut out = Outcome {
        name: file.display().to_string(),
        file: file.to_path_buf(),
        failures: Vec::new(),
    };
    let scenario: Scenario = match crate::rules::read_limited(file).and_then(|t| {
        // a rules file given as a scenario: say so, not "unknown field `version`"
        match crate::rules::kind::not_scenario_hint(&t, &file.display().to_string()) {
            Some(hint) => Err(hint),
            None => serde_yaml::from_str(&t).map_err(|e| e.to_string()),
        }
    }) {
        Ok(s) => s,
        Err(e) => {
            out.failures.push(format!("cannot read scenario: {e}"));
            return (out, trace);
        }
    };
    out.name = scenario.name.clone();
    if let Err(e) = run(&scenario, file, default_rules, projected, &mut trace) {
        out.failures.push(e);
    }
    (out, trace)
}

fn run(
    s: &Scenario,
    file: &Path,
    default_rules: &Path,
    projected: bool,
    trace: &mut Trace,
) -> Result<(), String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let rules_path = s
        .rules
        .as_ref()
        .map_or(default_rules.to_path_buf(), |r| dir.join(r));
    let overrides: Vec<(String, String)> = s
        .settings
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            )
        })
        .collect();
    let rules = Rules::load(&rules_path, &overrides).map_err(|e| format!("rules: {e}"))?;
    let mut resource = match (&s.resource, &s.resource_file) {
        (Some(r), None) => r.clone(),
        (None, Some(f)) => crate::offline::read_object(&dir.join(f))?,
        _ => return Err("give exactly one of `resource` and `resourceFile`".into()),
    };
    if let Some(p) = &s.resource_patch {
        crate::engine::status::apply_merge_patch(&mut resource, p);
    }
    let start = match &s.start {
        Some(t) => crate::time::parse_secs(t).ok_or(format!("start: `{t}` is not RFC 3339"))?,
        None => crate::time::parse_secs("2026-01-01T00:00:00Z").unwrap_or_default(),
    };
    let mut world = World::new(&rules, resource, start);
    world.projected = projected;
    for o in &s.objects {
        world.put(o.clone())?;
    }
    let mut result = Ok(());
    for (i, step) in s.steps.iter().enumerate() {
        let label = match &step.name {
            Some(n) => format!("step {} ({n})", i + 1),
            None => format!("step {}", i + 1),
        };
        result = run_step(&rules, &mut world, step).map_err(|e| format!("{label}: {e}"));
        if result.is_err() {
            break;
        }
    }
    trace.effects = world
        .effects
        .iter()
        .map(|(at, e)| json!({"at": at - start, "effect": e}))
        .collect();
    trace.status = world.status();
    trace.decisions = world
        .decisions
        .iter()
        .map(|(at, d)| json!({"at": at - start, "decision": d}))
        .collect();
    result
}

fn run_step(rules: &Rules, world: &mut World<'_>, step: &Step) -> Result<(), String> {
    if let Some(d) = &step.advance {
        world.advance(crate::time::parse_duration(d)?);
    }
    for o in &step.put {
        world.put(o.clone())?;
    }
    if let Some(p) = &step.patch_resource {
        world.patch_resource(p)?;
    }
    if let Some(p) = &step.patch_execution {
        let key = world
            .execution_key()
            .ok_or("no execution object to patch")?;
        let obj = world
            .objects
            .get_mut(&key)
            .ok_or("the execution object does not exist")?;
        crate::engine::status::apply_merge_patch(obj, p);
        world.remove_finalized();
    }
    if step.delete_execution && !world.delete_execution() {
        return Err("deleteExecution: the execution object does not exist".into());
    }
    for (name, p) in &step.patch_children {
        let key = world.child_key(name)?;
        let obj = world
            .objects
            .get_mut(&key)
            .ok_or(format!("patchChildren: child `{name}` does not exist"))?;
        crate::engine::status::apply_merge_patch(obj, p);
        world.remove_finalized();
    }
    for name in &step.delete_children {
        let key = world.child_key(name)?;
        if !world.delete_object(&key) {
            return Err(format!("deleteChildren: child `{name}` does not exist"));
        }
    }
    if let Some(f) = &step.fail_next {
        world.fail_next.insert(
            f.action.clone(),
            crate::engine::ActionError {
                child: None,
                action: f.action.clone(),
                code: f.code,
                reason: f.reason.clone(),
                message: f.message.clone(),
            },
        );
    }
    let sim = rules.simulation.as_ref();
    if step.started {
        let change = sim
            .and_then(|s| s.started.clone())
            .ok_or("the rules' simulation has no `started`")?;
        world.apply_change(
            &change,
            &json!({"name": "started", "reason": "", "message": ""}),
        )?;
    }
    if let Some(o) = &step.outcome {
        let mut parts = o.splitn(3, ':');
        let name = parts.next().unwrap_or_default();
        let outcome = json!({"name": name, "reason": parts.next().unwrap_or(""), "message": parts.next().unwrap_or("")});
        if name == "deleted" {
            world.delete_execution();
        } else {
            let change = sim
                .and_then(|s| {
                    s.outcomes
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, c)| c.clone())
                })
                .ok_or(format!("the rules' simulation has no outcome `{name}`"))?;
            world.apply_change(&change, &outcome)?;
        }
    }
    if step.delete_resource {
        world.delete_resource();
    }
    let effects_before = world.effects.len();
    let decisions_before = world.decisions.len();
    let requeue = if step.reconcile {
        world.reconcile()?
    } else {
        None
    };
    let Some(expect) = &step.expect else {
        return Ok(());
    };
    let effects: Vec<&Effect> = world.effects[effects_before..]
        .iter()
        .map(|(_, e)| e)
        .collect();
    let mut problems = Vec::new();
    let resource = world.resource.clone().unwrap_or(Value::Null);
    if let Some(want) = expect.resource_exists
        && want != world.resource.is_some()
    {
        problems.push(format!(
            "expected the resource to {}",
            if want { "exist" } else { "be gone" }
        ));
    }
    if let Some(phase) = &expect.phase {
        let got = resource
            .pointer(&format!("/status/{}", rules.resource.status.phase))
            .and_then(Value::as_str)
            .unwrap_or("");
        if got != phase {
            problems.push(format!("expected phase {phase}, got `{got}`"));
        }
    }
    for (path, want) in &expect.resource {
        check_path(&resource, path, want, "resource", &mut problems);
    }
    for path in &expect.absent {
        let p = JPath::relative(path).map_err(|e| e.to_string())?;
        if let Some(v) = p.first(&resource) {
            problems.push(format!("expected {path} to be absent, found {v}"));
        }
    }
    let execution = world.execution().cloned();
    if let Some(want) = expect.execution_exists
        && want != execution.is_some()
    {
        problems.push(format!(
            "expected the execution object to {}",
            if want { "exist" } else { "be absent" }
        ));
    }
    let ex = execution.unwrap_or(Value::Null);
    for (path, want) in &expect.execution {
        check_path(&ex, path, want, "execution", &mut problems);
    }
    for (name, want) in &expect.children_exist {
        let key = world.child_key(name)?;
        if *want != world.objects.contains_key(&key) {
            problems.push(format!(
                "expected child `{name}` to {}",
                if *want { "exist" } else { "be absent" }
            ));
        }
    }
    for (name, paths) in &expect.children {
        let key = world.child_key(name)?;
        let child = world.objects.get(&key).cloned().unwrap_or(Value::Null);
        for (path, want) in paths {
            check_path(&child, path, want, &format!("child {name}"), &mut problems);
        }
    }
    if let Some(want) = &expect.events {
        let got: Vec<Value> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Event(ev) => serde_json::to_value(ev).ok(),
                _ => None,
            })
            .collect();
        compare_list("events", want, &got, &mut problems);
    }
    if let Some(want) = &expect.metrics {
        let got: Vec<Value> = effects.iter().filter_map(|e| match e {
            Effect::Metric(m) => Some(json!({"name": m.name, "labels": m.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(), "value": m.value})),
            _ => None,
        }).collect();
        compare_list("metrics", want, &got, &mut problems);
    }
    if let Some(want) = &expect.audit {
        let got: Vec<&Value> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Audit { record } => Some(record),
                _ => None,
            })
            .collect();
        if got.len() != want.len() {
            problems.push(format!(
                "expected {} audit record(s), got {}: {}",
                want.len(),
                got.len(),
                serde_json::to_string(&got).unwrap_or_default()
            ));
        } else {
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                for (path, value) in w {
                    check_path(g, path, value, &format!("audit[{i}]"), &mut problems);
                }
            }
        }
    }
    if let Some(want) = &expect.effects {
        let got: Vec<String> = effects.iter().map(|e| effect_name(e).to_string()).collect();
        if &got != want {
            problems.push(format!("expected effects {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &expect.requeue_after {
        let got = requeue;
        let ok = match want.as_str() {
            "none" => got.is_none(),
            d => {
                let w = crate::time::parse_duration(d)?;
                got.is_some_and(|g| (g - w).abs() < 0.001)
            }
        };
        if !ok {
            problems.push(format!(
                "expected requeue after {want}, got {}",
                got.map_or("none".into(), crate::time::go_duration)
            ));
        }
    }
    let errors: Vec<&str> = world.decisions[decisions_before..]
        .iter()
        .filter_map(|(_, d)| d.error.as_ref().map(|e| e.category.as_str()))
        .collect();
    match (&expect.error, errors.first()) {
        (Some(want), Some(got)) if want == got => {}
        (Some(want), got) => problems.push(format!(
            "expected a {want} error, got {}",
            got.unwrap_or(&"none")
        )),
        (None, Some(_)) => {
            let msgs: Vec<String> = world.decisions[decisions_before..]
                .iter()
                .filter_map(|(_, d)| d.error.as_ref().map(|e| e.to_string()))
                .collect();
            problems.push(format!("unexpected rules error: {}", msgs.join("; ")));
        }
        (None, None) => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn effect_name(e: &Effect) -> &'static str {
    match e {
        Effect::AddFinalizer { .. } => "addFinalizer",
        Effect::CreateExecution { .. } => "createExecution",
        Effect::DeleteExecution { .. } => "deleteExecution",
        Effect::PatchExecution { .. } => "patchExecution",
        Effect::CreateChild { .. } => "createChild",
        Effect::DeleteChild { .. } => "deleteChild",
        Effect::PatchChild { .. } => "patchChild",
        Effect::PatchStatus { .. } => "patchStatus",
        Effect::Event(_) => "event",
        Effect::Audit { .. } => "audit",
        Effect::Metric(_) => "metric",
        Effect::RemoveFinalizer { .. } => "removeFinalizer",
    }
}

fn check_path(doc: &Value, path: &str, want: &Value, what: &str, problems: &mut Vec<String>) {
    let p = match JPath::relative(path) {
        Ok(p) => p,
        Err(e) => {
            problems.push(e.to_string());
            return;
        }
    };
    match p.first(doc) {
        Some(got) if values_match(got, want) => {}
        Some(got) => problems.push(format!("{what} {path}: expected {want}, got {got}")),
        None => problems.push(format!("{what} {path}: expected {want}, found nothing")),
    }
}

/// `want` matches `got` when equal, or (objects) when every field of `want` matches.
fn values_match(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| g.get(k).is_some_and(|gv| values_match(gv, wv))),
        (Value::Array(g), Value::Array(w)) => {
            g.len() == w.len() && g.iter().zip(w).all(|(a, b)| values_match(a, b))
        }
        _ => loose_eq(got, want),
    }
}

fn compare_list(what: &str, want: &[Value], got: &[Value], problems: &mut Vec<String>) {
    if want.len() != got.len() || !want.iter().zip(got).all(|(w, g)| values_match(g, w)) {
        problems.push(format!(
            "expected {what} {}, got {}",
            serde_json::to_string(want).unwrap_or_default(),
            serde_json::to_string(got).unwrap_or_default()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_lifecycle_scenarios_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let files = collect(&[root.join("tests/lifecycle")]).expect("scenarios exist");
        let mut failures = Vec::new();
        for f in &files {
            let o = run_file(f, &root.join("lifecycle.yaml"));
            if !o.failures.is_empty() {
                failures.push(format!(
                    "{} ({}): {}",
                    o.name,
                    f.display(),
                    o.failures.join("; ")
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} scenarios failed:\n{}",
            failures.len(),
            files.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn values_match_partially_for_objects_only() {
        assert!(values_match(&json!({"a": 1, "b": 2}), &json!({"a": 1})));
        assert!(!values_match(&json!({"a": 1}), &json!({"a": 2})));
        assert!(!values_match(&json!([1, 2]), &json!([1])));
        assert!(values_match(&json!("1"), &json!(1)));
    }
}
