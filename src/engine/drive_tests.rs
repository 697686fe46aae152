//! The rules of the one loop, over a world held in memory: what a refused create leads to, when
//! a reconcile gives up, and how rules that never settle are reported.

use super::drive::{DriveError, MAX_DECISIONS, Outcome, World, drive, run_ready};
use super::status::apply_merge_patch;
use super::{ActionError, Decision, Effect, ObjectKey, Observation};
use crate::rules::Rules;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;

const NOW: f64 = 1_767_225_600.0;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A world whose API server answers from a map, refusing creates as told.
#[derive(Default)]
struct Memory {
    resource: Option<Value>,
    objects: BTreeMap<ObjectKey, Value>,
    /// How the next creates are refused (first first); with an object to leave in place.
    refusals: Vec<(ActionError, bool)>,
    /// Each decision, with the error its observation carried.
    decisions: Vec<(Option<ActionError>, bool, Decision)>,
    carried: Vec<Effect>,
}

impl World for Memory {
    type Error = Infallible;

    fn now(&self) -> f64 {
        NOW
    }

    fn resource(&self) -> Option<&Value> {
        self.resource.as_ref()
    }

    async fn execution(&mut self, key: &ObjectKey) -> Result<Option<Value>, Infallible> {
        Ok(self.objects.get(key).cloned())
    }

    async fn related(&mut self, key: &ObjectKey) -> Result<Option<Value>, Infallible> {
        Ok(self.objects.get(key).cloned())
    }

    async fn lookup(
        &mut self,
        request: &crate::engine::LookupRequest,
    ) -> Result<Vec<Value>, Infallible> {
        Ok(self
            .objects
            .values()
            .filter(|o| crate::engine::lookup_matches(request, o))
            .cloned()
            .collect())
    }

    async fn carry_out(&mut self, effect: &Effect) -> Outcome<Infallible> {
        self.carried.push(effect.clone());
        let Some(resource) = self.resource.as_mut() else {
            return Outcome::Gone;
        };
        match effect {
            Effect::AddFinalizer { finalizer } => {
                resource["metadata"]["finalizers"] = json!([finalizer]);
            }
            Effect::PatchStatus { patch } => {
                let status = resource
                    .as_object_mut()
                    .map(|m| m.entry("status").or_insert(json!({})));
                if let Some(status) = status {
                    apply_merge_patch(status, patch);
                }
            }
            Effect::CreateExecution { object } => {
                let key = ObjectKey::of(object).expect("a rendered object has an identity");
                if !self.refusals.is_empty() {
                    let (error, leave) = self.refusals.remove(0);
                    if leave {
                        self.objects.insert(key, object.clone());
                    }
                    return Outcome::Refused(error);
                }
                self.objects.insert(key, object.clone());
            }
            _ => {}
        }
        Outcome::Done
    }

    fn decided(&mut self, observation: &Observation, decision: &Decision) {
        self.decisions.push((
            observation.error.clone(),
            observation.execution.is_some(),
            decision.clone(),
        ));
    }
}

fn workflow() -> Value {
    json!({
        "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
        "metadata": {"name": "restart-nginx-7f3a", "namespace": "kubernaut-system", "uid": "u-1",
                     "generation": 1, "resourceVersion": "1"},
        "spec": {
            "remediationRequestRef": {"name": "rr-2f9c1d", "namespace": "kubernaut-system"},
            "workflowRef": {"workflowId": "restart-deployment", "version": "1.2.0",
                "containerImage": "quay.io/kubernaut/workflows/restart-deployment:v1.2.0"},
            "targetResource": "default/deployment/nginx",
            "parameters": {"NAMESPACE": "default"}
        }
    })
}

fn default_rules() -> Rules {
    Rules::load(&root().join("lifecycle.yaml"), &[]).expect("default rules load")
}

fn refusal(code: u16, reason: &str) -> ActionError {
    ActionError {
        child: None,
        action: "create".into(),
        code,
        reason: reason.into(),
        message: format!("{reason} from the API server"),
    }
}

fn run(rules: &Rules, world: &mut Memory) -> Result<Option<f64>, DriveError<Infallible>> {
    run_ready(drive(rules, world)).expect("an in-memory world never waits")
}

fn phase(world: &Memory) -> &str {
    world
        .resource
        .as_ref()
        .and_then(|r| r.pointer("/status/phase"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

#[test]
fn already_exists_with_the_object_there_is_observed_as_the_object() {
    let rules = default_rules();
    let mut world = Memory {
        resource: Some(workflow()),
        refusals: vec![(refusal(409, "AlreadyExists"), true)],
        ..Memory::default()
    };
    run(&rules, &mut world).expect("settles");
    let after_create = world
        .decisions
        .iter()
        .position(|(_, exists, _)| *exists)
        .expect("a decision saw the object");
    assert!(
        world.decisions.iter().all(|(error, _, _)| error.is_none()),
        "no decision saw the AlreadyExists error"
    );
    assert_eq!(
        world.decisions[after_create].2.transition.as_deref(),
        Some("started")
    );
    assert_eq!(phase(&world), "Running");
}

#[test]
fn already_exists_with_the_object_gone_is_shown_to_the_rules() {
    let rules = default_rules();
    let mut world = Memory {
        resource: Some(workflow()),
        refusals: vec![(refusal(409, "AlreadyExists"), false)],
        ..Memory::default()
    };
    run(&rules, &mut world).expect("settles");
    let seen: Vec<u16> = world
        .decisions
        .iter()
        .filter_map(|(e, _, _)| e.as_ref().map(|e| e.code))
        .collect();
    assert_eq!(seen, [409], "exactly one decision saw the error");
    assert_eq!(phase(&world), "Failed");
    assert!(world.objects.is_empty());
}

#[test]
fn a_permanent_create_refusal_is_decided_on_and_a_transient_one_gives_up() {
    let rules = default_rules();
    let mut world = Memory {
        resource: Some(workflow()),
        refusals: vec![(refusal(403, "Forbidden"), false)],
        ..Memory::default()
    };
    run(&rules, &mut world).expect("settles");
    assert_eq!(phase(&world), "Failed");

    let mut world = Memory {
        resource: Some(workflow()),
        refusals: vec![(refusal(503, "ServiceUnavailable"), false)],
        ..Memory::default()
    };
    let err = run(&rules, &mut world).expect_err("a transient refusal gives up");
    assert!(matches!(err, DriveError::Refused { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "the create of PipelineRun kubernaut-workflows/wfe-f3457dcc8fbcb6d9 failed: 503 \
         ServiceUnavailable: ServiceUnavailable from the API server"
    );
    assert!(matches!(
        world.carried.last(),
        Some(Effect::CreateExecution { .. })
    ));
    assert!(
        world.decisions.iter().all(|(e, _, _)| e.is_none()),
        "the rules never see a transient error"
    );
}

#[test]
fn a_created_object_ends_the_round_and_the_next_decision_sees_it() {
    let rules = default_rules();
    let mut world = Memory {
        resource: Some(workflow()),
        ..Memory::default()
    };
    run(&rules, &mut world).expect("settles");
    let creating = world
        .decisions
        .iter()
        .position(|(_, _, d)| {
            d.effects
                .iter()
                .any(|e| matches!(e, Effect::CreateExecution { .. }))
        })
        .expect("a decision creates the run");
    assert!(
        world.decisions[creating + 1].1,
        "the next decision sees the run"
    );
}

/// Rules whose terminal phase writes a new status on every decision.
fn restless_rules(dir: &Path) -> Rules {
    let fixtures = root().join("tests/fixtures/rules/valid");
    let text = std::fs::read_to_string(fixtures.join("minimal.yaml")).unwrap();
    let text = text.replace(
        "  Done:\n    terminal: true\n",
        "  Done:\n    terminal: true\n    sync:\n      status:\n        count: \"{{ (resource.status.count or 0) + 1 }}\"\n",
    );
    assert!(text.contains("count"), "the fixture changed shape");
    std::fs::create_dir_all(dir.join("_templates")).unwrap();
    std::fs::copy(
        fixtures.join("_templates/job.yaml"),
        dir.join("_templates/job.yaml"),
    )
    .unwrap();
    std::fs::write(dir.join("rules.yaml"), text).unwrap();
    Rules::load(&dir.join("rules.yaml"), &[]).expect("the restless rules load")
}

#[test]
fn rules_that_never_settle_fail_naming_the_write_that_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let rules = restless_rules(dir.path());
    let mut world = Memory {
        resource: Some(json!({
            "apiVersion": "example.com/v1", "kind": "Task",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u-1"},
            "spec": {"image": "busybox"}
        })),
        ..Memory::default()
    };
    let err = run(&rules, &mut world).expect_err("the rules never settle");
    let DriveError::Unsettled(u) = &err else {
        panic!("expected Unsettled, got {err}");
    };
    assert_eq!(world.decisions.len(), MAX_DECISIONS);
    assert!(
        u.message.starts_with(&format!(
            "the rules did not settle after {MAX_DECISIONS} decisions: the status write {{\"count\":"
        )),
        "{}",
        u.message
    );
    assert!(
        u.message.ends_with("repeats in phase Done"),
        "{}",
        u.message
    );
}

#[test]
fn run_ready_finishes_what_never_waits_and_refuses_what_does() {
    assert_eq!(run_ready(async { 7 }), Some(7));
    assert_eq!(run_ready(std::future::pending::<u8>()), None);
}
