use super::*;

#[tokio::test]
async fn rules_changes_are_reloaded_live_and_broken_ones_rejected() {
    let s = Scope::new("reload").await;
    let rules = copy_rules(&s, "rules");
    let template = rules.with_file_name("templates").join("pipelinerun.yaml");
    // as in a Pod: rejected changes are also recorded as Events on the Pod
    let pod = "lifecycle-controller-5f7b9c8d4-q2w3e";
    let mut ctl = ControllerProcess::spawn_with_env(
        s.env,
        s.dir.path(),
        "ctl",
        &s.run_args(&rules, "1h"),
        &[("POD_NAME", pod), ("POD_NAMESPACE", &s.ns)],
    );
    ctl.wait_ready().await;
    let first = ctl.revision().await;
    assert_eq!(
        first,
        revision_of(&support::repo_root().join("lifecycle.yaml"))
    );

    let before = unique_name("before");
    let (run, _) = running(&s, &before, "default/deployment/before").await;
    let v = s.get(&before).await.unwrap();
    assert_eq!(v["status"]["rulesRevision"], first.as_str());
    let r = s.run(&run).await.unwrap();
    assert!(
        r["metadata"]["labels"].get("example.com/variant").is_none(),
        "{r}"
    );
    assert_eq!(
        r["spec"]["taskRunTemplate"]["serviceAccountName"],
        "kubernaut-workflow-runner"
    );

    // a valid change: a new label in the template, a new default for a setting
    edit(
        &template,
        "    kubernaut.ai/source-namespace:",
        "    example.com/variant: \"v2\"\n    kubernaut.ai/source-namespace:",
    );
    edit(
        &rules,
        "runnerServiceAccount: kubernaut-workflow-runner",
        "runnerServiceAccount: runner-v2",
    );
    // and it applies to the resources in flight too (the default, `pinned`, keeps them on the
    // revision they started with: see pinned.rs)
    let changed = std::fs::read_to_string(&rules).expect("rules");
    std::fs::write(&rules, format!("{changed}\nrollout:\n  policy: latest\n")).expect("rules");
    let second = revision_of(&rules);
    assert_ne!(second, first);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the changed rules to be loaded",
        || async { (ctl.revision().await == second).then_some(()) },
    )
    .await;
    let after = unique_name("after");
    let (run2, _) = running(&s, &after, "default/deployment/after").await;
    let v = s.get(&after).await.unwrap();
    assert_eq!(v["status"]["rulesRevision"], second.as_str());
    let r = s.run(&run2).await.unwrap();
    assert_eq!(r["metadata"]["labels"]["example.com/variant"], "v2");
    assert_eq!(
        r["spec"]["taskRunTemplate"]["serviceAccountName"],
        "runner-v2"
    );
    // the run made under the first rules is left as it was
    let r = s.run(&run).await.unwrap();
    assert!(
        r["metadata"]["labels"].get("example.com/variant").is_none(),
        "{r}"
    );
    let m = ctl.metrics().await;
    assert!(
        metric_value(&m, "lifecycle_rules_reload_total{result=\"ok\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "lifecycle_rules_reload_total{result=\"error\"}"),
        0.0
    );

    // a broken change: rejected, reported, and the last good rules keep working
    let good = std::fs::read_to_string(&rules).unwrap();
    edit(&rules, "        to: Running\n", "        to: Runnning\n");
    let (code, body) = support::eventually(
        std::time::Duration::from_secs(30),
        "/readyz to show the rejected change",
        || async {
            ctl.readyz()
                .await
                .filter(|(_, body)| body.contains("REJECTED"))
        },
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("(revision {second})"))
            && body.contains("unknown phase `Runnning`")
            && body.contains("lifecycle.yaml:"),
        "{body}"
    );
    assert_eq!(
        ctl.metric("lifecycle_rules_reload_total{result=\"error\"}")
            .await,
        1.0
    );
    let log = ctl.log();
    assert!(
        log.contains("rules change rejected") && log.contains("unknown phase `Runnning`"),
        "{log}"
    );
    let rejected = support::eventually(
        std::time::Duration::from_secs(30),
        "the RulesRejected Event on the Pod",
        || async {
            use k8s_openapi::api::events::v1::Event;
            let events = kube::Api::<Event>::namespaced(s.admin.clone(), &s.ns)
                .list(&Default::default())
                .await
                .expect("listing Events");
            events.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("RulesRejected")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
            })
        },
    )
    .await;
    assert_eq!(rejected.type_.as_deref(), Some("Warning"));
    assert_eq!(
        rejected.regarding.as_ref().and_then(|r| r.kind.as_deref()),
        Some("Pod")
    );
    assert!(
        rejected
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("unknown phase `Runnning`"),
        "{rejected:?}"
    );
    let third = unique_name("third");
    let (run3, _) = running(&s, &third, "default/deployment/third").await;
    let v = s.get(&third).await.unwrap();
    assert_eq!(v["status"]["rulesRevision"], second.as_str());
    let r = s.run(&run3).await.unwrap();
    assert_eq!(r["metadata"]["labels"]["example.com/variant"], "v2");

    // the resource started under the first rules finishes under the rules acting now
    let started = text(&s.get(&before).await.unwrap(), "/status/startTime");
    succeed(&s, &run, &started).await;
    let v = s.wait_phase(&before, "Completed").await;
    assert_eq!(v["status"]["rulesRevision"], second.as_str());

    // putting the good rules back clears the report
    std::fs::write(&rules, good).unwrap();
    support::eventually(
        std::time::Duration::from_secs(30),
        "/readyz to drop the report",
        || async {
            ctl.readyz()
                .await
                .filter(|(_, body)| !body.contains("REJECTED"))
        },
    )
    .await;
    assert_eq!(ctl.revision().await, second);
    assert_eq!(
        ctl.metric("lifecycle_rules_reload_total{result=\"error\"}")
            .await,
        1.0
    );
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(support::repo_root().join(path)).expect("repository file")
}

#[tokio::test]
async fn rules_mounted_from_configmaps_load_and_reload_on_the_kubelets_symlink_swap() {
    // as deploy/deployment.yaml mounts them: the rules ConfigMap at /etc/lifecycle, the
    // templates ConfigMap at /etc/lifecycle/templates
    let s = Scope::new("configmap").await;
    let etc = s.dir.path().join("etc-lifecycle");
    let rules_files = [("lifecycle.yaml", repo_file("lifecycle.yaml"))];
    let mut rules_volume = ConfigMapVolume::create(&etc, &rules_files);
    let template_files = |pipelinerun: String| {
        [
            (
                "failure-summary.txt",
                repo_file("templates/failure-summary.txt"),
            ),
            ("pipelinerun.yaml", pipelinerun),
        ]
    };
    let mut templates = ConfigMapVolume::create(
        &etc.join("templates"),
        &template_files(repo_file("templates/pipelinerun.yaml")),
    );
    let rules = etc.join("lifecycle.yaml");
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &s.run_args(&rules, "1h"));
    ctl.wait_ready().await;
    let first = ctl.revision().await;
    assert_eq!(
        first,
        revision_of(&support::repo_root().join("lifecycle.yaml"))
    );
    let before = unique_name("before");
    let (run, _) = running(&s, &before, "default/deployment/before").await;
    let r = s.run(&run).await.unwrap();
    assert!(
        r["metadata"]["labels"].get("example.com/variant").is_none(),
        "{r}"
    );

    // `kubectl apply -k deploy/` with a changed template: the kubelet swaps the folder
    templates.update(&template_files(
        repo_file("templates/pipelinerun.yaml").replacen(
            "    kubernaut.ai/source-namespace:",
            "    example.com/variant: \"v2\"\n    kubernaut.ai/source-namespace:",
            1,
        ),
    ));
    let second = revision_of(&rules);
    assert_ne!(second, first);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the swapped templates to be loaded",
        || async { (ctl.revision().await == second).then_some(()) },
    )
    .await;
    let after = unique_name("after");
    let (run, _) = running(&s, &after, "default/deployment/after").await;
    let r = s.run(&run).await.unwrap();
    assert_eq!(r["metadata"]["labels"]["example.com/variant"], "v2");
    assert_eq!(
        s.get(&after).await.unwrap()["status"]["rulesRevision"],
        second.as_str()
    );

    // and a changed setting default in the rules ConfigMap
    rules_volume.update(&[(
        "lifecycle.yaml",
        repo_file("lifecycle.yaml").replacen(
            "runnerServiceAccount: kubernaut-workflow-runner",
            "runnerServiceAccount: runner-v3",
            1,
        ),
    )]);
    let third = revision_of(&rules);
    assert_ne!(third, second);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the swapped rules to be loaded",
        || async { (ctl.revision().await == third).then_some(()) },
    )
    .await;
    let last = unique_name("last");
    let (run, _) = running(&s, &last, "default/deployment/last").await;
    let r = s.run(&run).await.unwrap();
    assert_eq!(
        r["spec"]["taskRunTemplate"]["serviceAccountName"],
        "runner-v3"
    );
    assert_eq!(r["metadata"]["labels"]["example.com/variant"], "v2");
    assert_eq!(
        ctl.metric("lifecycle_rules_reload_total{result=\"error\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_reload_that_moves_the_execution_namespace_never_fails_running_workflows() {
    // the execution namespace comes from the rules file here (no --set), as in a deployment
    // that changes it in its ConfigMap
    let s = Scope::new("move").await;
    let rules = copy_rules(&s, "rules");
    let setting = |ns: &str| format!("executionNamespace: {ns}");
    edit(
        &rules,
        &setting("kubernaut-workflows"),
        &setting(&s.exec_ns),
    );
    let moved_to = s.env.namespace("move-y").await;
    support::grant_namespaced_rbac(s.env, &support::default_execution_namespace(), &moved_to).await;
    let mut args = s.run_args(&rules, "1h");
    let at = args
        .iter()
        .position(|a| a.starts_with("executionNamespace="))
        .expect("the execution namespace argument");
    args.drain(at - 1..=at);
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    ctl.wait_ready().await;
    let name = unique_name("moving");
    let (run, started) = running(&s, &name, "default/deployment/moving").await;

    edit(&rules, &setting(&s.exec_ns), &setting(&moved_to));
    let second = revision_of(&rules);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the changed rules to be loaded",
        || async { (ctl.revision().await == second).then_some(()) },
    )
    .await;

    // the workflow still runs (its run is where it was created); it ends when its run ends
    succeed(&s, &run, &started).await;
    let v = s
        .wait(&name, "a terminal phase", |v| {
            matches!(v["status"]["phase"].as_str(), Some("Completed" | "Failed"))
        })
        .await;
    assert_eq!(
        v["status"]["phase"],
        "Completed",
        "a running workflow was failed by a rules change: {}",
        serde_json::to_string_pretty(&v["status"]).unwrap_or_default()
    );
}
