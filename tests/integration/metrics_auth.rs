//! Secure metrics against the real API server: `lifecycle run --metrics-secure` serves /metrics
//! over HTTPS only to callers whose token the API server accepts (TokenReview) and whose identity
//! may `get` /metrics (SubjectAccessReview). The scrapers are real ServiceAccounts with tokens from
//! the TokenRequest API; the controller asks with the RBAC deploy/ grants it.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support::{self, ControllerProcess, Scope, api_code, eventually, unique_name};

/// Log message of the HTTPS listener (with /healthz and /readyz when no --health-address).
pub const SECURE_SERVING: &str = "serving /metrics over HTTPS to authorised callers";
/// Log message of the plain listener of the probes (--health-address).
pub const PROBES_SERVING: &str = "serving /healthz, /readyz";

/// A token of ServiceAccount `ns/name` from the TokenRequest API; creates the account first
/// when it does not exist.
pub async fn service_account_token(admin: &Client, ns: &str, name: &str) -> String {
    let accounts = Api::<ServiceAccount>::namespaced(admin.clone(), ns);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("ServiceAccount");
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(e) if api_code(&e) == Some(409) => {}
        Err(e) => panic!("creating ServiceAccount {ns}/{name}: {e}"),
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token of {ns}/{name}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest status")
}

/// The address a log line says `message` is served at (text logs: `... message address=A`).
fn address_in(log: &str, message: &str) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|l| l.split_once(message).map(|(_, rest)| rest))
        // "serving /healthz, /readyz" is also the start of the plain listener's line of all three
        .filter(|rest| !rest.starts_with(", /metrics"))
        .find_map(|rest| {
            rest.split("address=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// Waits until the process logs where it serves `message`; returns the address.
pub async fn wait_address(ctl: &mut ControllerProcess, message: &str) -> SocketAddr {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(addr) = address_in(&ctl.log(), message) {
            return addr;
        }
        assert!(
            ctl.is_running(),
            "controller {} exited:\n{}",
            ctl.label,
            ctl.log()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "controller {} never logged `{message}`:\n{}",
            ctl.label,
            ctl.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `url` (certificates not verified: the controller's is self-signed), with a bearer token
/// when given; the status code and body, or None when no HTTP answer came.
pub async fn get(url: &str, token: Option<&str>) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.ok()?;
    let code = response.status().as_u16();
    Some((code, response.text().await.ok()?))
}

/// Waits until `http://addr/readyz` says the caches are synced.
pub async fn wait_synced(addr: SocketAddr) {
    eventually(Duration::from_secs(60), "caches synced", || async {
        get(&format!("http://{addr}/readyz"), None)
            .await
            .filter(|(_, body)| body.contains("caches synced: true"))
            .map(|_| ())
    })
    .await;
}

/// Waits until `token` reads /metrics with 200 (RBAC and the controller's cache of refusals
/// take a few seconds to follow a new binding); returns the body.
pub async fn wait_scrape(metrics_url: &str, token: &str) -> String {
    eventually(Duration::from_secs(45), "a 200 from /metrics", || async {
        get(metrics_url, Some(token))
            .await
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
    })
    .await
}

/// Binds ServiceAccount `ns/name` to ClusterRole `role` (under a name of its own).
pub async fn bind_cluster_role(admin: &Client, role: &str, ns: &str, name: &str) {
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": unique_name("scraper")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }))
    .expect("ClusterRoleBinding");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("binding {ns}/{name} to {role}: {e}"));
}

#[tokio::test]
async fn secure_metrics_answer_only_callers_the_api_server_authorises() {
    let s = Scope::new("metrics-auth").await;
    let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "1h");
    args.extend(["--metrics-secure", "--health-address", "127.0.0.1:0"].map(String::from));
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "secure", &args);
    let metrics = wait_address(&mut ctl, SECURE_SERVING).await;
    let health = wait_address(&mut ctl, PROBES_SERVING).await;
    wait_synced(health).await;
    let url = format!("https://{metrics}/metrics");

    // the reader role deploy/ ships, bound to one scraper only
    let allowed = service_account_token(&s.admin, &s.ns, "scraper").await;
    let denied = service_account_token(&s.admin, &s.ns, "stranger").await;
    bind_cluster_role(&s.admin, "lifecycle-metrics-reader", &s.ns, "scraper").await;

    let body = wait_scrape(&url, &allowed).await;
    assert!(
        body.contains("# TYPE lifecycle_decision_duration_seconds histogram"),
        "{body}"
    );
    let (code, body) = get(&url, Some(&denied)).await.expect("an answer");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(&format!("system:serviceaccount:{}:stranger", s.ns)),
        "{body}"
    );
    let (code, body) = get(&url, None).await.expect("an answer");
    assert_eq!(code, 401, "{body}");
    let (code, body) = get(&url, Some("not-a-token")).await.expect("an answer");
    assert_eq!(code, 401, "{body}");
    // the endpoint speaks TLS only; the probes stay plain and open
    assert_eq!(get(&format!("http://{metrics}/metrics"), None).await, None);
    let (code, _) = get(&format!("http://{health}/healthz"), None)
        .await
        .expect("/healthz");
    assert_eq!(code, 200);
    assert_eq!(
        get(&format!("http://{health}/metrics"), None)
            .await
            .map(|(c, _)| c),
        Some(404),
        "/metrics is not served on the probes' address"
    );
}

#[tokio::test]
async fn without_a_health_address_the_probes_are_served_over_https_unauthenticated() {
    let s = Scope::new("metrics-tls").await;
    let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "1h");
    args.push("--metrics-secure".into());
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "secure", &args);
    let addr = wait_address(&mut ctl, SECURE_SERVING).await;
    eventually(Duration::from_secs(60), "caches synced", || async {
        get(&format!("https://{addr}/readyz"), None)
            .await
            .filter(|(code, body)| *code == 200 && body.contains("caches synced: true"))
    })
    .await;
    let (code, _) = get(&format!("https://{addr}/metrics"), None)
        .await
        .expect("an answer");
    assert_eq!(code, 401);
}
