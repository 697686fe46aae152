//! What the integration tests (`tests/integration/`) and the load harness (`tools/bench/`) both
//! need to run against a real control plane:
//!
//! - [`controlplane`]: the local kube-apiserver + etcd of `scripts/testenv` (start, stop, where
//!   its kubeconfig, logs and process ids are), clients for its identities, the matching kubectl,
//!   and the CRDs of `deploy/crds/` and `tests/crds/`;
//! - [`tekton`]: playing Tekton, which does not run there: the TaskRuns and the PipelineRun and
//!   TaskRun status the Tekton controller would write.
//!
//! Nothing here knows the controller under test; each user starts it its own way.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod controlplane;
pub mod tekton;

/// The repository's root folder (this package lives in `tests/support/`).
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::canonicalize(&here).unwrap_or(here)
    })
}

/// The HTTP status code of an API error, if the error is one.
pub fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
