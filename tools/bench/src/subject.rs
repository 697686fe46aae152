//! What the harness takes from the rules file it is given (loaded and checked by the engine's own
//! loader, [`lifecycle_engine::rules`]): the governed kind, the kind of the child it creates and
//! where, the owner labels that tie a child to its resource, and the child's template (which the
//! hot-reload measurement edits).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, ensure};
use kube::api::{ApiResource, GroupVersionKind};
use lifecycle_engine::render::JValue;
use lifecycle_engine::rules::Rules;
use lifecycle_testsupport::tekton::taskruns;
use serde_json::json;

/// The rules' kinds, execution namespace, owner labels and execution template.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The governed resource (`resource.apiVersion`/`kind`).
    pub resource: ApiResource,
    /// The execution object, one per resource (`execution.apiVersion`/`kind`).
    pub execution: ApiResource,
    /// Where the execution objects are (`execution.namespace`, rendered).
    pub execution_namespace: String,
    /// Label on an execution object naming its resource (`execution.ownerLabels.name`).
    pub owner_name_label: String,
    /// Label on an execution object naming its resource's namespace
    /// (`execution.ownerLabels.namespace`).
    pub owner_namespace_label: String,
    /// The templates folder, relative to the rules file's folder.
    pub templates: PathBuf,
    /// The execution object's template, relative to the rules file's folder.
    pub execution_template: PathBuf,
}

impl Subject {
    /// Loads and checks `file` (its problems are the error, as `lifecycle check` reports them).
    pub fn from_rules(file: &Path) -> Result<Subject> {
        let rules = Rules::load(file, &[]).map_err(|e| anyhow!("{e}"))?;
        let templates = PathBuf::from(rules.raw.templates.as_deref().unwrap_or("templates"));
        Ok(Subject {
            resource: api_resource(&rules.resource.api_version, &rules.resource.kind),
            execution: api_resource(&rules.execution.api_version, &rules.execution.kind),
            execution_namespace: execution_namespace(&rules)
                .with_context(|| format!("{}: execution.namespace", file.display()))?,
            owner_name_label: rules.execution.owner_labels.name.clone(),
            owner_namespace_label: rules.execution.owner_labels.namespace.clone(),
            execution_template: templates.join(&rules.execution.template_name),
            templates,
        })
    }

    /// Plural names of the resources whose requests count as the controller's in the apiserver's
    /// figures: the governed kind, the execution kind, TaskRuns and Events.
    pub fn counted_resources(&self) -> Vec<String> {
        vec![
            self.resource.plural.clone(),
            self.execution.plural.clone(),
            taskruns().plural,
            "events".to_string(),
        ]
    }

    /// The label selector of the execution objects of the resources in `namespace`.
    pub fn owned_in(&self, namespace: &str) -> String {
        format!("{}={namespace}", self.owner_namespace_label)
    }
}

/// The resource of `kind` in `api_version` (`group/version`, or `version` for the core group).
fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// The execution namespace, rendered for two different resources: the harness watches one
/// namespace, so the rules must not put the runs of different resources in different ones.
fn execution_namespace(rules: &Rules) -> Result<String> {
    let render = |namespace: &str, name: &str| -> Result<String> {
        let resource = json!({
            "apiVersion": rules.resource.api_version,
            "kind": rules.resource.kind,
            "metadata": {"namespace": namespace, "name": name},
            "spec": {},
        });
        let ctx = JValue::from_serialize(json!({
            "settings": rules.settings,
            "resource": resource,
        }));
        let Some(namespace) = &rules.execution.namespace else {
            anyhow::bail!(
                "the execution object is cluster-scoped: the harness needs one namespace to watch"
            );
        };
        Ok(rules.templates.text(namespace, &ctx)?)
    };
    let one = render("bench-a", "a")?;
    let other = render("bench-b", "b")?;
    ensure!(
        one == other && !one.is_empty(),
        "renders `{one}` for one resource and `{other}` for another: the harness needs one \
         execution namespace, whatever the resource"
    );
    Ok(one)
}
