//! Playing Tekton: the PipelineRun and TaskRun status Tekton would write, shared with the load
//! harness (see `lifecycle_testsupport::tekton`).

pub use lifecycle_testsupport::tekton::*;
