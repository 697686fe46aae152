//! `rollout: {policy: pinned}`: a reload that changes a phase (what its transition writes) while
//! resources are in it. The resources in flight finish by the revision they started with; those started after the
//! change follow the new one; the metric of resources per revision shows both; the old revision
//! is unloaded once no resource is pinned to it.

use super::*;

#[tokio::test]
async fn with_a_pinned_rollout_resources_in_flight_finish_by_their_revision() {
    let s = Scope::new("pinned").await;
    let rules = copy_rules(&s, "rules");
    let text = std::fs::read_to_string(&rules).expect("rules");
    std::fs::write(&rules, format!("{text}\nrollout:\n  policy: pinned\n")).expect("rules");
    let first = revision_of(&rules);
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &s.run_args(&rules, "1h"));
    ctl.wait_ready().await;
    assert_eq!(ctl.revision().await, first);

    let before = unique_name("before");
    let (run, started) = running(&s, &before, "default/deployment/before").await;

    // the change, to Running's transition `succeeded`: another Ready message on success
    edit(
        &rules,
        "            message: Workflow completed successfully\n",
        "            message: Workflow completed under the changed rules\n",
    );
    let second = revision_of(&rules);
    assert_ne!(second, first);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the changed rules to be loaded",
        || async { (ctl.revision().await == second).then_some(()) },
    )
    .await;
    let after = unique_name("after");
    let (run2, started2) = running(&s, &after, "default/deployment/after").await;
    assert_eq!(
        s.get(&after).await.unwrap()["status"]["rulesRevision"],
        second.as_str()
    );
    assert_eq!(
        s.get(&before).await.unwrap()["status"]["rulesRevision"],
        first.as_str()
    );
    let m = ctl.metrics().await;
    for revision in [&first, &second] {
        let series = format!("lifecycle_resources{{phase=\"Running\",revision=\"{revision}\"}}");
        assert_eq!(metric_value(&m, &series), 1.0, "{series} in\n{m}");
    }

    // both runs succeed: each resource ends as the rules it started with say
    succeed(&s, &run, &started).await;
    succeed(&s, &run2, &started2).await;
    let done = s.wait_phase(&before, "Completed").await;
    assert_eq!(done["status"]["rulesRevision"], first.as_str());
    assert_condition(
        &done,
        "Ready",
        "True",
        "Succeeded",
        "Workflow completed successfully",
    );
    let done2 = s.wait_phase(&after, "Completed").await;
    assert_eq!(done2["status"]["rulesRevision"], second.as_str());
    assert_condition(
        &done2,
        "Ready",
        "True",
        "Succeeded",
        "Workflow completed under the changed rules",
    );

    // no resource is pinned to the first revision any more: it is unloaded
    support::eventually(
        std::time::Duration::from_secs(90),
        "the first revision to be unloaded",
        || async {
            let log = ctl.log();
            (log.contains("rules revision unloaded") && log.contains(first.as_str())).then_some(())
        },
    )
    .await;
}
