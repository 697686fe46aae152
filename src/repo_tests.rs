//! Checks that files generated from others stay in sync.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn deploy_rules_are_a_copy_of_the_top_level_rules() {
    let r = root();
    let hint = "run scripts/sync-deploy-rules";
    let top = std::fs::read(r.join("lifecycle.yaml")).unwrap();
    let copy = std::fs::read(r.join("deploy/base/rules/lifecycle.yaml")).unwrap_or_default();
    assert!(
        top == copy,
        "deploy/base/rules/lifecycle.yaml differs from lifecycle.yaml: {hint}"
    );
    let kustomization = std::fs::read_to_string(r.join("deploy/base/kustomization.yaml")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(r.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for name in &names {
        let a = std::fs::read(r.join("templates").join(name)).unwrap();
        let b = std::fs::read(r.join("deploy/base/rules/templates").join(name)).unwrap_or_default();
        assert!(
            a == b,
            "deploy/base/rules/templates/{name} differs from templates/{name}: {hint}"
        );
        assert!(
            kustomization.contains(&format!("rules/templates/{name}")),
            "deploy/kustomization.yaml does not list rules/templates/{name} in the lifecycle-templates ConfigMap"
        );
    }
    let copies = std::fs::read_dir(r.join("deploy/base/rules/templates"))
        .unwrap()
        .count();
    assert_eq!(
        copies,
        names.len(),
        "deploy/base/rules/templates has files templates/ lacks: {hint}"
    );
}
