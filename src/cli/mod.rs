//! The command line: `run`, `check`, `schema`, `graph`, `render`, `simulate`, `test`, `explain`,
//! `diff`.
//!
//! Each command parses its arguments into settings, calls the library, and prints. Exit codes:
//! 0 success, 1 the input is wrong (invalid rules, failing tests), 2 the input is unusable
//! (a file that cannot be read, bad arguments). The offline commands write their output through
//! [`out`]: when stdout is closed (`lifecycle simulate | head`) they stop quietly with
//! [`crate::offline::EXIT_OUTPUT_CLOSED`], as a program ended by SIGPIPE would.

mod crd_files;
mod diff;
mod explain;

use crate::engine::Effect;
use crate::offline::{out, simulate};
use crate::rules::{LoadError, Rules};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// lifecycle: a Kubernetes controller whose behaviour lives in a rules file.
#[derive(Parser, Debug)]
#[command(name = "lifecycle", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller against a cluster.
    Run(Box<crate::runtime::controller::RunArgs>),
    /// Check a rules file; exit 0 when valid, 1 when invalid, 2 when unreadable.
    Check {
        /// The rules file.
        #[arg(default_value = "lifecycle.yaml")]
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Override a setting (NAME=VALUE), as a deployment would.
        #[arg(long = "set", value_parser = crate::rules::parse_setting)]
        set: Vec<(String, String)>,
        /// CRD file(s) (YAML, several documents allowed) to check the status the rules write
        /// against. Default: the CRDs in `deploy/crds/` next to the rules file or in a folder
        /// above it, when one of them defines the governed kind.
        #[arg(long = "crd")]
        crd: Vec<PathBuf>,
        /// Do not check against any CRD, not even those found in `deploy/crds/`.
        #[arg(long = "no-crd", conflicts_with = "crd")]
        no_crd: bool,
    },
    /// Print the JSON Schema of the rules file.
    Schema,
    /// Print the phase graph (Mermaid, or Graphviz dot).
    Graph {
        /// The rules file.
        #[arg(default_value = "lifecycle.yaml")]
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Print the objects the rules would create for a resource, or the validation
    /// failure they would record.
    Render {
        /// The resource (YAML).
        #[arg(long)]
        resource: PathBuf,
        /// The rules file.
        #[arg(long, default_value = "lifecycle.yaml")]
        rules: PathBuf,
        /// Override a setting (NAME=VALUE).
        #[arg(long = "set", value_parser = crate::rules::parse_setting)]
        set: Vec<(String, String)>,
    },
    /// Run a whole lifecycle over a virtual clock and print the timeline.
    Simulate {
        /// The resource (YAML).
        #[arg(long, default_value = "examples/workflowexecution.yaml")]
        resource: PathBuf,
        /// The rules file.
        #[arg(long, default_value = "lifecycle.yaml")]
        rules: PathBuf,
        /// How the execution object ends: an outcome of the rules' simulation block
        /// (e.g. `succeeded`, `failed:REASON:MESSAGE`), or `deleted`. Repeat it for the
        /// objects of later attempts (a retry's); the last one given repeats.
        #[arg(long, default_values_t = ["succeeded".to_string()])]
        outcome: Vec<String>,
        /// Time from the execution object's creation to its outcome.
        #[arg(long, default_value = "45s", value_parser = crate::time::parse_duration)]
        after: f64,
        /// Stop after this much virtual time.
        #[arg(long, default_value = "24h", value_parser = crate::time::parse_duration)]
        limit: f64,
        /// Virtual start time (RFC 3339).
        #[arg(long, default_value = "2026-01-01T00:00:00Z")]
        start: String,
        /// An object (YAML) that exists from the start, for lookups: another resource of the
        /// governed kind, a ConfigMap… (repeatable).
        #[arg(long = "object")]
        objects: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Override a setting (NAME=VALUE).
        #[arg(long = "set", value_parser = crate::rules::parse_setting)]
        set: Vec<(String, String)>,
    },
    /// Run rule-file scenarios (YAML files or folders of them); prints `N passed, N failed`.
    Test {
        /// Scenario files or folders.
        #[arg(default_value = "tests/lifecycle")]
        paths: Vec<PathBuf>,
        /// Rules file for scenarios that do not name one.
        #[arg(long, default_value = "lifecycle.yaml")]
        rules: PathBuf,
        /// Print every scenario, not only failures.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Explain a resource: its phase, every guard of the phase with what it read, the values,
    /// and the decision the engine would take now.
    Explain {
        /// The resource in the cluster: NAME or KIND/NAME (the kind the rules govern).
        name: Option<String>,
        /// Its namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Kubeconfig context.
        #[arg(long)]
        context: Option<String>,
        /// The resource from a file instead (YAML), with its status.
        #[arg(long, conflicts_with_all = ["name", "kubeconfig", "context"])]
        resource: Option<PathBuf>,
        /// Objects around a --resource (its execution object, related objects): YAML files,
        /// several documents or a List each.
        #[arg(long = "objects", requires = "resource")]
        objects: Vec<PathBuf>,
        /// Decide at this time (RFC 3339; default: now).
        #[arg(long)]
        now: Option<String>,
        /// The rules file.
        #[arg(long, default_value = "lifecycle.yaml")]
        rules: PathBuf,
        /// Override a setting (NAME=VALUE), as the deployment does.
        #[arg(long = "set", value_parser = crate::rules::parse_setting)]
        set: Vec<(String, String)>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// What changed between two rules files, and its impact: scenarios whose result differs,
    /// live resources whose next decision differs. Exit 0 no change, 1 changes.
    Diff {
        /// The rules running now.
        old: PathBuf,
        /// The proposed rules.
        new: PathBuf,
        /// Scenario files or folders to run against both.
        #[arg(long = "scenarios")]
        scenarios: Vec<PathBuf>,
        /// Decide every live resource under both (with the default kubeconfig; implied by
        /// --kubeconfig and --context).
        #[arg(long)]
        live: bool,
        /// Kubeconfig file.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Kubeconfig context.
        #[arg(long)]
        context: Option<String>,
        /// Only the live resources of this namespace (default: all namespaces).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Decide at this time (RFC 3339; default: now).
        #[arg(long)]
        now: Option<String>,
        /// Override a setting of both (NAME=VALUE), as the deployment does.
        #[arg(long = "set", value_parser = crate::rules::parse_setting)]
        set: Vec<(String, String)>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Format {
    Text,
    Json,
}

/// Format of `lifecycle graph`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum GraphFormat {
    /// Mermaid state diagram.
    Mermaid,
    /// Graphviz dot.
    Dot,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => crate::runtime::controller::main(*args),
        Command::Check {
            file,
            format,
            set,
            crd,
            no_crd,
        } => check(&file, format, &set, &crd, no_crd),
        Command::Schema => {
            out(&crate::rules::json_schema());
            ExitCode::SUCCESS
        }
        Command::Graph { file, format } => match load(&file, &[]) {
            Ok(rules) => {
                out(&graph(&rules, format));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Render {
            resource,
            rules,
            set,
        } => render(&resource, &rules, &set),
        Command::Simulate {
            resource,
            rules,
            outcome,
            after,
            limit,
            start,
            objects,
            format,
            set,
        } => simulate_cmd(
            &resource, &rules, &outcome, after, limit, &start, &objects, format, &set,
        ),
        Command::Test {
            paths,
            rules,
            verbose,
        } => crate::offline::scenario::main(&paths, &rules, verbose),
        Command::Diff {
            old,
            new,
            scenarios,
            live,
            kubeconfig,
            context,
            namespace,
            now,
            set,
            format,
        } => diff::main(
            &old,
            &new,
            &set,
            diff::Impact {
                scenarios,
                live,
                kubeconfig,
                context,
                namespace,
                now,
            },
            format,
        ),
        Command::Explain {
            name,
            namespace,
            kubeconfig,
            context,
            resource,
            objects,
            now,
            rules,
            set,
            format,
        } => explain::main(
            &rules,
            &set,
            explain::Source {
                name,
                namespace: Some(namespace),
                kubeconfig,
                context,
                resource,
                objects,
                now,
            },
            format,
        ),
    }
}

/// Loads rules, printing the report on failure and returning the exit code to use.
pub fn load(file: &Path, set: &[(String, String)]) -> Result<Rules, ExitCode> {
    Rules::load(file, set).map_err(|e| {
        eprintln!("{e}");
        match e {
            LoadError::Unusable { .. } => ExitCode::from(2),
            LoadError::Invalid(_) => ExitCode::from(1),
        }
    })
}

fn check(
    file: &Path,
    format: Format,
    set: &[(String, String)],
    crd: &[PathBuf],
    no_crd: bool,
) -> ExitCode {
    let (files, found) = if no_crd {
        (Vec::new(), false)
    } else if crd.is_empty() {
        (crd_files::default_crds(file), true)
    } else {
        (crd.to_vec(), false)
    };
    let mut checked_against = None;
    let result = Rules::load(file, set).and_then(|r| {
        if files.is_empty() {
            return Ok(r);
        }
        match crd_files::kind_schema(&files, &r.resource.api_version, &r.resource.kind) {
            Ok(Some(schema)) => {
                r.check_schema(&schema)?;
                checked_against = Some(schema.source);
                Ok(r)
            }
            // CRDs found by default that do not define this kind: nothing to check against
            Ok(None) if found => Ok(r),
            Ok(None) => Err(LoadError::Unusable {
                file: files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                message: format!(
                    "no CustomResourceDefinition of {} {} in the --crd files",
                    r.resource.api_version, r.resource.kind
                ),
            }),
            Err(e) => Err(e),
        }
    });
    match (format, result) {
        (Format::Text, Ok(r)) => {
            out(&format!(
                "{}: valid (revision {}; {} phases, {} transitions, {} values, {} validation rules{})\n",
                file.display(),
                r.revision,
                r.phases.len(),
                r.phases.iter().map(|p| p.transitions.len()).sum::<usize>(),
                r.values.len(),
                r.validation.len(),
                checked_against
                    .as_ref()
                    .map(|s| format!("; status checked against {s}"))
                    .unwrap_or_default()
            ));
            for a in access(&r) {
                let place = match &a.namespace {
                    Some(ns) => format!("in namespace {ns} (a Role there)"),
                    None => "in every namespace or cluster-wide (a ClusterRole rule)".into(),
                };
                out(&format!(
                    "  {} {} ({}): the controller needs {} {place}\n",
                    if a.verbs.contains(&"create") {
                        "creates"
                    } else {
                        "reads"
                    },
                    a.kind,
                    a.api_version,
                    a.verbs.join(", "),
                ));
            }
            for (api_version, kind) in lookup_kinds(&r) {
                out(&format!(
                    "  lookups read {kind} ({api_version}): the controller needs list and watch on them in every namespace (a ClusterRole rule)\n"
                ));
            }
            ExitCode::SUCCESS
        }
        (Format::Text, Err(e)) => {
            eprintln!("{e}");
            exit_for(&e)
        }
        (Format::Json, Ok(r)) => {
            out(&format!(
                "{}\n",
                json!({"file": file.display().to_string(), "valid": true, "revision": r.revision, "crd": checked_against, "rbac": rbac(&r), "problems": []})
            ));
            ExitCode::SUCCESS
        }
        (Format::Json, Err(e)) => {
            out(&format!(
                "{}\n",
                json!({"file": file.display().to_string(), "valid": false, "unusable": matches!(e, LoadError::Unusable { .. }), "problems": e.problems()})
            ));
            exit_for(&e)
        }
    }
}

fn exit_for(e: &LoadError) -> ExitCode {
    ExitCode::from(exit_code(e))
}

fn exit_code(e: &LoadError) -> u8 {
    match e {
        LoadError::Unusable { .. } => 2,
        LoadError::Invalid(_) => 1,
    }
}

/// The phase graph as Mermaid or dot text.
pub fn graph(rules: &Rules, format: GraphFormat) -> String {
    let mut out = String::new();
    let initial = &rules.phases[rules.initial].name;
    let edges: Vec<(String, String, String)> = rules
        .phases
        .iter()
        .flat_map(|p| {
            p.transitions.iter().map(move |t| {
                let to = rules
                    .phases
                    .get(t.to)
                    .map(|x| x.name.clone())
                    .unwrap_or_default();
                (p.name.clone(), to, t.name.clone())
            })
        })
        .collect();
    match format {
        GraphFormat::Mermaid => {
            out.push_str("stateDiagram-v2\n");
            out.push_str(&format!("    [*] --> {initial}\n"));
            for (from, to, name) in &edges {
                out.push_str(&format!("    {from} --> {to}: {name}\n"));
            }
            for p in rules.phases.iter().filter(|p| p.terminal) {
                out.push_str(&format!("    {} --> [*]\n", p.name));
            }
            if let Some(c) = &rules.cooldown {
                for &i in &c.phases {
                    out.push_str(&format!(
                        "    note right of {}: cooldown, then release ({})\n",
                        rules.phases[i].name, c.marker
                    ));
                }
            }
        }
        GraphFormat::Dot => {
            out.push_str("digraph lifecycle {\n  rankdir=LR;\n  start [shape=point];\n");
            for p in &rules.phases {
                let shape = if p.terminal { "doublecircle" } else { "circle" };
                out.push_str(&format!("  \"{}\" [shape={shape}];\n", p.name));
            }
            out.push_str(&format!("  start -> \"{initial}\";\n"));
            for (from, to, name) in &edges {
                out.push_str(&format!("  \"{from}\" -> \"{to}\" [label=\"{name}\"];\n"));
            }
            out.push_str("}\n");
        }
    }
    out
}

/// The kinds the rules look up, once each (`apiVersion`, `kind`).
fn lookup_kinds(rules: &Rules) -> Vec<(String, String)> {
    let mut kinds: Vec<(String, String)> = rules
        .lookups
        .iter()
        .map(|l| (l.api_version.clone(), l.kind.clone()))
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// The access the rules need to the kinds besides the governed one: the objects they create
/// (and delete or patch), the related objects they read, and their lookups, each with the one
/// namespace it is in or across every namespace: `[{apiVersion, kind, verbs, allNamespaces,
/// namespace?}]`.
fn rbac(rules: &Rules) -> Value {
    let mut out: Vec<Value> = access(rules)
        .into_iter()
        .map(|a| {
            let mut v = json!({"apiVersion": a.api_version, "kind": a.kind, "verbs": a.verbs, "allNamespaces": a.namespace.is_none()});
            if let Some(ns) = a.namespace {
                v["namespace"] = json!(ns);
            }
            v
        })
        .collect();
    for (api_version, kind) in lookup_kinds(rules) {
        out.push(json!({"apiVersion": api_version, "kind": kind, "verbs": ["list", "watch"], "allNamespaces": true}));
    }
    Value::Array(out)
}

/// Access to one kind of object the rules create or read.
struct Access {
    api_version: String,
    kind: String,
    verbs: Vec<&'static str>,
    /// The one namespace (none: every namespace, or cluster-scoped).
    namespace: Option<String>,
}

/// The execution object's kind (with the verbs the rules' actions use) and the related kinds.
fn access(rules: &Rules) -> Vec<Access> {
    use crate::rules::model::ExecutionAction;
    let mut actions: Vec<&crate::rules::ActionRules> = Vec::new();
    for p in &rules.phases {
        actions.extend(p.transitions.iter().map(|t| &t.action));
    }
    actions.extend(rules.cooldown.iter().map(|c| &c.release));
    actions.extend(rules.on_delete.iter());
    let deletes = actions
        .iter()
        .any(|a| a.execution == Some(ExecutionAction::Delete))
        || rules
            .phases
            .iter()
            .any(|p| p.transitions.iter().any(|t| t.retry.is_some()));
    let patches = actions.iter().any(|a| {
        a.patch
            .iter()
            .any(|(t, _)| *t == crate::rules::ChildRef::Lock)
    });
    let ex = &rules.execution;
    let mut verbs = vec!["get", "list", "watch", "create"];
    if deletes {
        verbs.push("delete");
    }
    if patches {
        verbs.push("patch");
    }
    let mut out = vec![Access {
        api_version: ex.api_version.clone(),
        kind: ex.kind.clone(),
        verbs,
        namespace: rules.fixed_execution_namespace(),
    }];
    let watched = rules.watched_kinds();
    for (i, c) in rules.children.iter().enumerate() {
        let mut verbs = vec!["get", "list", "watch", "create"];
        if actions.iter().any(|a| {
            a.children
                .iter()
                .any(|&(j, x)| j == i && x == ExecutionAction::Delete)
        }) {
            verbs.push("delete");
        }
        if actions.iter().any(|a| {
            a.patch
                .iter()
                .any(|(t, _)| *t == crate::rules::ChildRef::Child(i))
        }) {
            verbs.push("patch");
        }
        let (api_version, kind) = (&c.object.api_version, &c.object.kind);
        match out
            .iter_mut()
            .find(|a| &a.api_version == api_version && &a.kind == kind)
        {
            Some(a) => {
                for v in verbs {
                    if !a.verbs.contains(&v) {
                        a.verbs.push(v);
                    }
                }
                // one grant wide enough for both
                a.namespace = None;
            }
            None => out.push(Access {
                api_version: api_version.clone(),
                kind: kind.clone(),
                verbs,
                namespace: watched
                    .iter()
                    .find(|w| &w.api_version == api_version && &w.kind == kind)
                    .and_then(|w| w.namespace.clone()),
            }),
        }
    }
    for r in &rules.related {
        if out
            .iter()
            .any(|a| a.api_version == r.api_version && a.kind == r.kind)
        {
            continue;
        }
        out.push(Access {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            verbs: vec!["get", "list", "watch"],
            // read in the execution object's namespace unless their references name another
            namespace: rules
                .fixed_execution_namespace()
                .filter(|_| r.namespace_path.is_none()),
        });
    }
    out
}

/// Loads rules and a resource file, printing what went wrong.
fn load_with_resource(
    rules: &Path,
    set: &[(String, String)],
    resource: &Path,
) -> Result<(Rules, Value), ExitCode> {
    let rules = load(rules, set)?;
    let resource = crate::offline::read_object(resource).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    Ok((rules, resource))
}

fn render(resource: &Path, rules: &Path, set: &[(String, String)]) -> ExitCode {
    let (rules, resource) = match load_with_resource(rules, set, resource) {
        Ok(x) => x,
        Err(c) => return c,
    };
    match rendered(&rules, resource) {
        Rendered::Object(text) => {
            out(&text);
            ExitCode::SUCCESS
        }
        Rendered::Outcome(text) => {
            out(&text);
            ExitCode::from(1)
        }
        Rendered::Error(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// What `render` shows.
#[derive(Debug)]
enum Rendered {
    /// The execution object the rules would create, as YAML.
    Object(String),
    /// No object: the transition and status the rules would record instead.
    Outcome(String),
    /// The rules failed.
    Error(String),
}

/// Runs the resource, fresh from the API server, through the simulated world (the engine's one
/// loop, as the controller would) until it settles: the execution object it created, or the
/// transition and status the rules recorded instead.
fn rendered(rules: &Rules, mut resource: Value) -> Rendered {
    let now = crate::time::parse_secs("2026-01-01T00:00:00Z").unwrap_or_default();
    // a resource fresh from the API server: no status yet
    if let Some(m) = resource.as_object_mut() {
        m.remove("status");
    }
    let mut world = simulate::World::new(rules, resource, now);
    let settled = world.reconcile();
    // every object created, in order (the children and the execution object), one document each
    let created: Vec<String> = world
        .effects
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::CreateExecution { object } | Effect::CreateChild { object, .. } => {
                Some(serde_yaml::to_string(object).unwrap_or_default())
            }
            _ => None,
        })
        .collect();
    if !created.is_empty() {
        return Rendered::Object(created.join("---\n"));
    }
    if let Err(e) = settled {
        return Rendered::Error(e);
    }
    if let Some(e) = world.decisions.iter().find_map(|(_, d)| d.error.as_ref()) {
        return Rendered::Error(e.to_string());
    }
    let transition = world
        .decisions
        .iter()
        .rev()
        .find_map(|(_, d)| d.transition.as_deref());
    let phase = world
        .decisions
        .last()
        .map_or(rules.phases[rules.initial].name.as_str(), |(_, d)| {
            d.phase.as_str()
        });
    Rendered::Outcome(format!(
        "# no {} would be created: transition `{}` to phase {phase}\n{}",
        rules.execution.kind,
        transition.unwrap_or("none"),
        serde_yaml::to_string(&json!({"status": world.status()})).unwrap_or_default()
    ))
}

#[allow(clippy::too_many_arguments)]
fn simulate_cmd(
    resource: &Path,
    rules: &Path,
    outcomes: &[String],
    after: f64,
    limit: f64,
    start: &str,
    objects: &[PathBuf],
    format: Format,
    set: &[(String, String)],
) -> ExitCode {
    // with --format json every failure is JSON on stdout too: {"error": {kind, message, problems}}
    let fail = |code: u8, kind: &str, message: String, problems: Vec<crate::rules::Problem>| {
        match format {
            Format::Text => eprintln!("{message}"),
            Format::Json => out(&format!(
                "{}\n",
                json!({"error": {"kind": kind, "message": message, "problems": problems}})
            )),
        }
        ExitCode::from(code)
    };
    let rules = match Rules::load(rules, set) {
        Ok(r) => r,
        Err(e) => return fail(exit_code(&e), "rules", e.to_string(), e.problems()),
    };
    let resource = match crate::offline::read_object(resource) {
        Ok(r) => r,
        Err(e) => return fail(2, "resource", e, Vec::new()),
    };
    let Some(start) = crate::time::parse_secs(start) else {
        return fail(
            2,
            "arguments",
            format!("--start: `{start}` is not an RFC 3339 timestamp"),
            Vec::new(),
        );
    };
    let outcome = outcomes.first().map_or("succeeded", String::as_str);
    let mut others = Vec::new();
    for file in objects {
        match crate::offline::read_object(file) {
            Ok(o) => others.push(o),
            Err(e) => return fail(2, "resource", format!("--object: {e}"), Vec::new()),
        }
    }
    let mut parts = outcome.splitn(3, ':');
    let script = simulate::Script {
        outcome: parts.next().unwrap_or("succeeded").to_string(),
        reason: parts.next().unwrap_or("").to_string(),
        message: parts.next().unwrap_or("").to_string(),
        then: outcomes.iter().skip(1).cloned().collect(),
        after,
        limit,
        objects: others,
    };
    let world = match simulate::run(&rules, resource, start, &script) {
        Ok(w) => w,
        Err(e) => {
            return fail(
                1,
                "simulation",
                format!("simulation failed: {e}"),
                Vec::new(),
            );
        }
    };
    let status = world
        .resource
        .as_ref()
        .and_then(|r| r.get("status"))
        .cloned()
        .unwrap_or(Value::Null);
    match format {
        Format::Text => out(&format!(
            "Simulating {} with rules {} (revision {}), outcome `{}` after {}:\n\n{}\nFinal status:\n{}",
            rules.resource.kind,
            rules.file.display(),
            rules.revision,
            outcomes.join("`, then `"),
            crate::time::go_duration(after),
            simulate::format_timeline(&world.timeline),
            indent(&serde_yaml::to_string(&status).unwrap_or_default())
        )),
        Format::Json => out(&format!(
            "{}\n",
            serde_json::to_string_pretty(
                &json!({"revision": rules.revision, "timeline": world.timeline, "status": status})
            )
            .unwrap_or_default()
        )),
    }
    ExitCode::SUCCESS
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    fn default_rules() -> Rules {
        Rules::load(&root().join("lifecycle.yaml"), &[]).expect("default rules load")
    }

    fn example() -> Value {
        crate::offline::read_object(&root().join("examples/workflowexecution.yaml"))
            .expect("the example reads")
    }

    #[test]
    fn check_states_the_access_to_created_and_related_kinds() {
        // the default rules: exactly what deploy/base/rbac.yaml grants in the execution namespace
        assert_eq!(
            rbac(&default_rules()),
            json!([
                {"apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "verbs": ["get", "list", "watch", "create", "delete"], "allNamespaces": false, "namespace": "kubernaut-workflows"},
                {"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "verbs": ["get", "list", "watch"], "allNamespaces": false, "namespace": "kubernaut-workflows"},
            ])
        );
        // a cluster-scoped child that is patched
        let tenant = Rules::load(&root().join("examples/tenant-lifecycle.yaml"), &[])
            .expect("the Tenant example loads");
        assert_eq!(
            rbac(&tenant),
            json!([{"apiVersion": "v1", "kind": "Namespace", "verbs": ["get", "list", "watch", "create", "delete", "patch"], "allNamespaces": true}])
        );
    }

    #[test]
    fn render_shows_the_object_for_a_valid_resource() {
        let Rendered::Object(text) = rendered(&default_rules(), example()) else {
            panic!("expected the PipelineRun");
        };
        assert!(
            text.starts_with("apiVersion: tekton.dev/v1\nkind: PipelineRun\n"),
            "{text}"
        );
        assert!(text.contains("name: wfe-f3457dcc8fbcb6d9"), "{text}");
    }

    #[test]
    fn render_shows_the_failure_a_validation_rule_records() {
        let mut resource = example();
        resource["spec"]["workflowRef"]["containerImage"] = json!("");
        let Rendered::Outcome(text) = rendered(&default_rules(), resource) else {
            panic!("expected the recorded failure");
        };
        assert!(
            text.starts_with(
                "# no PipelineRun would be created: transition `invalid` to phase Failed\nstatus:\n  phase: Failed\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    reason: ConfigurationError\n    message: workflowRef.containerImage is required\n"),
            "{text}"
        );
    }
}
