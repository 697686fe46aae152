//! Which revision of the rules decides a resource after a rules change (`rollout`).
//!
//! The latest rules say: a resource whose status records another revision keeps being decided
//! by that revision when the policy of its phase is `pinned`, until it reaches a terminal phase.
//! A resource in a phase the latest rules map with `renamedPhases` follows the latest rules (the
//! mapping says where it continues). Pure: the shell keeps the revisions loaded and asks.

use super::scope::phase_of;
use crate::rules::Rules;
use crate::rules::model::RolloutPolicy;
use serde_json::Value;

/// The revision that decides `resource` instead of `latest`, when its phase is pinned; `None`
/// when the latest rules decide it.
pub fn pinned_revision<'r>(latest: &Rules, resource: &'r Value) -> Option<&'r str> {
    let status = resource.get("status")?;
    let recorded = status
        .get(latest.resource.status.revision.as_ref()?)?
        .as_str()
        .filter(|r| !r.is_empty() && *r != latest.revision)?;
    let named = status.get(&latest.resource.status.phase)?.as_str()?;
    if latest.phase_index(named).is_none() && latest.resolve_phase(named).is_some() {
        // mapped by renamedPhases: it continues in the new phase, by the new rules
        return None;
    }
    let Ok(index) = phase_of(latest, resource) else {
        // a phase only its own revision knows
        return Some(recorded);
    };
    let pinned = latest.rollout.phases.get(index) == Some(&RolloutPolicy::Pinned);
    (pinned && !latest.phases[index].terminal).then_some(recorded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Sources;
    use serde_json::json;

    fn rules(rollout: &str) -> Rules {
        let text = format!(
            "{}{rollout}",
            include_str!("../../tests/fixtures/rules/valid/renamed-phases.yaml")
                .replace("templates: _templates\n", "")
                .replace(
                    "  component: task-controller\n",
                    "  component: task-controller\n  status:\n    revision: revision\n"
                )
        );
        let sources = Sources::from_text("r.yaml", text).with_template(
            "job.yaml",
            include_str!("../../tests/fixtures/rules/valid/_templates/job.yaml"),
        );
        Rules::compile(&sources, &[]).unwrap()
    }

    fn at(phase: &str, revision: &str) -> Value {
        json!({"status": {"phase": phase, "revision": revision}})
    }

    #[test]
    fn only_pinned_phases_keep_their_revision_and_never_terminal_or_renamed_ones() {
        let latest = rules("rollout:\n  policy: latest\n");
        assert!(
            latest.resource.status.revision.is_some(),
            "the fixture records a revision"
        );
        assert_eq!(pinned_revision(&latest, &at("Executing", "old")), None);
        // the default: pinned
        assert_eq!(
            pinned_revision(&rules(""), &at("Executing", "old")),
            Some("old")
        );
        let pinned = rules("rollout:\n  policy: pinned\n  phases:\n    Pending: latest\n");
        assert_eq!(
            pinned_revision(&pinned, &at("Executing", "old")),
            Some("old")
        );
        assert_eq!(pinned_revision(&pinned, &at("Pending", "old")), None);
        // its own revision, no revision, or a renamed phase: the latest rules
        let own = pinned.revision.clone();
        assert_eq!(pinned_revision(&pinned, &at("Executing", &own)), None);
        assert_eq!(
            pinned_revision(&pinned, &json!({"status": {"phase": "Executing"}})),
            None
        );
        assert_eq!(pinned_revision(&pinned, &at("Running", "old")), None);
        let terminal = pinned
            .phases
            .iter()
            .find(|p| p.terminal)
            .expect("a terminal phase")
            .name
            .clone();
        assert_eq!(pinned_revision(&pinned, &at(&terminal, "old")), None);
        // a phase the latest rules do not know stays with the revision that does
        assert_eq!(pinned_revision(&pinned, &at("Gone", "old")), Some("old"));
    }
}
