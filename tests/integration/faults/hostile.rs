use super::*;

#[derive(Debug)]
enum Expect {
    /// The API server refuses the create (422).
    Rejected,
    /// Failed validation with this exact message, no run.
    Fails(String),
    /// Runs (the run carries the target verbatim), completes, and its lock is released.
    Runs,
}

fn parts_message(n: usize) -> String {
    format!(
        "targetResource must be in format {{namespace}}/{{kind}}/{{name}} (namespaced) or {{kind}}/{{name}} (cluster-scoped), got {n} parts"
    )
}

fn empty_part(i: usize) -> String {
    format!("targetResource has empty part at position {i}")
}

/// Every hostile shape: (what, spec, expectation).
fn hostile_cases() -> Vec<(&'static str, Value, Expect)> {
    let big = "x".repeat(100_000);
    let with = |i: usize, f: &dyn Fn(&mut Value)| {
        let mut v = wfe_body(&format!("default/deployment/hostile-{i}"));
        f(&mut v);
        v
    };
    let target = |t: String| wfe_body(&t);
    let mut many = serde_json::Map::new();
    for i in 0..2000 {
        many.insert(format!("PARAM_{i:04}"), Value::String(format!("value-{i}")));
    }
    let odd = json!({
        "": "empty name",
        "a b": "space",
        "ключ": "cyrillic",
        "🙂": "emoji",
        "x=y": "a=b=c",
        "$(params.evil)": "$(context.pipelineRun.name)",
        "{{ 7*7 }}": "{% for x in range(9) %}{{ x }}{% endfor %}",
        "a\nb": "new\nline",
        "\u{202E}rtl": "\u{202E}gnp.exe",
        "TARGET_RESOURCE": "spoofed/deployment/elsewhere",
    });
    vec![
        (
            "empty containerImage",
            with(0, &|v| {
                v["spec"]["workflowRef"]["containerImage"] = json!("")
            }),
            Expect::Fails("workflowRef.containerImage is required".into()),
        ),
        (
            "empty targetResource",
            target(String::new()),
            Expect::Fails("targetResource is required".into()),
        ),
        (
            "blank targetResource",
            target("   ".into()),
            Expect::Fails(parts_message(1)),
        ),
        ("a//b", target("a//b".into()), Expect::Fails(empty_part(1))),
        ("/a/b", target("/a/b".into()), Expect::Fails(empty_part(0))),
        ("a/b/", target("a/b/".into()), Expect::Fails(empty_part(2))),
        ("//", target("//".into()), Expect::Fails(empty_part(0))),
        (
            "a/b/c/d",
            target("a/b/c/d".into()),
            Expect::Fails(parts_message(4)),
        ),
        (
            "100 KB one-part target",
            target(big.clone()),
            Expect::Fails(parts_message(1)),
        ),
        (
            "100 KB target with an empty part",
            target(format!("ns//{big}")),
            Expect::Fails(empty_part(1)),
        ),
        (
            "20 KB valid target",
            target(format!("default/deployment/{}", "y".repeat(20_000))),
            Expect::Runs,
        ),
        (
            "100 KB containerImage",
            with(11, &|v| {
                v["spec"]["workflowRef"]["containerImage"] = json!(format!("quay.io/{big}"))
            }),
            Expect::Runs,
        ),
        (
            "100 KB parameter value",
            with(12, &|v| v["spec"]["parameters"]["BIG"] = json!(big.clone())),
            Expect::Runs,
        ),
        (
            "unicode, RTL and emoji target",
            target("default/deployment/ñandú-\u{202E}lave-🚀-日本".into()),
            Expect::Runs,
        ),
        (
            "control characters in the target",
            target("default/deploy\tment/a\u{7}b\u{1b}[31mred\r".into()),
            Expect::Runs,
        ),
        (
            "2000 parameters",
            with(15, &|v| {
                v["spec"]["parameters"] = Value::Object(many.clone())
            }),
            Expect::Runs,
        ),
        (
            "odd parameter names and values",
            with(16, &|v| v["spec"]["parameters"] = odd.clone()),
            Expect::Runs,
        ),
        (
            "empty workflowId and version",
            with(17, &|v| {
                v["spec"]["workflowRef"]["workflowId"] = json!("");
                v["spec"]["workflowRef"]["version"] = json!("");
            }),
            Expect::Runs,
        ),
        (
            "template syntax in the target",
            target("default/{{ 7*7 }}/{% if true %}x{% endif %}".into()),
            Expect::Runs,
        ),
        (
            "missing targetResource",
            with(19, &|v| {
                v["spec"].as_object_mut().unwrap().remove("targetResource");
            }),
            Expect::Rejected,
        ),
        (
            "a number as a parameter value",
            with(20, &|v| v["spec"]["parameters"]["N"] = json!(7)),
            Expect::Rejected,
        ),
        (
            "a malformed timeout",
            with(21, &|v| {
                v["spec"]["executionConfig"] = json!({"timeout": "forever"})
            }),
            Expect::Rejected,
        ),
        ("spec as a string", json!({"spec": "x"}), Expect::Rejected),
    ]
}

async fn hostile_case(s: &Scope, what: &str, body: &Value, expect: &Expect) -> &'static str {
    let name = unique_name("hostile");
    let object = DynamicObject::new(&name, &support::workflowexecutions()).data(body.clone());
    let created = s.wfes().create(&PostParams::default(), &object).await;
    if let Expect::Rejected = expect {
        let e = created.expect_err(&format!("{what}: admitted by the API server"));
        assert_eq!(api_code(&e), Some(422), "{what}: {e}");
        return "rejected";
    }
    created.unwrap_or_else(|e| panic!("{what}: refused by the API server: {e}"));
    let target = body["spec"]["targetResource"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let v = wait_for(s, &name, 60, &format!("{what}: Running or Failed"), |v| {
        matches!(phase(v), "Running" | "Failed")
    })
    .await;
    match expect {
        Expect::Fails(message) => {
            assert_eq!(phase(&v), "Failed", "{what}: {v:#}");
            assert_eq!(
                v["status"]["failureDetails"]["reason"], "ConfigurationError",
                "{what}"
            );
            assert_eq!(
                v["status"]["failureDetails"]["message"],
                message.as_str(),
                "{what}"
            );
            assert_eq!(
                v["status"]["failureDetails"]["wasExecutionFailure"], false,
                "{what}"
            );
            if !target.is_empty() {
                assert!(
                    s.run(&run_name(&target)).await.is_none(),
                    "{what}: a run was created"
                );
            }
            "failed"
        }
        Expect::Runs => {
            assert_eq!(phase(&v), "Running", "{what}: {:#}", v["status"]);
            let run = run_name(&target);
            let r = s.wait_run(&run).await;
            assert_eq!(
                text(&r, "/metadata/annotations/kubernaut.ai~1target-resource"),
                target,
                "{what}"
            );
            assert_eq!(
                text(&r, "/metadata/labels/kubernaut.ai~1workflow-execution"),
                name,
                "{what}"
            );
            // every parameter verbatim, sorted, then the real target last
            let params = r["spec"]["params"].as_array().cloned().unwrap_or_default();
            let mut expected: Vec<(String, String)> = body["spec"]["parameters"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| *k != "TARGET_RESOURCE")
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            expected.sort();
            expected.push(("TARGET_RESOURCE".into(), target.clone()));
            let got: Vec<(String, String)> = params
                .iter()
                .map(|p| (text(p, "/name"), text(p, "/value")))
                .collect();
            assert!(
                got == expected,
                "{what}: params differ ({} vs {} entries)",
                got.len(),
                expected.len()
            );
            let started = text(&v, "/status/startTime");
            tekton::set_status(
                &s.runs(),
                &run,
                tekton::pipelinerun_finished(
                    &run,
                    &[],
                    "True",
                    "Succeeded",
                    &tekton::tasks_message(0, 0, 0, 0),
                    &started,
                    &tekton::now(),
                ),
            )
            .await;
            let v = wait_for(
                s,
                &name,
                60,
                &format!("{what}: Completed, lock released"),
                |v| phase(v) == "Completed" && condition_status(v, "LockReleased") == "True",
            )
            .await;
            assert_eq!(condition_status(&v, "Ready"), "True", "{what}");
            s.wait_run_gone(&run).await;
            "completed"
        }
        Expect::Rejected => unreachable!(),
    }
}

#[tokio::test]
async fn hostile_specs_are_rejected_or_finish_precisely_and_never_crash_the_controller() {
    let s = Scope::new("fault-hostile").await;
    let mut ctl = s.start("ctl", "1s").await;
    let cases = hostile_cases();
    let outcomes = futures::future::join_all(
        cases
            .iter()
            .map(|(what, body, expect)| hostile_case(&s, what, body, expect)),
    )
    .await;
    assert!(ctl.is_running(), "the controller exited:\n{}", ctl.log());
    let (code, _) = ctl.healthz().await.expect("/healthz");
    assert_eq!(code, 200);
    assert_no_panic(&s);
    let count = |o: &str| outcomes.iter().filter(|x| **x == o).count();
    eprintln!(
        "figures: hostile: {} inputs: {} rejected by the API server, {} failed validation precisely, {} ran and completed",
        cases.len(),
        count("rejected"),
        count("failed"),
        count("completed")
    );
}

/// A target the CRD admits but longer than a condition message may be (32768 bytes): the run is
/// created and completes, so its lock must be released too. Pins a defect of the default rules:
/// the LockReleased condition's message embeds the whole target, the status write of the release
/// is refused with 422 (`status.conditions[5].message: Too long`) and retried for ever, so the
/// resource never records the release.
#[tokio::test]
async fn a_100_kb_target_completes_and_releases_its_lock() {
    let s = Scope::new("fault-bigtarget").await;
    let ctl = s.start("ctl", "1s").await;
    let target = format!("default/deployment/{}", "x".repeat(100_000));
    let outcome = hostile_case(&s, "100 KB valid target", &wfe_body(&target), &Expect::Runs).await;
    assert_eq!(outcome, "completed");
    drop(ctl);
}
