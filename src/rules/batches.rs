//! The combined templates of each block of effects (see `render::batch`): when the rules load,
//! the templates a step evaluates in one context are compiled together, so that a decision
//! evaluates them in one minijinja evaluation state instead of one each.

use super::Rules;
use super::compiled::{ActionRules, TmplTree};
use crate::render::{Templates, Tmpl};

/// Gives every block of effects of `rules` its combined templates.
pub(super) fn plan(rules: &mut Rules) {
    let Rules {
        templates,
        phases,
        cooldown,
        on_delete,
        audit,
        ..
    } = rules;
    let record = audit.record.as_ref();
    let actions = phases
        .iter_mut()
        .flat_map(|p| {
            p.sync
                .iter_mut()
                .chain(p.transitions.iter_mut().map(|t| &mut t.action))
        })
        .chain(cooldown.iter_mut().map(|c| &mut c.release))
        .chain(on_delete.iter_mut());
    for action in actions {
        plan_action(templates, action, record);
    }
}

fn plan_action(templates: &mut Templates, action: &mut ActionRules, record: Option<&TmplTree>) {
    let mut status = Vec::new();
    for tree in &action.status {
        tree_ids(tree, &mut status);
    }
    for c in &action.conditions {
        status.extend(
            [&c.status, &c.reason, &c.message]
                .into_iter()
                .filter_map(id),
        );
    }
    action.batches.status = templates.add_batch(&status);

    let mut effects = Vec::new();
    for (_, tree) in &action.patch {
        tree_ids(tree, &mut effects);
    }
    effects.extend(action.events.iter().filter_map(|e| id(&e.message)));
    if !action.audit.is_empty() {
        if let Some(r) = record {
            tree_ids(r, &mut effects);
        }
        for tree in &action.audit {
            tree_ids(tree, &mut effects);
        }
    }
    for m in &action.metrics {
        effects.extend(m.labels.iter().filter_map(|(_, t)| id(t)));
        effects.extend(m.value.iter().filter_map(id));
    }
    action.batches.effects = templates.add_batch(&effects);
}

fn id(t: &Tmpl) -> Option<usize> {
    match t {
        Tmpl::Literal(_) => None,
        Tmpl::Text(id) | Tmpl::Expr(id) => Some(*id),
    }
}

fn tree_ids(tree: &TmplTree, out: &mut Vec<usize>) {
    match tree {
        TmplTree::Leaf(t) => out.extend(id(t)),
        TmplTree::Remove => {}
        TmplTree::Map(entries) => entries.iter().for_each(|(_, t)| tree_ids(t, out)),
        TmplTree::List(items) => items.iter().for_each(|t| tree_ids(t, out)),
    }
}
