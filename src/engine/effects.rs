//! The effect builders: what a step of the rules (a transition, `sync`, `release`, `onDelete`)
//! writes into the desired status, and the effects it emits (deleting the execution object,
//! Events, audit records, metrics), and the execution object itself, rendered and checked.
//!
//! Builders only render and assemble; which step runs, and in what order its effects go out, is
//! decided in `decide.rs`.

use super::scope::{Scope, Stop, pred_error, template_error};
use super::status::{self, Condition, conditions_mut, truncate};
use super::{Category, DecideError, Effect, EventRecord, MetricRecord, ObjectKey};
use crate::render::{Prefetched, RenderError, Templates};
use crate::rules::model::{EventType, ExecutionAction, MetricKind};
use crate::rules::{ActionRules, ChildRef, TmplTree};
use minijinja::Value as JValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

impl Scope<'_> {
    /// Applies a step's `status` trees and `conditions` to the desired status.
    pub(super) fn apply_status(
        &self,
        action: &ActionRules,
        desired: &mut Value,
        extra: (&JValue, &JValue),
    ) -> Result<(), Stop> {
        let ctx = self.ctx(Some(extra), None);
        let t = &self.rules.templates;
        let pre = t.prefetch(action.batches.status, &ctx);
        for tree in &action.status {
            if let Value::Object(m) = desired {
                self.apply_tree(tree, m, &mut Vec::new(), (&ctx, &pre))?;
            }
        }
        for c in &action.conditions {
            if let Some(w) = &c.when
                && !w.eval(self, None).map_err(pred_error)?
            {
                continue;
            }
            let cond = Condition {
                kind: &c.kind,
                status: t.text_in(&c.status, &ctx, &pre).map_err(template_error)?,
                reason: t
                    .text_in(&c.reason, &ctx, &pre)
                    .map_err(template_error)?
                    .trim()
                    .to_string(),
                message: t.text_in(&c.message, &ctx, &pre).map_err(template_error)?,
            };
            let list = conditions_mut(desired, &self.rules.resource.status.conditions);
            status::set_condition(list, cond, &self.now_text, self.generation());
        }
        Ok(())
    }

    fn apply_tree(
        &self,
        tree: &TmplTree,
        obj: &mut Map<String, Value>,
        path: &mut Vec<String>,
        ctx: Ctx<'_>,
    ) -> Result<(), Stop> {
        match tree {
            TmplTree::Map(entries) => {
                for (k, sub) in entries {
                    path.push(k.clone());
                    self.apply_tree(sub, obj, path, ctx)?;
                    path.pop();
                }
            }
            TmplTree::Remove => status::remove_path(obj, path),
            other => {
                let v = self.render_tree(other, ctx)?;
                if !v.is_null() {
                    status::set_path(obj, path, v);
                }
            }
        }
        Ok(())
    }

    fn render_tree(&self, tree: &TmplTree, ctx: Ctx<'_>) -> Result<Value, Stop> {
        Ok(render_tree_in(&self.rules.templates, tree, ctx).map_err(template_error)?)
    }

    /// Appends the execution action, Events, audit record and metrics of `action`.
    pub(super) fn effects_of(
        &self,
        action: &ActionRules,
        transition: &JValue,
        step: &str,
        out: &mut Vec<Effect>,
        vars: Option<&JValue>,
    ) -> Result<(), Stop> {
        let computed;
        let vars = match vars {
            Some(v) => v,
            None => {
                computed = self.vars(action, transition)?;
                &computed
            }
        };
        let ctx = self.ctx(Some((vars, transition)), None);
        for &(i, x) in action.children.iter().rev() {
            if x == ExecutionAction::Delete
                && self.child_owned(i)
                && let Some(obj) = self.child(i)
            {
                let c = &self.rules.children[i];
                let (key, uid) = observed_key(&c.object, obj);
                out.insert(
                    0,
                    Effect::DeleteChild {
                        child: c.name.clone(),
                        key,
                        uid,
                    },
                );
            }
        }
        let pre = self.rules.templates.prefetch(action.batches.effects, &ctx);
        let ctx = (&ctx, &pre);
        if action.execution == Some(ExecutionAction::Delete)
            && self.owned
            && let Some(ex) = &self.obs.execution
        {
            out.insert(0, self.delete_execution(ex));
        }
        self.patches(action, ctx, out)?;
        self.events(action, ctx, out)?;
        if !action.audit.is_empty() {
            out.push(self.audit(action, ctx, step)?);
        }
        self.metrics(action, ctx, out)
    }

    /// The merge patches of `action` that would change our execution object.
    fn patches(
        &self,
        action: &ActionRules,
        ctx: Ctx<'_>,
        out: &mut Vec<Effect>,
    ) -> Result<(), Stop> {
        for (target, tree) in &action.patch {
            let (object, rules, child) = match *target {
                ChildRef::Lock => (
                    self.obs.execution.as_ref().filter(|_| self.owned),
                    &self.rules.execution,
                    None,
                ),
                ChildRef::Child(i) => (
                    self.child(i).filter(|_| self.child_owned(i)),
                    &self.rules.children[i].object,
                    Some(self.rules.children[i].name.clone()),
                ),
            };
            let Some(ex) = object else { continue };
            let patch = render_patch(&self.rules.templates, tree, ctx).map_err(template_error)?;
            let owner = &rules.owner_labels;
            for label in [&owner.name, &owner.namespace] {
                if patch
                    .pointer("/metadata/labels")
                    .is_some_and(|l| l.get(label.as_str()).is_some())
                {
                    return Err(Stop::Fail(DecideError {
                        category: Category::ExecutionObjectInvalid,
                        message: format!("a patch cannot change the owner label `{label}`"),
                    }));
                }
            }
            let mut patched = ex.clone();
            status::apply_merge_patch(&mut patched, &patch);
            if &patched != ex {
                let (key, _) = observed_key(rules, ex);
                out.push(match child {
                    None => Effect::PatchExecution { key, patch },
                    Some(child) => Effect::PatchChild { child, key, patch },
                });
            }
        }
        Ok(())
    }

    pub(super) fn delete_execution(&self, ex: &Value) -> Effect {
        let (key, uid) = observed_key(&self.rules.execution, ex);
        Effect::DeleteExecution { key, uid }
    }

    fn events(
        &self,
        action: &ActionRules,
        ctx: Ctx<'_>,
        out: &mut Vec<Effect>,
    ) -> Result<(), Stop> {
        let t = &self.rules.templates;
        for e in &action.events {
            out.push(Effect::Event(EventRecord {
                kind: match e.kind {
                    EventType::Normal => "Normal".into(),
                    EventType::Warning => "Warning".into(),
                },
                reason: e.reason.clone(),
                action: e.action.clone(),
                message: truncate(
                    t.text_in(&e.message, ctx.0, ctx.1)
                        .map_err(template_error)?
                        .trim(),
                    1024,
                ),
            }));
        }
        Ok(())
    }

    fn audit(&self, action: &ActionRules, ctx: Ctx<'_>, step: &str) -> Result<Effect, Stop> {
        let mut record = match &self.rules.audit.record {
            Some(base) => self.render_tree(base, ctx)?,
            None => Value::Object(Map::new()),
        };
        for tree in &action.audit {
            let over = self.render_tree(tree, ctx)?;
            status::deep_merge(&mut record, over);
        }
        if let Value::Object(m) = &mut record {
            m.insert(
                self.rules.audit.id_field.clone(),
                Value::String(self.event_id(step)),
            );
            m.insert(
                self.rules.audit.time_field.clone(),
                Value::String(self.now_text.clone()),
            );
        }
        Ok(Effect::Audit { record })
    }

    fn metrics(
        &self,
        action: &ActionRules,
        ctx: Ctx<'_>,
        out: &mut Vec<Effect>,
    ) -> Result<(), Stop> {
        let t = &self.rules.templates;
        for m in &action.metrics {
            let spec = self.rules.metrics.get(&m.name);
            let mut labels = Vec::new();
            for (k, v) in &m.labels {
                let text = t.text_in(v, ctx.0, ctx.1).map_err(template_error)?;
                labels.push((k.clone(), text));
            }
            if let Some(spec) = spec {
                labels.sort_by_key(|(k, _)| spec.labels.iter().position(|l| l == k));
            }
            let value = match &m.value {
                None => 1.0,
                Some(v) => {
                    let text = t.text_in(v, ctx.0, ctx.1).map_err(template_error)?;
                    text.trim().parse::<f64>().map_err(|_| {
                        Stop::Fail(DecideError {
                            category: Category::TemplateError,
                            message: format!("metric `{}` value `{text}` is not a number", m.name),
                        })
                    })?
                }
            };
            if spec.is_some_and(|s| s.kind == MetricKind::Counter) && value < 0.0 {
                return Err(Stop::Fail(DecideError {
                    category: Category::TemplateError,
                    message: format!("counter `{}` cannot decrease (value {value})", m.name),
                }));
            }
            out.push(Effect::Metric(MetricRecord {
                name: m.name.clone(),
                labels,
                value,
            }));
        }
        Ok(())
    }

    /// A record id that is the same every time this resource takes this step (in this
    /// attempt: a later attempt's steps are steps of their own).
    fn event_id(&self, step: &str) -> String {
        let numbered;
        let step = if self.attempt > 1 && !step.starts_with("retry#") {
            numbered = format!("{step}#{}", self.attempt);
            numbered.as_str()
        } else {
            step
        };
        let meta = self.obs.resource.get("metadata");
        let field = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let mut h = Sha256::new();
        for part in [
            field("uid"),
            field("namespace"),
            field("name"),
            self.rules.resource.kind.as_str(),
            step,
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let hex: String = h
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// The execution object, rendered and checked: its identity pinned, owner labels set.
    pub(super) fn render_execution(&self, key: &ObjectKey) -> Result<Value, Stop> {
        self.render_object(&self.rules.execution, key)
    }

    /// A child, rendered and checked: its identity pinned, owner labels set.
    pub(super) fn render_object(
        &self,
        ex: &crate::rules::ExecutionRules,
        key: &ObjectKey,
    ) -> Result<Value, Stop> {
        let ctx = self.ctx(None, None);
        let text = self
            .rules
            .templates
            .render_text(ex.template, &ctx)
            .map_err(template_error)?;
        let invalid = |m: String| {
            Stop::Fail(DecideError {
                category: Category::ExecutionObjectInvalid,
                message: format!("template {}: {m}", ex.template_name),
            })
        };
        let mut obj: Value = serde_yaml::from_str(&text)
            .map_err(|e| invalid(format!("rendered text is not YAML: {e}")))?;
        let Value::Object(m) = &mut obj else {
            return Err(invalid("rendered YAML is not a mapping".into()));
        };
        for (field, want) in [("apiVersion", &key.api_version), ("kind", &key.kind)] {
            pin_field(m, field, want, field).map_err(invalid)?;
        }
        let meta = m
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(meta) = meta else {
            return Err(invalid("metadata is not a mapping".into()));
        };
        pin_field(meta, "name", &key.name, "metadata.name").map_err(invalid)?;
        if key.namespace.is_empty() {
            // cluster-scoped: no namespace at all
            match meta.get("namespace") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(other) => {
                    return Err(invalid(format!(
                        "renders metadata.namespace {other}, but the object is cluster-scoped (the rules give no namespace)"
                    )));
                }
            }
            meta.remove("namespace");
        } else {
            pin_field(meta, "namespace", &key.namespace, "metadata.namespace").map_err(invalid)?;
        }
        if meta.contains_key("generateName") || meta.contains_key("ownerReferences") {
            return Err(invalid(
                "must not set metadata.generateName or metadata.ownerReferences".into(),
            ));
        }
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(labels) = labels else {
            return Err(invalid("metadata.labels is not a mapping".into()));
        };
        let rmeta = self.obs.resource.get("metadata");
        let rfield = |k: &str| {
            rmeta
                .and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let owner = &ex.owner_labels;
        labels.insert(owner.name.clone(), Value::String(rfield("name")));
        labels.insert(owner.namespace.clone(), Value::String(rfield("namespace")));
        for (k, v) in labels.iter() {
            let Some(s) = v.as_str() else {
                return Err(invalid(format!("label `{k}` is not a string")));
            };
            if s.len() > 63
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(invalid(format!(
                    "label `{k}` has an invalid value `{s}` (use the label_value filter)"
                )));
            }
        }
        Ok(obj)
    }
}

/// The identity and uid of an object as observed.
fn observed_key(rules: &crate::rules::ExecutionRules, ex: &Value) -> (ObjectKey, Option<String>) {
    let field = |p: &str| ex.pointer(p).and_then(Value::as_str).map(str::to_string);
    let key = ObjectKey {
        api_version: rules.api_version.clone(),
        kind: rules.kind.clone(),
        namespace: field("/metadata/namespace").unwrap_or_default(),
        name: field("/metadata/name").unwrap_or_default(),
    };
    (key, field("/metadata/uid"))
}

/// Makes `obj[field]` equal `want`: fills it in when absent, refuses a different value.
fn pin_field(
    obj: &mut Map<String, Value>,
    field: &str,
    want: &str,
    label: &str,
) -> Result<(), String> {
    match obj.get(field).and_then(Value::as_str) {
        Some(got) if got == want => Ok(()),
        Some(got) => Err(format!(
            "renders {label} `{got}`, but the rules give `{want}`"
        )),
        None => {
            obj.insert(field.into(), Value::String(want.to_string()));
            Ok(())
        }
    }
}

/// The context of a step's templates, and the values of those evaluated together.
type Ctx<'c> = (&'c JValue, &'c Prefetched);

/// Renders a merge patch: as [`render_tree`], except that an explicit `null` of the rules stays
/// in the patch, where it removes the field.
fn render_patch(t: &Templates, tree: &TmplTree, ctx: Ctx<'_>) -> Result<Value, RenderError> {
    let TmplTree::Map(entries) = tree else {
        return render_tree_in(t, tree, ctx);
    };
    let mut m = Map::new();
    for (k, sub) in entries {
        match sub {
            TmplTree::Remove => {
                m.insert(k.clone(), Value::Null);
            }
            other => {
                let v = render_patch(t, other, ctx)?;
                if !v.is_null() {
                    m.insert(k.clone(), v);
                }
            }
        }
    }
    Ok(Value::Object(m))
}

/// Renders templates arranged as JSON; leaves that evaluate to null are left out.
pub fn render_tree(t: &Templates, tree: &TmplTree, ctx: &JValue) -> Result<Value, RenderError> {
    render_tree_in(t, tree, (ctx, &Prefetched::none()))
}

/// [`render_tree`], taking the values of leaves evaluated together from the prefetched ones.
fn render_tree_in(t: &Templates, tree: &TmplTree, ctx: Ctx<'_>) -> Result<Value, RenderError> {
    Ok(match tree {
        TmplTree::Leaf(x) => t.value_in(x, ctx.0, ctx.1)?,
        TmplTree::Remove => Value::Null,
        TmplTree::Map(entries) => {
            let mut m = Map::new();
            for (k, sub) in entries {
                let v = render_tree_in(t, sub, ctx)?;
                if !v.is_null() {
                    m.insert(k.clone(), v);
                }
            }
            Value::Object(m)
        }
        TmplTree::List(items) => Value::Array(
            items
                .iter()
                .map(|i| render_tree_in(t, i, ctx))
                .collect::<Result<_, _>>()?,
        ),
    })
}
