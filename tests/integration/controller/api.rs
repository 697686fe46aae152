use super::*;

#[tokio::test]
async fn a_create_forbidden_by_rbac_fails_the_workflow_with_the_api_servers_message() {
    // deploy/rbac.yaml's execution Role without `create` on PipelineRuns
    let s = Scope::with_execution_role("forbidden", |role| {
        for rule in role.rules.iter_mut().flatten() {
            if rule.resources.iter().flatten().any(|r| r == "pipelineruns") {
                rule.verbs.retain(|v| v != "create");
            }
        }
    })
    .await;
    let _ctl = s.start("ctl", "1s").await;
    let name = unique_name("forbidden");
    s.create_wfe(&name, "default/deployment/forbidden").await;
    let failed = s.wait_phase(&name, "Failed").await;
    let error = format!(
        "pipelineruns.tekton.dev is forbidden: User \"{}\" cannot create resource \"pipelineruns\" in API group \"tekton.dev\" in the namespace \"{}\"",
        support::CONTROLLER_USER,
        s.exec_ns
    );
    let message = format!("Failed to create PipelineRun: {error}");
    let details = &failed["status"]["failureDetails"];
    assert_eq!(details["reason"], "Forbidden");
    assert_eq!(details["message"], message.as_str());
    assert_eq!(details["wasExecutionFailure"], false);
    assert!(failed["status"].get("pipelineRunRef").is_none(), "{failed}");
    assert_condition(
        &failed,
        "TektonPipelineCreated",
        "False",
        "RBACDenied",
        &error,
    );
    assert_condition(&failed, "Ready", "False", "Forbidden", &message);
    let events = s.wait_event(&name, "WorkflowFailed").await;
    assert_eq!(
        shapes(&events),
        vec![event(
            "Warning",
            "WorkflowFailed",
            &format!("Pre-execution failure: Forbidden - {message}")
        )]
    );
    assert_eq!(s.run_list().await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_create_over_quota_fails_the_workflow_as_resource_exhausted() {
    use k8s_openapi::api::core::v1::ResourceQuota;
    let s = Scope::new("quota").await;
    // no quota controller runs here: the quota's status is written as it would write it
    let quotas: kube::Api<ResourceQuota> = kube::Api::namespaced(s.admin.clone(), &s.exec_ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-runs"},
        "spec": {"hard": {"count/pipelineruns.tekton.dev": "0"}},
    }))
    .unwrap();
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("creating the ResourceQuota");
    quotas
        .patch_status(
            "no-runs",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {
                "hard": {"count/pipelineruns.tekton.dev": "0"},
                "used": {"count/pipelineruns.tekton.dev": "0"},
            }})),
        )
        .await
        .expect("writing the ResourceQuota's status");
    let _ctl = s.start("ctl", "1s").await;
    let name = unique_name("quota");
    s.create_wfe(&name, "default/deployment/quota").await;
    let failed = s.wait_phase(&name, "Failed").await;
    let error = format!(
        "pipelineruns.tekton.dev \"{}\" is forbidden: exceeded quota: no-runs, requested: count/pipelineruns.tekton.dev=1, used: count/pipelineruns.tekton.dev=0, limited: count/pipelineruns.tekton.dev=0",
        run_name("default/deployment/quota")
    );
    let message = format!("Failed to create PipelineRun: {error}");
    let details = &failed["status"]["failureDetails"];
    assert_eq!(details["reason"], "ResourceExhausted", "{failed}");
    assert_eq!(details["message"], message.as_str());
    assert_condition(
        &failed,
        "TektonPipelineCreated",
        "False",
        "QuotaExceeded",
        &error,
    );
    assert_condition(&failed, "Ready", "False", "ResourceExhausted", &message);
    assert_eq!(s.run_list().await, Vec::<Value>::new());
}

/// A stand-in audit receiver: answers 503 to the first `failures` batches, then accepts;
/// returns its base URL and what it accepted (path, content type, body).
async fn audit_receiver(
    failures: usize,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>>,
) {
    use axum::http::{HeaderMap, StatusCode, Uri};
    let accepted: std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>> =
        Default::default();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = accepted.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
        let store = store.clone();
        let refused = refused.clone();
        async move {
            if refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < failures {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            store
                .lock()
                .unwrap()
                .push((uri.path().to_string(), content_type, body));
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the receiver");
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, accepted)
}

#[tokio::test]
async fn audit_records_reach_an_http_endpoint_at_least_once() {
    let s = Scope::new("audit-http").await;
    let (url, accepted) = audit_receiver(2).await;
    let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "1h");
    args.extend(["--audit".to_string(), format!("{url}/")]);
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    ctl.wait_ready().await;
    let name = unique_name("audited");
    let (run, started) = running(&s, &name, "default/deployment/audited").await;
    succeed(&s, &run, &started).await;
    s.wait_phase(&name, "Completed").await;
    // the file has both records; the endpoint gets the same, after refusing twice
    let in_file = s.wait_audit(&name, "workflow.completed").await;
    let received = support::eventually(
        std::time::Duration::from_secs(30),
        "both records at the endpoint",
        || async {
            let batches = accepted.lock().unwrap().clone();
            let mut seen = std::collections::HashSet::new();
            let records: Vec<Value> = batches
                .iter()
                .flat_map(|(_, _, body)| body.as_array().cloned().unwrap_or_default())
                .filter(|r| r["resource_id"] == name.as_str())
                .filter(|r| seen.insert(r["event_id"].to_string()))
                .collect();
            (records.len() == 2).then_some((batches, records))
        },
    )
    .await;
    let (batches, records) = received;
    for (path, content_type, body) in &batches {
        assert_eq!(path, "/api/v1/audit/events/batch");
        assert_eq!(content_type, "application/json");
        assert!(body.is_array(), "{body}");
    }
    assert_eq!(records, in_file);
    ctl.wait_metric("lifecycle_audit_dropped_total", 0.0).await;
}
