//! Partitions and pauses: a leader cut off from the API server (a black-holing proxy between
//! them) or paused with SIGSTOP past its lease stops acting before the standby takes over, and
//! nothing it sent lands afterwards, before or after the heal; a request that hangs times out,
//! is retried, and nothing stalls. Lease settings are short (4 s) to keep the tests quick.
//!
//! "Nothing lands" is checked at the byte level: the proxy records when it forwarded bytes of the
//! old leader to the API server, and the last of them must come before the new leader's
//! `acquireTime` (its own clock, on this same machine, read before it sent the acquisition).

use crate::proxy::{Proxy, api_server, kubeconfig_through};
use crate::support::{self, ControllerProcess, Scope, eventually, run_name, unique_name};
use crate::tekton;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use std::path::Path;
use std::time::{Duration, SystemTime};

const LEASE: &str = "workflowexecution-controller";

/// `lifecycle run` arguments of one replica with leader election (lease 4 s, so a renew
/// deadline of 2.7 s), short API timeouts, a 2 s cooldown.
fn replica_args(s: &Scope, identity: &str, lease_ns: &str) -> Vec<String> {
    let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "2s");
    args.extend(
        [
            "--leader-elect",
            "--lease-namespace",
            lease_ns,
            "--identity",
            identity,
            "--lease-duration",
            "4s",
            "--api-timeout",
            "2s",
            "--watch-timeout",
            "5s",
        ]
        .map(String::from),
    );
    args
}

fn spawn(s: &Scope, label: &str, args: &[String], kubeconfig: Option<&Path>) -> ControllerProcess {
    match kubeconfig {
        Some(k) => ControllerProcess::spawn_with_env(
            s.env,
            s.dir.path(),
            label,
            args,
            &[("KUBECONFIG", k.to_str().expect("a UTF-8 path"))],
        ),
        None => ControllerProcess::spawn(s.env, s.dir.path(), label, args),
    }
}

async fn wait_standing_by(p: &mut ControllerProcess) {
    p.wait_serving().await;
    let label = p.label.clone();
    eventually(
        Duration::from_secs(30),
        &format!("{label} to stand by"),
        || async {
            p.log()
                .contains("another replica leads; standing by")
                .then_some(())
        },
    )
    .await;
}

async fn lease(s: &Scope, lease_ns: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(s.admin.clone(), lease_ns)
        .get_opt(LEASE)
        .await
        .expect("reading the Lease")
}

fn holder(l: &Lease) -> String {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

/// Waits until `identity` holds the Lease; returns when it acquired it (its clock).
async fn wait_holder(s: &Scope, lease_ns: &str, identity: &str) -> SystemTime {
    let l = eventually(
        Duration::from_secs(40),
        &format!("{identity} to take the Lease"),
        || async { lease(s, lease_ns).await.filter(|l| holder(l) == identity) },
    )
    .await;
    let at = l.spec.and_then(|s| s.acquire_time).expect("acquireTime").0;
    SystemTime::UNIX_EPOCH + Duration::from_micros(at.as_microsecond() as u64)
}

/// Plays Tekton for one lifecycle: once the run exists, starts it, then succeeds it after
/// `hold`. Every step retries, so it rides through takeovers.
async fn play(s: &Scope, target: &str, hold: Duration) {
    play_to(s, target, hold, true).await
}

/// Like [`play`], ending the run succeeded or failed.
pub async fn play_to(s: &Scope, target: &str, hold: Duration, succeed: bool) {
    let run = run_name(target);
    let started = eventually(Duration::from_secs(180), &format!("run {run}"), || async {
        s.run(&run).await.map(|_| tekton::now())
    })
    .await;
    tekton::set_status(
        &s.runs(),
        &run,
        tekton::pipelinerun_running(&run, &[], &started),
    )
    .await;
    tokio::time::sleep(hold).await;
    tekton::set_status(
        &s.runs(),
        &run,
        tekton::pipelinerun_finished(
            &run,
            &[],
            if succeed { "True" } else { "False" },
            if succeed { "Succeeded" } else { "Failed" },
            if succeed { "done" } else { "task failed" },
            &started,
            &tekton::now(),
        ),
    )
    .await;
}

/// Waits until the resource is Completed with its lock released, and checks its audit trail:
/// exactly `workflow.started` then `workflow.completed` after de-duplication.
async fn assert_finished(s: &Scope, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = s.get(name).await.expect("the resource");
        let released = support::condition(&v, "LockReleased").is_some();
        if v["status"]["phase"] == "Completed" && released {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} did not complete and release its lock: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let types: Vec<String> = s
        .audit_records(name)
        .iter()
        .map(|r| r["event_type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(types, ["workflow.started", "workflow.completed"], "{name}");
}

fn seconds(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

#[tokio::test]
async fn a_partitioned_leader_stops_before_the_standby_takes_over_and_nothing_lands_late() {
    let s = Scope::new("partition").await;
    let lease_ns = s.env.namespace("lease").await;
    support::grant_namespaced_rbac(s.env, support::controller_namespace(), &lease_ns).await;
    let proxy = Proxy::start(api_server(s.env.kubeconfig())).await;
    let through = s.dir.path().join("kubeconfig-through-proxy");
    kubeconfig_through(s.env.kubeconfig(), proxy.addr, &through);

    let mut a = spawn(&s, "a", &replica_args(&s, "a", &lease_ns), Some(&through));
    a.wait_ready().await;
    let mut b = spawn(&s, "b", &replica_args(&s, "b", &lease_ns), None);
    wait_standing_by(&mut b).await;

    let before: Vec<(String, String)> = (0..4)
        .map(|i| (unique_name("cut"), format!("default/deployment/cut-{i}")))
        .collect();
    let during: Vec<(String, String)> = (0..3)
        .map(|i| (unique_name("cut"), format!("default/deployment/late-{i}")))
        .collect();
    for (name, target) in &before {
        s.create_wfe(name, target).await;
    }
    let players = futures::future::join_all(
        before
            .iter()
            .chain(&during)
            .map(|(_, t)| play(&s, t, Duration::from_secs(3))),
    );
    let scenario = async {
        for (name, _) in &before[..2] {
            s.wait_phase(name, "Running").await;
        }
        // the cut, while runs are being started and followed
        let cut = SystemTime::now();
        proxy.blackhole();
        for (name, target) in &during {
            s.create_wfe(name, target).await;
        }
        let (code, log) = a.wait_exit(Duration::from_secs(30)).await;
        let exited = cut.elapsed().unwrap();
        assert_eq!(code, Some(3), "{log}");
        assert!(
            log.contains("the renew deadline passed without a successful renewal"),
            "{log}"
        );
        let acquired = wait_holder(&s, &lease_ns, "b").await;
        let takeover = acquired.duration_since(cut).unwrap_or_default();
        // the new leader works a while before the partition heals
        s.wait_phase(&during[0].0, "Running").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let healed = SystemTime::now();
        proxy.heal();
        (cut, exited, acquired, takeover, healed)
    };
    let (_, (cut, exited, acquired, takeover, healed)) = tokio::join!(players, scenario);
    for (name, _) in before.iter().chain(&during) {
        assert_finished(&s, name).await;
    }
    // the old leader sent nothing that reached the API server after the new leader took over,
    // nor anything at all once the partition healed
    let last = proxy
        .last_upstream_write()
        .expect("a wrote through the proxy");
    assert!(
        last < acquired,
        "a's last byte reached the API server {:?} after b acquired the Lease",
        last.duration_since(acquired).unwrap_or_default()
    );
    assert_eq!(proxy.upstream_bytes_since(healed), 0);
    // the new leader created the runs of the resources made during the partition
    for (name, _) in &during {
        let events = s.wait_event(name, "PipelineRunCreated").await;
        assert_eq!(events[0].instance, "b", "{name}: {events:?}");
    }
    assert!(s.run_list().await.is_empty(), "every lock released");
    // the old leader, restarted, stands by
    let mut again = spawn(
        &s,
        "a-again",
        &replica_args(&s, "a", &lease_ns),
        Some(&through),
    );
    wait_standing_by(&mut again).await;
    let (code, body) = again.readyz().await.expect("/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("leader: false"), "{body}");
    assert!(b.is_running());
    println!(
        "figures: partition at +0 s; old leader exited at +{} s; new leader acquired at +{} s; last byte of the old leader {} s before that; healed at +{} s; {} lifecycles",
        seconds(exited),
        seconds(takeover),
        seconds(acquired.duration_since(last).unwrap_or_default()),
        seconds(healed.duration_since(cut).unwrap_or_default()),
        before.len() + during.len()
    );
}

fn signal(p: &ControllerProcess, sig: &str) {
    let pid = p.pid().expect("a running process").to_string();
    let status = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_sends_nothing_when_it_resumes() {
    let s = Scope::new("paused").await;
    let lease_ns = s.env.namespace("lease").await;
    support::grant_namespaced_rbac(s.env, support::controller_namespace(), &lease_ns).await;
    // never black-holed: the proxy only shows what the paused leader sends
    let proxy = Proxy::start(api_server(s.env.kubeconfig())).await;
    let through = s.dir.path().join("kubeconfig-through-proxy");
    kubeconfig_through(s.env.kubeconfig(), proxy.addr, &through);
    let mut a = spawn(&s, "a", &replica_args(&s, "a", &lease_ns), Some(&through));
    a.wait_ready().await;
    let mut b = spawn(&s, "b", &replica_args(&s, "b", &lease_ns), None);
    wait_standing_by(&mut b).await;

    let lifecycles: Vec<(String, String)> = (0..4)
        .map(|i| {
            (
                unique_name("paused"),
                format!("default/deployment/paused-{i}"),
            )
        })
        .collect();
    for (name, target) in &lifecycles {
        s.create_wfe(name, target).await;
    }
    let players = futures::future::join_all(
        lifecycles
            .iter()
            .map(|(_, t)| play(&s, t, Duration::from_secs(4))),
    );
    let scenario = async {
        for (name, _) in &lifecycles[..2] {
            s.wait_phase(name, "Running").await;
        }
        let stopped = SystemTime::now();
        signal(&a, "-STOP");
        let acquired = wait_holder(&s, &lease_ns, "b").await;
        // the new leader acts a while; then the old one wakes up
        tokio::time::sleep(Duration::from_secs(2)).await;
        let resumed = SystemTime::now();
        signal(&a, "-CONT");
        let (code, log) = a.wait_exit(Duration::from_secs(15)).await;
        assert_eq!(code, Some(3), "{log}");
        (stopped, acquired, resumed)
    };
    let (_, (stopped, acquired, resumed)) = tokio::join!(players, scenario);
    for (name, _) in &lifecycles {
        assert_finished(&s, name).await;
    }
    assert_eq!(
        proxy.upstream_bytes_since(resumed),
        0,
        "the resumed leader sent something"
    );
    let last = proxy
        .last_upstream_write()
        .expect("a wrote through the proxy");
    assert!(
        last < acquired,
        "a's last byte came after b acquired the Lease"
    );
    assert!(b.is_running());
    println!(
        "figures: paused at +0 s; new leader acquired at +{} s; resumed at +{} s; the resumed leader sent 0 bytes and exited",
        seconds(acquired.duration_since(stopped).unwrap_or_default()),
        seconds(resumed.duration_since(stopped).unwrap_or_default()),
    );
}

/// Sum of a metric's series whose labels contain `label` (e.g. `reason="stalled"`).
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_hung_request_times_out_is_retried_and_nothing_stalls() {
    let s = Scope::new("hung").await;
    let proxy = Proxy::start(api_server(s.env.kubeconfig())).await;
    let through = s.dir.path().join("kubeconfig-through-proxy");
    kubeconfig_through(s.env.kubeconfig(), proxy.addr, &through);
    let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "3s");
    args.extend(["--api-timeout", "2s", "--watch-timeout", "3s"].map(String::from));
    let mut ctl = spawn(&s, "ctl", &args, Some(&through));
    ctl.wait_ready().await;

    let lifecycles: Vec<(String, String)> = (0..3)
        .map(|i| (unique_name("hung"), format!("default/deployment/hung-{i}")))
        .collect();
    for (name, target) in &lifecycles {
        s.create_wfe(name, target).await;
    }
    futures::future::join_all(
        lifecycles
            .iter()
            .map(|(_, t)| play(&s, t, Duration::from_millis(500))),
    )
    .await;
    for (name, _) in &lifecycles {
        s.wait_phase(name, "Completed").await;
    }
    // the cooldown's release (a delete and a status write) falls into the black hole, and so
    // does every watch
    let cut = std::time::Instant::now();
    proxy.blackhole();
    tokio::time::sleep(Duration::from_secs(9)).await;
    proxy.heal();
    for (name, _) in &lifecycles {
        assert_finished(&s, name).await;
    }
    let recovered = cut.elapsed();
    let metrics = ctl.metrics().await;
    let timeouts = support::metric_value(&metrics, "lifecycle_api_request_timeouts_total");
    assert!(timeouts >= 1.0, "{metrics}");
    let stalled = metric_sum(
        &metrics,
        "lifecycle_watch_restarts_total",
        "reason=\"stalled\"",
    );
    assert!(stalled >= 1.0, "{metrics}");
    // the watches are back: a new resource runs at once
    let name = unique_name("after");
    s.create_wfe(&name, "default/deployment/after-the-heal")
        .await;
    s.wait_phase(&name, "Running").await;
    assert!(ctl.is_running());
    assert!(!ctl.log().contains("panicked"));
    println!(
        "figures: 9 s black hole; {timeouts} requests timed out, {stalled} stalled watches restarted; every lock released {} s after the cut",
        seconds(recovered)
    );
}

#[tokio::test]
async fn sigterm_stops_a_standby_at_once_and_a_leader_hands_over_without_waiting_for_expiry() {
    let s = Scope::new("handover").await;
    let lease_ns = s.env.namespace("lease").await;
    support::grant_namespaced_rbac(s.env, support::controller_namespace(), &lease_ns).await;
    let mut a = spawn(&s, "a", &replica_args(&s, "a", &lease_ns), None);
    a.wait_ready().await;
    let mut b = spawn(&s, "b", &replica_args(&s, "b", &lease_ns), None);
    wait_standing_by(&mut b).await;
    // a standby holds nothing: it stops at once
    let asked = std::time::Instant::now();
    let (code, log) = b.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // a leader finishes, releases the Lease, and the standby takes it without waiting 4 s
    let mut b = spawn(&s, "b-again", &replica_args(&s, "b", &lease_ns), None);
    wait_standing_by(&mut b).await;
    let name = unique_name("handover");
    s.create_wfe(&name, "default/deployment/handover").await;
    s.wait_phase(&name, "Running").await;
    let asked = SystemTime::now();
    let (code, log) = a.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("Lease released"), "{log}");
    let acquired = wait_holder(&s, &lease_ns, "b").await;
    let handover = acquired.duration_since(asked).unwrap_or_default();
    assert!(handover < Duration::from_secs(4), "{handover:?}");
    play(&s, "default/deployment/handover", Duration::ZERO).await;
    assert_finished(&s, &name).await;
    println!(
        "figures: standby stopped on SIGTERM; leader handed over {} s after SIGTERM (lease 4 s)",
        seconds(handover)
    );
}
