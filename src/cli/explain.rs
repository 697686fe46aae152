//! `lifecycle explain`: why a resource is in its phase and what the engine does next, for a
//! resource in the cluster or from files. Text (like `kubectl describe`) or JSON.

use super::Format;
use crate::engine::explain::{Explanation, Test, explain};
use crate::offline::out;
use crate::rules::Rules;
use serde_json::{Value, json};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the resource comes from.
pub struct Source {
    /// `NAME` or `KIND/NAME` of a resource in the cluster.
    pub name: Option<String>,
    /// Its namespace.
    pub namespace: Option<String>,
    /// Kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    pub context: Option<String>,
    /// The resource, from a file.
    pub resource: Option<PathBuf>,
    /// Objects around it, from files.
    pub objects: Vec<PathBuf>,
    /// The time to decide at (RFC 3339; default: now).
    pub now: Option<String>,
}

/// The current time, or `--now`.
pub fn now(at: Option<&str>) -> Result<f64, String> {
    match at {
        Some(t) => crate::time::parse_secs(t)
            .ok_or_else(|| format!("--now: `{t}` is not an RFC 3339 timestamp")),
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64().floor())
            .unwrap_or_default()),
    }
}

/// Splits `KIND/NAME` (the kind must be the rules' kind, any case, singular or plural) or
/// `NAME`.
pub fn resource_name(rules: &Rules, arg: &str) -> Result<String, String> {
    let Some((kind, name)) = arg.split_once('/') else {
        return Ok(arg.to_string());
    };
    let k = kind.to_lowercase();
    let ours = rules.resource.kind.to_lowercase();
    let short = k.split('.').next().unwrap_or_default();
    if short == ours || short == format!("{ours}s") {
        Ok(name.to_string())
    } else {
        Err(format!(
            "`{kind}` is not the kind these rules govern ({})",
            rules.resource.kind
        ))
    }
}

/// Runs `lifecycle explain`.
pub fn main(
    rules_file: &Path,
    set: &[(String, String)],
    source: Source,
    format: Format,
) -> ExitCode {
    let rules = match super::load(rules_file, set) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let now = match now(source.now.as_deref()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let observed = match (&source.resource, &source.name) {
        (Some(file), None) => from_files(&rules, file, &source.objects, now),
        (None, Some(name)) => from_cluster(&rules, &source, name, now),
        _ => Err("give a resource in the cluster (NAME or KIND/NAME, with -n NAMESPACE) or --resource FILE".into()),
    };
    let (label, obs) = match observed {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let e = explain(&rules, &obs, now);
    match format {
        Format::Text => out(&text(&rules, &label, now, &e)),
        Format::Json => out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({
                "resource": label,
                "rules": rules.file.display().to_string(),
                "now": crate::time::format_secs(now),
                "explanation": e,
            }))
            .unwrap_or_default()
        )),
    }
    ExitCode::SUCCESS
}

fn from_files(
    rules: &Rules,
    file: &Path,
    objects: &[PathBuf],
    now: f64,
) -> Result<(String, crate::engine::Observation), String> {
    let resource = crate::offline::read_object(file)?;
    let mut all = Vec::new();
    for f in objects {
        all.extend(crate::offline::observe::read_objects(f)?);
    }
    let label = label(rules, &resource);
    Ok((
        label,
        crate::offline::observe::observation(rules, resource, &all, now),
    ))
}

fn from_cluster(
    rules: &Rules,
    source: &Source,
    name: &str,
    now: f64,
) -> Result<(String, crate::engine::Observation), String> {
    let name = resource_name(rules, name)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut cluster = crate::runtime::inspect::Cluster::connect(
            source.kubeconfig.as_deref(),
            source.context.as_deref(),
        )
        .await?;
        let ns = source.namespace.as_deref().unwrap_or("default");
        let resource = cluster
            .resource(rules, ns, &name)
            .await?
            .ok_or_else(|| format!("{} {ns}/{name} not found", rules.resource.kind))?;
        let label = label(rules, &resource);
        Ok((label, cluster.observe(rules, resource, now).await?))
    })
}

/// `Kind namespace/name`.
pub fn label(rules: &Rules, resource: &Value) -> String {
    let meta = |k: &str| {
        resource
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    format!(
        "{} {}/{}",
        rules.resource.kind,
        meta("namespace"),
        meta("name")
    )
}

/// The explanation as text, like `kubectl describe`.
pub fn text(rules: &Rules, label: &str, now: f64, e: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Resource:    {label}");
    let _ = writeln!(
        s,
        "Rules:       {} (revision {})",
        rules.file.display(),
        e.revision
    );
    match &e.recorded_revision {
        Some(r) if *r != e.revision => {
            let _ = writeln!(s, "Recorded:    revision {r} (last written by other rules)");
        }
        Some(r) => {
            let _ = writeln!(s, "Recorded:    revision {r}");
        }
        None => {}
    }
    if let Some(p) = &e.pinned_to {
        let _ = writeln!(
            s,
            "Rollout:     pinned to revision {p}: the controller decides it by that revision while it is loaded (explained here with {})",
            e.revision
        );
    }
    let _ = writeln!(s, "Now:         {}", crate::time::format_secs(now));
    let mut phase = e.phase.clone();
    if let Some(r) = &e.recorded_phase
        && e.phase_known
    {
        phase.push_str(&format!(" (status says {r}, mapped by renamedPhases)"));
    }
    if !e.phase_known {
        phase.push_str(" (UNKNOWN to these rules)");
    } else if e.terminal {
        phase.push_str(" (terminal)");
    }
    let _ = writeln!(s, "Phase:       {phase}");
    if e.deleting {
        let _ = writeln!(
            s,
            "Deleting:    yes (onDelete runs, then the finalizer is removed)"
        );
    }
    let object = |ex: &crate::engine::explain::ExecutionView| {
        let what = match (&ex.key, &ex.key_error) {
            (Some(k), _) => format!("{} {}/{}", k.kind, k.namespace, k.name),
            (None, Some(err)) => format!("cannot be named: {err}"),
            (None, None) => "-".into(),
        };
        let state = match (ex.exists, ex.owned) {
            (false, _) => "does not exist",
            (true, true) => "exists, ours",
            (true, false) => "exists, NOT ours",
        };
        format!("{what} ({state})")
    };
    let _ = writeln!(s, "Execution:   {}", object(&e.execution));
    for (name, child) in &e.children {
        let _ = writeln!(s, "Child {name}: {}", object(child));
    }
    if let Some(err) = &e.error {
        let _ = writeln!(
            s,
            "Error:       {} failed: {} {}: {}",
            err.action, err.code, err.reason, err.message
        );
    }
    if e.validates {
        let v = match &e.validation {
            None => "all rules pass".to_string(),
            Some(v) => match (v.get("rule"), v.get("message"), v.get("error")) {
                (Some(r), Some(m), _) => format!("rule {} fails: {}", plain(r), plain(m)),
                (_, _, Some(err)) => format!("cannot be evaluated: {}", plain(err)),
                _ => v.to_string(),
            },
        };
        let _ = writeln!(s, "Validation:  {v}");
    }
    if e.phase_known && !e.terminal {
        let _ = writeln!(
            s,
            "\nTransitions of {} (tried in order; the first that holds is taken):",
            e.phase
        );
        if e.transitions.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for (i, t) in e.transitions.iter().enumerate() {
            let mark = if t.chosen { "=>" } else { "  " };
            let create = if t.creates {
                " [execution: create]"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "{mark}{}. {} -> {}{create}: {}",
                i + 1,
                t.name,
                t.to,
                t.note
            );
            match &t.guard {
                Some(g) => test_text(&mut s, g, 6),
                None => {
                    let _ = writeln!(s, "      (no guard: always holds)");
                }
            }
        }
    }
    if let Some(c) = &e.cooldown {
        let _ = writeln!(s, "\nCooldown:");
        let _ = writeln!(
            s,
            "  Since:     {}",
            c.since.as_deref().unwrap_or("(not stamped yet: now)")
        );
        if let Some(p) = c.period {
            let _ = writeln!(s, "  Period:    {}", crate::time::go_duration(p));
        }
        if let Some(d) = &c.due {
            let _ = writeln!(s, "  Ends:      {d}");
        }
        let _ = writeln!(s, "  Released:  {}", if c.released { "yes" } else { "no" });
        if let Some(g) = &c.guard {
            let _ = writeln!(s, "  Applies when:");
            test_text(&mut s, g, 4);
        }
    }
    if e.sync || e.poll.is_some() {
        let _ = writeln!(s);
    }
    if e.sync {
        let _ = writeln!(
            s,
            "Sync:        the phase's sync block runs on every decision"
        );
    }
    if let Some(p) = &e.poll {
        let _ = writeln!(s, "Poll:        every {p}");
    }
    if !e.values.is_empty() {
        let _ = writeln!(s, "\nValues:");
        let width = e.values.iter().map(|v| v.name.len()).max().unwrap_or(0);
        for v in &e.values {
            let shown = match &v.error {
                Some(err) => format!("(cannot be computed now: {err})"),
                None => clip(&v.value.to_string(), 100),
            };
            let _ = writeln!(s, "  {:width$}  {shown}", v.name);
        }
    }
    let d = &e.decision;
    let _ = writeln!(s, "\nDecision now:");
    if let Some(err) = &d.error {
        let _ = writeln!(s, "  Rules error: {err}");
    }
    if !d.needs.is_empty() {
        let _ = writeln!(
            s,
            "  Needs:       related lists {} first",
            d.needs.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "  Transition:  {}",
        d.transition.as_deref().unwrap_or("none")
    );
    let _ = writeln!(s, "  Phase after: {}", d.phase);
    if d.effects.is_empty() {
        let _ = writeln!(s, "  Effects:     none (nothing to do)");
    } else {
        let _ = writeln!(s, "  Effects:");
        for eff in &d.effects {
            let _ = writeln!(s, "    - {eff}");
        }
    }
    let next = match (&d.next_look, d.requeue_after) {
        (Some(at), Some(0.0)) => format!("{at} (at once: the next decision follows)"),
        (Some(at), Some(r)) => format!("{at} (in {})", crate::time::go_duration(r)),
        _ => "on the next change of the resource or its execution object".into(),
    };
    let _ = writeln!(s, "  Next look:   {next}");
    s
}

fn test_text(s: &mut String, t: &Test, indent: usize) {
    let pad = " ".repeat(indent);
    let value = match (t.holds, &t.error) {
        (_, Some(err)) => format!("ERROR {err}"),
        (Some(true), _) => "true".into(),
        (Some(false), _) => "false".into(),
        (None, None) => "?".into(),
    };
    let against = t.against.as_ref().map(|a| clip(&a.to_string(), 80));
    let head = match (t.test.as_str(), &t.subject, against) {
        ("equals", Some(sub), Some(a)) => format!("{sub} == {a}"),
        ("in", Some(sub), Some(a)) => format!("{sub} in {a}"),
        ("matches", Some(sub), Some(a)) => format!("{sub} matches {a}"),
        ("elapsed", Some(sub), Some(a)) => format!("elapsed since {sub} >= {a}"),
        ("elapsed", Some(sub), None) => format!("elapsed since {sub}"),
        ("expr", Some(sub), _) => format!("expr {}", clip(sub.trim(), 100)),
        (name, Some(sub), _) => format!("{name} {sub}"),
        (name, None, _) => format!("{name}:"),
    };
    let head = head.trim_end_matches(':').to_string();
    let _ = writeln!(s, "{pad}{head}: {value}");
    for (what, v) in &t.read {
        let _ = writeln!(s, "{pad}  read {what} = {}", clip(&v.to_string(), 100));
    }
    for sub in &t.of {
        test_text(s, sub, indent + 2);
    }
}

fn plain(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    format!("{}…", s.chars().take(max).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::simulate::World;

    fn rules() -> Rules {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Rules::load(&root.join("lifecycle.yaml"), &[]).expect("default rules load")
    }

    fn example() -> Value {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        crate::offline::read_object(&root.join("examples/workflowexecution.yaml")).unwrap()
    }

    /// The world after creation and the simulation's `started`, reconciled.
    fn running(rules: &Rules) -> World<'_> {
        let start = crate::time::parse_secs("2026-01-01T00:00:00Z").unwrap();
        let mut w = World::new(rules, example(), start);
        w.reconcile().unwrap();
        w.advance(1.0);
        let started = rules.simulation.as_ref().unwrap().started.clone().unwrap();
        w.apply_change(
            &started,
            &json!({"name": "started", "reason": "", "message": ""}),
        )
        .unwrap();
        w.reconcile().unwrap();
        w
    }

    fn observe(w: &World<'_>, rules: &Rules) -> crate::engine::Observation {
        let objects: Vec<Value> = w.objects.values().cloned().collect();
        crate::offline::observe::observation(rules, w.resource.clone().unwrap(), &objects, w.now)
    }

    #[test]
    fn a_running_resource_waits_with_every_guard_false_and_looks_again_at_the_poll() {
        let rules = rules();
        let mut w = running(&rules);
        w.advance(3.0);
        let e = explain(&rules, &observe(&w, &rules), w.now);
        assert_eq!(e.phase, "Running");
        assert_eq!(e.revision, rules.revision);
        assert_eq!(
            e.recorded_revision.as_deref(),
            Some(rules.revision.as_str())
        );
        assert!(e.execution.exists && e.execution.owned);
        let names: Vec<&str> = e.transitions.iter().map(|t| t.name.as_str()).collect();
        let phase = &rules.phases[rules.phase_index("Running").unwrap()];
        let want: Vec<&str> = phase.transitions.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, want);
        assert!(
            e.transitions
                .iter()
                .all(|t| t.holds == Some(false) && !t.chosen),
            "{:#?}",
            e.transitions
        );
        assert_eq!(e.decision.transition, None);
        assert_eq!(e.decision.requeue_after, Some(10.0));
        assert_eq!(
            e.decision.next_look.as_deref(),
            Some("2026-01-01T00:00:14Z")
        );
        let run_status = e.values.iter().find(|v| v.name == "runStatus").unwrap();
        assert_eq!(run_status.value, json!("Unknown"));
        // the `succeeded` guard reads the value it compares
        let succeeded = e
            .transitions
            .iter()
            .find(|t| t.name == "succeeded")
            .unwrap();
        let text = serde_json::to_string(&succeeded.guard).unwrap();
        assert!(text.contains("\"Unknown\""), "{text}");
    }

    #[test]
    fn the_transition_shown_as_chosen_is_the_one_the_decision_takes() {
        let rules = rules();
        for outcome in ["succeeded", "failed"] {
            let mut w = running(&rules);
            w.advance(30.0);
            let change = rules
                .simulation
                .as_ref()
                .unwrap()
                .outcomes
                .iter()
                .find(|(n, _)| n == outcome)
                .unwrap()
                .1
                .clone();
            w.apply_change(
                &change,
                &json!({"name": outcome, "reason": "", "message": ""}),
            )
            .unwrap();
            let e = explain(&rules, &observe(&w, &rules), w.now);
            let chosen: Vec<&str> = e
                .transitions
                .iter()
                .filter(|t| t.chosen)
                .map(|t| t.name.as_str())
                .collect();
            assert_eq!(chosen, vec![outcome]);
            assert_eq!(e.decision.transition.as_deref(), Some(outcome));
            assert_eq!(e.decision.requeue_after, Some(0.0));
            let out = text(&rules, "x", w.now, &e);
            assert!(
                out.contains("=>") && out.contains(&format!(". {outcome} -> ")),
                "{out}"
            );
        }
    }

    #[test]
    fn a_fresh_resource_creates_its_execution_object_and_a_terminal_one_shows_its_cooldown() {
        let rules = rules();
        let start = crate::time::parse_secs("2026-01-01T00:00:00Z").unwrap();
        let obs = crate::offline::observe::observation(&rules, example(), &[], start);
        let e = explain(&rules, &obs, start);
        assert_eq!(e.phase, "Pending");
        let chosen: Vec<_> = e.transitions.iter().filter(|t| t.chosen).collect();
        assert_eq!(chosen.len(), 1);
        assert!(chosen[0].creates, "{chosen:#?}");
        assert!(
            e.decision
                .effects
                .iter()
                .any(|x| x.starts_with("the create of"))
        );

        // through to Completed: the cooldown counts from completionTime
        let mut w = running(&rules);
        w.advance(30.0);
        let change = rules.simulation.as_ref().unwrap().outcomes[0].1.clone();
        w.apply_change(
            &change,
            &json!({"name": "succeeded", "reason": "", "message": ""}),
        )
        .unwrap();
        w.reconcile().unwrap();
        w.advance(60.0);
        let e = explain(&rules, &observe(&w, &rules), w.now);
        assert!(e.terminal && e.transitions.is_empty());
        let c = e.cooldown.expect("a cooldown");
        let since = c.since.clone().expect("stamped");
        let due = crate::time::parse_secs(&since).unwrap() + 300.0;
        assert_eq!(
            c.due.as_deref(),
            Some(crate::time::format_secs(due).as_str())
        );
        assert!(!c.released);
        assert_eq!(e.decision.requeue_after, Some(due - w.now));
    }

    #[test]
    fn kind_slash_name_must_name_the_governed_kind() {
        let rules = rules();
        assert_eq!(resource_name(&rules, "wf-1").unwrap(), "wf-1");
        assert_eq!(
            resource_name(&rules, "workflowexecution/wf-1").unwrap(),
            "wf-1"
        );
        assert_eq!(
            resource_name(&rules, "WorkflowExecutions.kubernaut.ai/wf-1").unwrap(),
            "wf-1"
        );
        assert!(
            resource_name(&rules, "pod/wf-1")
                .unwrap_err()
                .contains("not the kind")
        );
    }
}
