//! `resource`: the governed resource's kind and the fields the engine maintains on it.

use crate::rules::compiled::ResourceRules;
use crate::rules::compiler::Compiler;
use crate::rules::locate::DocPath;
use crate::rules::model::ResourceSpec;

impl Compiler<'_> {
    /// The governed resource.
    pub(crate) fn compile_resource(&mut self, res: &ResourceSpec) -> ResourceRules {
        let rat = DocPath::root().key("resource");
        self.check_api_version(&rat.key("apiVersion"), &res.api_version);
        self.check_kind(&rat.key("kind"), &res.kind);
        ResourceRules {
            api_version: res.api_version.clone(),
            kind: res.kind.clone(),
            finalizer: res.finalizer.clone(),
            field_manager: res.field_manager.clone(),
            component: res.component.clone(),
            status: res.status.clone(),
        }
    }
}
