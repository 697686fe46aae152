//! What the rules can read of the objects they observe besides the governed resource (the
//! execution object, each related list's objects), below the top level: the JSON paths their
//! paths, predicates and templates reach, known when the rules load. The shell's caches keep
//! only that ([`Keep::project`]), plus the metadata the engine and the controller read
//! themselves ([`RUNTIME_METADATA`]).
//!
//! Reads are logged while the rules compile (every rooted path; every relative path of a
//! value's `where`, against the value's source; every template in use), then resolved once every
//! value is known: a read of `values.NAME…` is a read of what the value was taken from
//! (`$.related.taskRuns[*]` for a `find` over it, so `values.failedTask.value.object.status`
//! reads the TaskRuns' `status`). Where a read cannot be bounded (a filter in a path, an object
//! handed to a filter or output whole, a key computed at run time, a template that reads the
//! `related` or `values` documents whole), the node is kept whole: correctness first.

use super::Rules;
use super::compiled::ValueKind;
use super::compiler::{Compiler, Scope};
use crate::expr::{Path as JPath, Root};
use crate::render::chains::chains;
use serde_json::Value;
use std::collections::BTreeMap;

/// Metadata every cached object keeps whatever the rules read: the engine reads names,
/// labels, uid, deletionTimestamp and finalizers, the controller resourceVersion and
/// generation, and the ownership checks ownerReferences.
pub const RUNTIME_METADATA: [&str; 9] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "labels",
    "ownerReferences",
    "deletionTimestamp",
    "finalizers",
    "generation",
];

/// Steps into a document: a field by name, or (`None`) every element or entry.
pub type Steps = Vec<Option<String>>;

/// What to keep of a JSON node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// All of it.
    Whole,
    /// The fields named (each as its entry says), and every entry or element as `each` says;
    /// nothing else. Of a node nobody reads below, only its place: `{}` for an object, its
    /// elements (each kept as nothing) for a list, scalars as they are.
    Part {
        /// Fields by name.
        fields: BTreeMap<String, Keep>,
        /// Every element of a list, every entry of a map.
        each: Option<Box<Keep>>,
    },
}

impl Keep {
    /// Keeps nothing below the node.
    pub fn nothing() -> Keep {
        Keep::Part {
            fields: BTreeMap::new(),
            each: None,
        }
    }

    /// Whether everything is kept.
    pub fn is_whole(&self) -> bool {
        matches!(self, Keep::Whole)
    }

    /// Keeps the node `steps` leads to: whole, or (`whole` false) only its place.
    pub fn insert(&mut self, steps: &[Option<String>], whole: bool) {
        let Keep::Part { fields, each } = self else {
            return;
        };
        match steps.split_first() {
            None => {
                if whole {
                    *self = Keep::Whole;
                }
            }
            Some((Some(k), rest)) => fields
                .entry(k.clone())
                .or_insert_with(Keep::nothing)
                .insert(rest, whole),
            Some((None, rest)) => each
                .get_or_insert_with(|| Box::new(Keep::nothing()))
                .insert(rest, whole),
        }
    }

    /// Keeps also what `other` keeps.
    pub fn merge(&mut self, other: &Keep) {
        match (&mut *self, other) {
            (Keep::Whole, _) => {}
            (_, Keep::Whole) => *self = Keep::Whole,
            (
                Keep::Part { fields, each },
                Keep::Part {
                    fields: of,
                    each: oe,
                },
            ) => {
                for (k, v) in of {
                    fields
                        .entry(k.clone())
                        .or_insert_with(Keep::nothing)
                        .merge(v);
                }
                if let Some(oe) = oe {
                    each.get_or_insert_with(|| Box::new(Keep::nothing()))
                        .merge(oe);
                }
            }
        }
    }

    /// Whether field `name` of an object is kept (in any part).
    pub fn keeps(&self, name: &str) -> bool {
        match self {
            Keep::Whole => true,
            Keep::Part { fields, each } => each.is_some() || fields.contains_key(name),
        }
    }

    /// This, plus what every object keeps: `apiVersion`, `kind` and [`RUNTIME_METADATA`].
    pub fn with_runtime_fields(&self) -> Keep {
        let mut k = self.clone();
        k.insert(&[Some("apiVersion".into())], true);
        k.insert(&[Some("kind".into())], true);
        for m in RUNTIME_METADATA {
            k.insert(&[Some("metadata".into()), Some(m.into())], true);
        }
        k
    }

    /// Drops from `v` what is not kept.
    pub fn project(&self, v: &mut Value) {
        let Keep::Part { fields, each } = self else {
            return;
        };
        match v {
            Value::Object(m) => {
                m.retain(|k, _| each.is_some() || fields.contains_key(k));
                for (k, child) in m.iter_mut() {
                    match (fields.get(k), each) {
                        (Some(f), Some(e)) => {
                            let mut both = f.clone();
                            both.merge(e);
                            both.project(child);
                        }
                        (Some(f), None) => f.project(child),
                        (None, Some(e)) => e.project(child),
                        (None, None) => {}
                    }
                }
            }
            // a name never selects inside a list; one read as if it did keeps the list whole
            Value::Array(_) if !fields.is_empty() => {}
            Value::Array(items) => {
                let nothing = Keep::nothing();
                let e = each.as_deref().unwrap_or(&nothing);
                for x in items {
                    e.project(x);
                }
            }
            _ => {}
        }
    }
}

/// What the rules read of each observed kind of object, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectReads {
    /// Of the execution object.
    pub execution: Keep,
    /// Of each related list's objects, by list name.
    pub related: BTreeMap<String, Keep>,
}

/// How a read uses the node it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Its value, whole.
    Whole,
    /// Only whether it is there (an `exists` test, the source a value selects from).
    Presence,
    /// Only its truth (`if x`): for an object that is its value whole, for a found record
    /// nothing.
    Test,
}

/// The reads logged while the rules compile.
#[derive(Debug, Default)]
pub(crate) struct ReadLog {
    /// Each read: the document, the steps, how.
    paths: Vec<(Root, Steps, Use)>,
    /// How the path being compiled is read (`None`: whole).
    pub(crate) mode: Option<Use>,
    /// Where `$` of the relative paths being compiled comes from (a value's `where`).
    pub(crate) item: Option<(Root, Steps)>,
    /// Templates that see `item`, with where it comes from.
    item_templates: BTreeMap<usize, (Root, Steps)>,
}

impl Compiler<'_> {
    /// Logs what a path reads.
    pub(crate) fn note_path_reads(&mut self, p: &JPath) {
        let (steps, cut) = p.read_steps();
        let how = if cut {
            Use::Whole
        } else {
            self.reads.mode.unwrap_or(Use::Whole)
        };
        match p.root() {
            Some(root) => self.reads.paths.push((root, steps, how)),
            // relative paths outside a value's `where` read the references of a related list
            // (which `from` reads whole) or looked-up objects (kept whole)
            None => {
                if let Some((root, base)) = self.reads.item.clone() {
                    let mut all = base;
                    all.extend(steps);
                    self.reads.paths.push((root, all, how));
                }
            }
        }
    }

    /// Logs the item a template compiled in `scope` sees.
    pub(crate) fn note_template_item(&mut self, id: usize, scope: Scope) {
        if scope == Scope::Item
            && let Some(item) = self.reads.item.clone()
        {
            self.reads.item_templates.insert(id, item);
        }
    }

    /// Logs a merge patch of the execution object: the engine compares the fields it sets
    /// with the object as observed.
    pub(crate) fn note_patch_reads(&mut self, tree: &super::compiled::TmplTree) {
        fn walk(t: &super::compiled::TmplTree, at: &mut Steps, out: &mut Vec<Steps>) {
            match t {
                super::compiled::TmplTree::Map(entries) => {
                    for (k, v) in entries {
                        at.push(Some(k.clone()));
                        walk(v, at, out);
                        at.pop();
                    }
                }
                _ => out.push(at.clone()),
            }
        }
        let mut out = Vec::new();
        walk(tree, &mut Vec::new(), &mut out);
        for steps in out {
            self.reads.paths.push((Root::Execution, steps, Use::Whole));
        }
    }

    /// Resolves the log against the compiled rules.
    pub(crate) fn object_reads(&self, rules: &Rules) -> ObjectReads {
        let mut r = Resolver {
            rules,
            out: ObjectReads {
                execution: Keep::nothing(),
                related: rules
                    .related
                    .iter()
                    .map(|x| (x.name.clone(), Keep::nothing()))
                    .collect(),
            },
        };
        for (root, steps, how) in &self.reads.paths {
            r.read(*root, steps, *how, 0);
        }
        for (id, scope, ..) in &self.uses {
            // simulated changes never run in the controller
            if *scope == Scope::Sim {
                continue;
            }
            let item = self.reads.item_templates.get(id);
            for t in rules.templates.reached(*id) {
                let found = rules.templates.source(t).and_then(|s| chains(&s));
                let Some(found) = found else {
                    r.everything();
                    continue;
                };
                for c in found {
                    let how = if c.test_only { Use::Test } else { Use::Whole };
                    let (Some(Some(var)), rest) = (c.steps.first(), &c.steps[1..]) else {
                        continue;
                    };
                    if var == "item" {
                        if let Some((root, base)) = item {
                            let mut all = base.clone();
                            all.extend(rest.iter().cloned());
                            r.read(*root, &all, how, 0);
                        }
                    } else if let Some(root) = Root::from_name(var) {
                        r.read(root, rest, how, 0);
                    }
                }
            }
        }
        r.out
    }
}

struct Resolver<'r> {
    rules: &'r Rules,
    out: ObjectReads,
}

impl Resolver<'_> {
    fn everything(&mut self) {
        self.out.execution = Keep::Whole;
        for k in self.out.related.values_mut() {
            *k = Keep::Whole;
        }
    }

    fn read(&mut self, root: Root, steps: &[Option<String>], how: Use, depth: usize) {
        // values read values without cycles (the loader rejects them); stay safe regardless
        if depth > self.rules.values.len() + 1 {
            self.everything();
            return;
        }
        let whole = how != Use::Presence;
        match root {
            Root::Execution => self.out.execution.insert(steps, whole),
            // the lock child is the execution object; the other children are kept whole
            Root::Children => match steps.split_first() {
                Some((Some(child), rest)) if *child == self.rules.lock => {
                    self.out.execution.insert(rest, whole)
                }
                Some((Some(_), _)) => {}
                _ => {
                    if whole {
                        self.out.execution = Keep::Whole;
                    }
                }
            },
            Root::Related => self.related(steps, how),
            Root::Values => self.value(steps, how, depth),
            _ => {}
        }
    }

    fn related(&mut self, steps: &[Option<String>], how: Use) {
        let whole = how != Use::Presence;
        let Some((Some(name), rest)) = steps.split_first() else {
            if whole {
                self.everything();
            }
            return;
        };
        let Some(keep) = self.out.related.get_mut(name) else {
            return;
        };
        // entries are `{ref, object}`; `ref` is what `from` reads (whole)
        match rest {
            [] | [_] => {
                if whole {
                    *keep = Keep::Whole;
                }
            }
            [_, Some(field), more @ ..] if field == "object" => keep.insert(more, whole),
            [_, Some(_), ..] => {}
            [_, None, ..] => *keep = Keep::Whole,
        }
    }

    fn value(&mut self, steps: &[Option<String>], how: Use, depth: usize) {
        let Some((Some(name), rest)) = steps.split_first() else {
            if how != Use::Presence {
                self.everything();
            }
            return;
        };
        let Some(v) = self.rules.values.iter().find(|v| &v.name == name) else {
            return;
        };
        let (source, what, how) = match &v.kind {
            ValueKind::Path(p) => (p, rest, how),
            // a list's elements are the nodes selected; whether it is empty, their presence
            ValueKind::List(p, _) => match rest.split_first() {
                None if how == Use::Test => return,
                None => (p, rest, Use::Whole),
                Some((None, more)) => (p, more, how),
                Some((Some(_), _)) => (p, &[][..], Use::Whole),
            },
            // a record found is true; its `value` is the node
            ValueKind::Find(p, _) => match rest.split_first() {
                None if how == Use::Test => return,
                None => (p, rest, Use::Whole),
                Some((Some(f), more)) if f == "value" => (p, more, how),
                Some((Some(f), _)) if f == "index" => return,
                Some(_) => (p, &[][..], Use::Whole),
            },
            // computed from what they read themselves
            _ => return,
        };
        let Some(root) = source.root() else { return };
        let (mut all, cut) = source.read_steps();
        if cut {
            self.read(root, &all, Use::Whole, depth + 1);
            return;
        }
        all.extend(what.iter().cloned());
        self.read(root, &all, how, depth + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn steps(s: &str) -> Steps {
        s.split('.')
            .map(|p| (p != "*").then(|| p.to_string()))
            .collect()
    }

    #[test]
    fn a_projection_keeps_what_is_read_and_the_places_of_what_is_counted() {
        let mut k = Keep::nothing();
        k.insert(&steps("status.steps.*.terminated.exitCode"), true);
        k.insert(&steps("status.conditions"), true);
        k.insert(&steps("status.childReferences.*"), false);
        let mut v = json!({
            "spec": {"big": [1, 2, 3]},
            "status": {
                "podName": "p",
                "conditions": [{"type": "Succeeded", "status": "True", "extra": 1}],
                "steps": [{"name": "a", "terminated": {"exitCode": 1, "reason": "Error"}}, {"name": "b"}],
                "childReferences": [{"name": "x"}, {"name": "y"}]
            }
        });
        k.project(&mut v);
        assert_eq!(
            v,
            json!({"status": {
                "conditions": [{"type": "Succeeded", "status": "True", "extra": 1}],
                "steps": [{"terminated": {"exitCode": 1}}, {}],
                "childReferences": [{}, {}]
            }})
        );
    }

    #[test]
    fn whole_absorbs_parts_and_runtime_metadata_is_always_kept() {
        let mut k = Keep::nothing();
        k.insert(&steps("status.x"), true);
        let mut w = Keep::nothing();
        w.insert(&steps("status"), true);
        k.merge(&w);
        assert_eq!(k, w);
        k.insert(&steps("status.y.z"), true);
        assert_eq!(k, w);
        let full = Keep::nothing().with_runtime_fields();
        let mut v = json!({"apiVersion": "v1", "kind": "K", "spec": 1,
            "metadata": {"name": "n", "uid": "u", "labels": {"a": "b"}, "annotations": {"big": "x"},
                "creationTimestamp": "t"}});
        full.project(&mut v);
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "K",
                "metadata": {"name": "n", "uid": "u", "labels": {"a": "b"}}})
        );
        assert!(full.keeps("metadata") && !full.keeps("spec"));
        assert!(Keep::Whole.keeps("spec"));
    }

    #[test]
    fn a_name_read_inside_a_list_keeps_the_list() {
        let mut k = Keep::nothing();
        k.insert(&steps("items.length"), true);
        let mut v = json!({"items": [{"a": 1}]});
        k.project(&mut v);
        assert_eq!(v, json!({"items": [{"a": 1}]}));
    }
}
