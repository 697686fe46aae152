//! The evaluation scope of one decision: everything the rules can read (`resource`, `execution`,
//! `owned`, `error`, `related`, `values`, `validation`, `object`, `settings`, `phase`, `now`),
//! computed lazily where it costs (values, related lists), and the evaluation of paths,
//! predicates, templates and durations over it.
//!
//! Predicates and paths read JSON, templates read minijinja values. Each datum the decision adds
//! while it runs is held once as a [`Bound`] (its JSON and its template value, set together), so
//! the two forms can never disagree. The observation's own objects reach templates as lazy values
//! (`render::lazy`): read in place, each field converted only when a template reads it.
//! It must not decide anything: the steps of a decision live in `decide.rs`.

use super::{ActionError, Category, DecideError, ObjectKey, Observation, RelatedRequest};
use crate::expr::{Env, Pred, PredError, Root};
use crate::render::{Loan, RenderError, Tmpl, lazy_copy};
use crate::rules::{ActionRules, Deps, Rules, ValueKind};
use minijinja::{Value as JValue, context};
use serde_json::{Map, Value, json};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

/// What a decision must have read before it can go on.
#[derive(Debug, Clone, Copy)]
pub(super) enum Need {
    /// A related list (index into the rules' related lists).
    Related(usize),
    /// A lookup (index into the rules' lookups).
    Lookup(usize),
}

/// Why evaluation stopped early.
pub(super) enum Stop {
    /// Objects must be read first.
    Needs(Need),
    /// The rules failed.
    Fail(DecideError),
}

impl From<DecideError> for Stop {
    fn from(e: DecideError) -> Self {
        Stop::Fail(e)
    }
}

/// A template failed to render.
pub(super) fn template_error(e: RenderError) -> DecideError {
    DecideError {
        category: Category::TemplateError,
        message: e.message,
    }
}

/// A predicate failed to evaluate.
pub(super) fn pred_error(e: PredError) -> DecideError {
    DecideError {
        category: Category::TemplateError,
        message: e.0,
    }
}

/// One datum in both forms the rules read it in.
pub(super) struct Bound {
    /// For paths and predicates.
    pub json: Value,
    /// For templates.
    pub tmpl: JValue,
}

impl Bound {
    fn null() -> Bound {
        Bound {
            json: Value::Null,
            tmpl: JValue::from(()),
        }
    }

    /// Sets both forms from `json`.
    pub fn set(&mut self, json: Value) {
        self.tmpl = lazy_copy(&json);
        self.json = json;
    }
}

/// The values computed so far, in both forms; a new value converts only itself.
struct Values {
    json: Value,
    tmpl: BTreeMap<String, JValue>,
    /// The template form of the whole map (shares the entries).
    all: JValue,
}

/// What the rules can read in one decision.
pub(super) struct Scope<'a> {
    pub rules: &'a Rules,
    pub obs: &'a Observation,
    pub now: f64,
    pub now_text: String,
    /// The phase the decision is in (moves when a transition is taken).
    pub phase_name: String,
    /// Whether the execution object is ours.
    pub owned: bool,
    owned_value: Value,
    /// The attempt number (1 when the rules keep none, or the status has none yet).
    pub attempt: u64,
    attempt_value: Value,
    error: Value,
    /// Every child by name (the lock's included): the object, or null; built on the first
    /// path that reads it.
    children_value: std::cell::OnceCell<Value>,
    phase_value: Value,
    now_value: Value,
    /// The related lists read, by name: as a document, built on the first path that reads it,
    /// and as a template value.
    related: std::cell::OnceCell<Value>,
    related_value: JValue,
    /// What the rules see of each lookup computed so far, by name.
    lookups: Bound,
    lookups_done: Vec<bool>,
    /// The first validation rule that failed, if any.
    pub validation: Bound,
    /// The execution object's identity, once rendered.
    pub object: Bound,
    values: Values,
    computed: Vec<bool>,
    null: Value,
    wake: Cell<Option<f64>>,
    /// Template context of what does not change during the decision.
    base: JValue,
}

/// The phase a resource is in as `rules` read it: the phase its status names (through
/// `renamedPhases` for a removed one), or the initial phase when its status names none. `Err`
/// holds a name the rules do not know.
pub fn phase_of(rules: &Rules, resource: &Value) -> Result<usize, String> {
    let named = resource
        .get("status")
        .and_then(|s| s.get(&rules.resource.status.phase))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    match named {
        None => Ok(rules.initial),
        Some(name) => rules.resolve_phase(name).ok_or_else(|| name.to_string()),
    }
}

impl<'a> Scope<'a> {
    pub fn new(rules: &'a Rules, obs: &'a Observation, now: f64, loan: &Loan<'a>) -> Scope<'a> {
        // a removed phase that `renamedPhases` maps is read as its new name, which the status
        // write then records
        let phase_name = match phase_of(rules, &obs.resource) {
            Ok(i) => rules.phases[i].name.clone(),
            Err(unknown) => unknown,
        };
        let owned = obs
            .execution
            .as_ref()
            .is_some_and(|ex| is_owned(rules, &obs.resource, ex));
        let error = obs
            .error
            .as_ref()
            .map(|e: &ActionError| serde_json::to_value(e).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        let now_text = crate::time::format_secs(now);
        let attempt = super::attempts::observed_attempt(rules, &obs.resource);
        // the lock child is the execution object: converted once, shared by both names
        let execution = obs
            .execution
            .as_ref()
            .map_or(JValue::from(()), |ex| loan.value(ex));
        let children: JValue = std::iter::once((rules.lock.clone(), execution.clone()))
            .chain(rules.children.iter().map(|c| {
                let child = obs.children.get(&c.name).unwrap_or(&Value::Null);
                (c.name.clone(), loan.value(child))
            }))
            .collect();
        let base = context! {
            resource => loan.value(&obs.resource),
            execution => execution,
            children => children,
            owned => JValue::from(owned),
            error => JValue::from_serialize(&error),
            settings => rules.settings_value(),
            phase => JValue::from(phase_name.as_str()),
            now => JValue::from(now_text.as_str()),
            attempt => JValue::from(attempt),
        };
        Scope {
            rules,
            obs,
            now,
            phase_value: Value::String(phase_name.clone()),
            now_value: Value::String(now_text.clone()),
            now_text,
            phase_name,
            owned,
            owned_value: Value::Bool(owned),
            attempt,
            attempt_value: Value::from(attempt),
            error,
            children_value: std::cell::OnceCell::new(),
            related_value: obs
                .related
                .iter()
                .map(|(name, list)| (name.clone(), loan.value(list)))
                .collect::<BTreeMap<String, JValue>>()
                .into(),
            related: std::cell::OnceCell::new(),
            lookups: Bound {
                json: Value::Object(Map::new()),
                tmpl: JValue::from_serialize(Map::new()),
            },
            lookups_done: vec![false; rules.lookups.len()],
            validation: Bound::null(),
            object: Bound::null(),
            values: Values {
                json: Value::Object(Map::new()),
                tmpl: BTreeMap::new(),
                all: JValue::from_serialize(Map::new()),
            },
            computed: vec![false; rules.values.len()],
            null: Value::Null,
            wake: Cell::new(None),
            base,
        }
    }

    /// The template context, with a step's `vars` and `transition`, and a filter's `item`.
    pub fn ctx(&self, extra: Option<(&JValue, &JValue)>, item: Option<&Value>) -> JValue {
        let (vars, transition) = match extra {
            Some((v, t)) => (v.clone(), t.clone()),
            None => (JValue::UNDEFINED, JValue::UNDEFINED),
        };
        let item = item.map(lazy_copy).unwrap_or(JValue::UNDEFINED);
        context! {
            values => self.values.all.clone(),
            validation => self.validation.tmpl.clone(),
            related => self.related_value.clone(),
            lookups => self.lookups.tmpl.clone(),
            object => self.object.tmpl.clone(),
            vars => vars,
            transition => transition,
            item => item,
            ..self.base.clone()
        }
    }

    /// When the decision must be made again because an `elapsed` test will change.
    pub fn wake(&self) -> Option<f64> {
        self.wake.get()
    }

    /// The resource's `metadata.generation`.
    pub fn generation(&self) -> Option<i64> {
        self.obs
            .resource
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
    }

    // ---- values ----

    /// Makes sure what `deps` reads is there: related lists read, lookups found, values
    /// computed.
    pub fn ensure(&mut self, deps: &Deps) -> Result<(), Stop> {
        self.related_read(&deps.related)?;
        self.lookups_found(&deps.lookups)?;
        for &v in &deps.values {
            self.compute(v, 0)?;
        }
        Ok(())
    }

    fn related_read(&self, lists: &BTreeSet<usize>) -> Result<(), Stop> {
        for &r in lists {
            if let Some(rel) = self.rules.related.get(r)
                && !self.obs.related.contains_key(&rel.name)
            {
                return Err(Stop::Needs(Need::Related(r)));
            }
        }
        Ok(())
    }

    /// Whether the world has found lookup `index` for this decision.
    pub fn lookup_found(&self, index: usize) -> bool {
        self.rules
            .lookups
            .get(index)
            .is_some_and(|l| self.obs.lookups.contains_key(&l.name))
    }

    fn lookups_found(&mut self, lookups: &BTreeSet<usize>) -> Result<(), Stop> {
        for &i in lookups {
            if self.lookups_done.get(i).copied().unwrap_or(true) {
                continue;
            }
            let Some(l) = self.rules.lookups.get(i) else {
                continue;
            };
            let Some(found) = self.obs.lookups.get(&l.name) else {
                return Err(Stop::Needs(Need::Lookup(i)));
            };
            let found = found.as_array().map(Vec::as_slice).unwrap_or_default();
            let seen = super::lookups::select(self, i, found)?;
            self.lookups.tmpl = {
                let mut m: BTreeMap<String, JValue> = BTreeMap::new();
                if let Value::Object(all) = &self.lookups.json {
                    for (k, v) in all {
                        m.insert(k.clone(), lazy_copy(v));
                    }
                }
                m.insert(l.name.clone(), lazy_copy(&seen));
                JValue::from_object(m)
            };
            if let Value::Object(m) = &mut self.lookups.json {
                m.insert(l.name.clone(), seen);
            }
            self.lookups_done[i] = true;
        }
        Ok(())
    }

    fn compute(&mut self, index: usize, depth: usize) -> Result<(), Stop> {
        if self.computed.get(index).copied().unwrap_or(true) {
            return Ok(());
        }
        if depth > self.rules.values.len() {
            return Err(Stop::Fail(DecideError {
                category: Category::TemplateError,
                message: "values depend on each other in a cycle".into(),
            }));
        }
        let rule = &self.rules.values[index];
        self.related_read(&rule.deps.related)?;
        self.lookups_found(&rule.deps.lookups)?;
        for &v in &rule.deps.values {
            self.compute(v, depth + 1)?;
        }
        let ctx_err = |e: DecideError| {
            Stop::Fail(DecideError {
                category: e.category,
                message: format!("value `{}`: {}", rule.name, e.message),
            })
        };
        let result = match &rule.kind {
            ValueKind::Path(p) => self
                .first(p)
                .cloned()
                .filter(|v| !v.is_null())
                .unwrap_or_else(|| rule.default.clone()),
            ValueKind::List(p, f) => {
                let items = self.filtered(p, f.as_ref()).map_err(ctx_err)?;
                Value::Array(items.into_iter().map(|(_, v)| v.clone()).collect())
            }
            ValueKind::Count(p, f) => {
                Value::from(self.filtered(p, f.as_ref()).map_err(ctx_err)?.len())
            }
            ValueKind::Find(p, f) => match self
                .filtered(p, f.as_ref())
                .map_err(ctx_err)?
                .into_iter()
                .next()
            {
                Some((i, v)) => json!({"index": i, "value": v.clone()}),
                None => rule.default.clone(),
            },
            ValueKind::Expr(id) | ValueKind::Template(id) => {
                let ctx = self.ctx(None, None);
                let v = self
                    .rules
                    .templates
                    .eval(*id, &ctx)
                    .map_err(|e| ctx_err(template_error(e)))?;
                if v.is_null() { rule.default.clone() } else { v }
            }
            ValueKind::Table(t) => {
                let ctx = self.ctx(None, None);
                let mut inputs = Vec::with_capacity(t.inputs.len());
                for (_, tmpl) in &t.inputs {
                    let text = self
                        .rules
                        .templates
                        .text(tmpl, &ctx)
                        .map_err(|e| ctx_err(template_error(e)))?;
                    let lower = text.to_lowercase();
                    inputs.push((text, lower));
                }
                t.rows
                    .iter()
                    .find(|(tests, _)| {
                        tests
                            .iter()
                            .all(|(i, m)| inputs.get(*i).is_some_and(|(t, l)| m.test(t, l)))
                    })
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| t.default.clone())
            }
        };
        // convert only the new value; the map of template values shares the rest
        self.values
            .tmpl
            .insert(rule.name.clone(), lazy_copy(&result));
        self.values.all = JValue::from_object(self.values.tmpl.clone());
        if let Value::Object(m) = &mut self.values.json {
            m.insert(rule.name.clone(), result);
        }
        self.computed[index] = true;
        Ok(())
    }

    fn first(&self, p: &crate::expr::Path) -> Option<&Value> {
        p.root()
            .and_then(|r| self.root(r))
            .and_then(|doc| p.first(doc))
    }

    fn filtered(
        &self,
        p: &crate::expr::Path,
        f: Option<&Pred>,
    ) -> Result<Vec<(usize, &Value)>, DecideError> {
        let Some(doc) = p.root().and_then(|r| self.root(r)) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (i, item) in p.select(doc).into_iter().enumerate() {
            let keep = match f {
                Some(f) => f.eval(self, Some(item)).map_err(pred_error)?,
                None => true,
            };
            if keep {
                out.push((i, item));
            }
        }
        Ok(out)
    }

    /// Evaluates a predicate, after what it reads.
    pub fn test(&mut self, p: &Pred, deps: &Deps) -> Result<bool, Stop> {
        self.ensure(deps)?;
        Ok(p.eval(self, None).map_err(pred_error)?)
    }

    /// A duration template, in seconds.
    pub fn duration(&self, t: &Tmpl, ctx: &JValue) -> Result<f64, Stop> {
        let text = self.rules.templates.text(t, ctx).map_err(template_error)?;
        crate::time::parse_duration(&text).map_err(|e| {
            Stop::Fail(DecideError {
                category: Category::TemplateError,
                message: e,
            })
        })
    }

    /// Child `index` (of the rules' other children) as observed, if it exists.
    pub fn child(&self, index: usize) -> Option<&Value> {
        let c = self.rules.children.get(index)?;
        self.obs.children.get(&c.name).filter(|v| !v.is_null())
    }

    /// Whether child `index` exists and is ours.
    pub fn child_owned(&self, index: usize) -> bool {
        match (self.child(index), self.rules.children.get(index)) {
            (Some(obj), Some(c)) => owned_by(&c.object.owner_labels, &self.obs.resource, obj),
            _ => false,
        }
    }

    /// The value of `transition` in templates.
    pub fn transition_value(&self, name: &str, to: &str) -> JValue {
        JValue::from_serialize(json!({"name": name, "from": self.phase_name, "to": to}))
    }

    /// A step's `vars`, each able to read the ones before it.
    pub fn vars(&self, action: &ActionRules, transition: &JValue) -> Result<JValue, Stop> {
        let mut vars = Map::new();
        for (name, t) in &action.vars {
            let ctx = self.ctx(Some((&JValue::from_serialize(&vars), transition)), None);
            let v = self
                .rules
                .templates
                .value(t, &ctx)
                .map_err(template_error)?;
            vars.insert(name.clone(), v);
        }
        Ok(JValue::from_serialize(&vars))
    }
}

impl Env for Scope<'_> {
    fn root(&self, root: Root) -> Option<&Value> {
        Some(match root {
            Root::Resource => &self.obs.resource,
            Root::Execution => self.obs.execution.as_ref().unwrap_or(&self.null),
            Root::Owned => &self.owned_value,
            Root::Related => self
                .related
                .get_or_init(|| Value::Object(self.obs.related.clone())),
            Root::Lookups => &self.lookups.json,
            Root::Error => &self.error,
            Root::Validation => &self.validation.json,
            Root::Values => &self.values.json,
            Root::Settings => &self.rules.settings,
            Root::Phase => &self.phase_value,
            Root::Now => &self.now_value,
            Root::Object => &self.object.json,
            Root::Attempt => &self.attempt_value,
            Root::Children => self.children_value.get_or_init(|| {
                children_doc(self.rules, self.obs.execution.as_ref(), &self.obs.children)
            }),
        })
    }

    fn truthy(&self, id: usize, item: Option<&Value>) -> Result<bool, PredError> {
        let ctx = self.ctx(None, item);
        self.rules
            .templates
            .eval_jinja(id, &ctx)
            .map(|v| v.is_true())
            .map_err(|e| PredError(e.message))
    }

    fn duration_secs(&self, id: usize, item: Option<&Value>) -> Result<f64, PredError> {
        let ctx = self.ctx(None, item);
        let v = self
            .rules
            .templates
            .eval(id, &ctx)
            .map_err(|e| PredError(e.message))?;
        match v {
            Value::Number(n) => n.as_f64().ok_or_else(|| PredError("bad number".into())),
            Value::String(s) => crate::time::parse_duration(&s).map_err(PredError),
            other => Err(PredError(format!("`{other}` is not a duration"))),
        }
    }

    fn now_secs(&self) -> f64 {
        self.now
    }

    fn wake_at(&self, secs: f64) {
        let w = self.wake.get().map_or(secs, |w| w.min(secs));
        self.wake.set(Some(w));
    }
}

/// Every child by name, the lock's included (under its name): the object, or null.
pub fn children_doc(
    rules: &Rules,
    execution: Option<&Value>,
    children: &Map<String, Value>,
) -> Value {
    let mut m = Map::new();
    m.insert(
        rules.lock.clone(),
        execution.cloned().unwrap_or(Value::Null),
    );
    for c in &rules.children {
        m.insert(
            c.name.clone(),
            children.get(&c.name).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(m)
}

/// The objects related list `index` refers to, given the execution object and the other
/// children (a list's `from` is rooted at one of them).
pub fn related_requests(
    rules: &Rules,
    index: usize,
    execution: Option<&Value>,
    children: &Map<String, Value>,
) -> RelatedRequest {
    let Some(r) = rules.related.get(index) else {
        return RelatedRequest {
            name: String::new(),
            entries: Vec::new(),
        };
    };
    let all;
    // the document `from` is evaluated on, and the object whose namespace is the default
    let (doc, holder) = match r.from.root() {
        Some(crate::expr::Root::Children) => {
            all = children_doc(rules, execution, children);
            let holder = r
                .from
                .key()
                .and_then(|k| all.get(k))
                .filter(|v| !v.is_null());
            (holder.map(|_| &all), holder)
        }
        _ => (execution, execution),
    };
    let mut entries = Vec::new();
    if let (Some(doc), Some(holder)) = (doc, holder) {
        let ex_ns = holder
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for entry in r.from.select(doc) {
            let wanted = match &r.filter {
                Some(f) => f.eval(&NoEnv, Some(entry)).unwrap_or(false),
                None => true,
            };
            let name = r.name_path.first(entry).and_then(Value::as_str);
            let namespace = match &r.namespace_path {
                Some(p) => p.first(entry).and_then(Value::as_str).map(str::to_string),
                None => Some(ex_ns.clone()),
            };
            let key = match (wanted, name, namespace) {
                (true, Some(name), Some(namespace)) if !name.is_empty() => Some(ObjectKey {
                    api_version: r.api_version.clone(),
                    kind: r.kind.clone(),
                    namespace,
                    name: name.to_string(),
                }),
                _ => None,
            };
            entries.push((entry.clone(), key));
        }
    }
    RelatedRequest {
        name: r.name.clone(),
        entries,
    }
}

/// An environment for filters that may only read their item.
struct NoEnv;

impl Env for NoEnv {
    fn root(&self, _: Root) -> Option<&Value> {
        None
    }
    fn truthy(&self, _: usize, _: Option<&Value>) -> Result<bool, PredError> {
        Err(PredError("expressions are not available here".into()))
    }
    fn duration_secs(&self, _: usize, _: Option<&Value>) -> Result<f64, PredError> {
        Err(PredError("durations are not available here".into()))
    }
    fn now_secs(&self) -> f64 {
        0.0
    }
    fn wake_at(&self, _: f64) {}
}

/// Whether the execution object carries the owner labels of this resource.
fn is_owned(rules: &Rules, resource: &Value, execution: &Value) -> bool {
    owned_by(&rules.execution.owner_labels, resource, execution)
}

/// Whether an object carries these owner labels of this resource.
pub(super) fn owned_by(
    owner: &crate::rules::model::OwnerLabels,
    resource: &Value,
    object: &Value,
) -> bool {
    let labels = object.pointer("/metadata/labels");
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let meta = |k: &str| {
        resource
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
    };
    // a cluster-scoped resource has no namespace: its label is empty, and either side missing
    // reads as empty
    label(&owner.name).is_some()
        && label(&owner.name) == meta("name")
        && label(&owner.namespace).unwrap_or_default() == meta("namespace").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Effect, decide};
    use crate::rules::Sources;

    /// The valid `renamed-phases` fixture: `Running` is now `Executing`.
    fn renamed() -> Rules {
        let sources = Sources::from_text(
            "renamed-phases.yaml",
            include_str!("../../tests/fixtures/rules/valid/renamed-phases.yaml")
                .replace("templates: _templates\n", ""),
        )
        .with_template(
            "job.yaml",
            include_str!("../../tests/fixtures/rules/valid/_templates/job.yaml"),
        );
        Rules::compile(&sources, &[]).unwrap()
    }

    fn task(phase: Option<&str>) -> Value {
        json!({
            "apiVersion": "example.com/v1", "kind": "Task",
            "metadata": {"name": "t", "namespace": "default", "finalizers": []},
            "status": phase.map_or(json!({}), |p| json!({"phase": p})),
        })
    }

    #[test]
    fn a_renamed_phase_is_read_as_its_new_name_and_written_so() {
        let rules = renamed();
        let executing = rules.phase_index("Executing").unwrap();
        assert_eq!(phase_of(&rules, &task(Some("Running"))), Ok(executing));
        assert_eq!(phase_of(&rules, &task(Some("Executing"))), Ok(executing));
        assert_eq!(phase_of(&rules, &task(None)), Ok(rules.initial));
        assert_eq!(
            phase_of(&rules, &task(Some("Gone"))),
            Err("Gone".to_string())
        );
        let obs = Observation {
            resource: task(Some("Running")),
            ..Observation::default()
        };
        let d = decide(&rules, &obs, 0.0);
        assert_eq!(d.error, None);
        assert_eq!(d.phase, "Executing");
        let patch = d.effects.iter().find_map(|e| match e {
            Effect::PatchStatus { patch } => Some(patch),
            _ => None,
        });
        assert_eq!(
            patch.and_then(|p| p.pointer("/phase")),
            Some(&json!("Executing")),
            "{:?}",
            d.effects
        );
    }
}
