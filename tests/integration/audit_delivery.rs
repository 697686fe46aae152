//! Audit at least once, through an HTTP receiver on loopback: the controller killed right after
//! status writes, the receiver down, then refusing with 500 and 429, while a backlog of
//! thousands of transitions waits. Every transition's record arrives at least once and none is
//! invented: after de-duplication by `event_id`, each resource has exactly the records its final
//! status says it went through.
//!
//! Sizes come from the environment (`LIFECYCLE_FAULT_AUDIT_BACKLOG`, default 2000 resources
//! failing validation, each one record, created while the receiver is down;
//! `LIFECYCLE_FAULT_KILLS`, default 4). docs/reliability.md has the figures of larger runs.

use crate::partition::play_to;
use crate::support::{self, ControllerProcess, Scope, eventually, unique_name, wfe_body};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Accept,
    /// This status, with this Retry-After (seconds) if any.
    Refuse(u16, Option<u64>),
}

/// A small HTTP receiver (one request per connection, so stopping it refuses at once), on a
/// runtime of its own: the test's own runtime, busy listing thousands of resources, must not
/// slow it down.
struct Receiver {
    runtime: Option<tokio::runtime::Runtime>,
    port: u16,
    mode: Arc<Mutex<Mode>>,
    records: Arc<Mutex<Vec<Value>>>,
    answers: Arc<Mutex<HashMap<u16, usize>>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let mut r = Receiver {
            runtime: Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("the receiver's runtime"),
            ),
            port: 0,
            mode: Arc::new(Mutex::new(Mode::Accept)),
            records: Arc::default(),
            answers: Arc::default(),
            server: None,
        };
        r.up().await;
        r
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts listening (on the same port as before, if any).
    async fn up(&mut self) {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", self.port)).expect("the receiver's port");
        listener.set_nonblocking(true).expect("non-blocking");
        self.port = listener.local_addr().unwrap().port();
        let (mode, records, answers) = (
            self.mode.clone(),
            self.records.clone(),
            self.answers.clone(),
        );
        let runtime = self.runtime.as_ref().expect("a runtime");
        self.server = Some(runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("a tokio listener");
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (mode, records, answers) = (mode.clone(), records.clone(), answers.clone());
                tokio::spawn(async move {
                    let Some(body) = read_request(&mut conn).await else {
                        return;
                    };
                    let now = *mode.lock().unwrap();
                    let (status, extra) = match now {
                        Mode::Accept => match serde_json::from_slice::<Vec<Value>>(&body) {
                            Ok(batch) => {
                                records.lock().unwrap().extend(batch);
                                (200, String::new())
                            }
                            Err(_) => (400, String::new()),
                        },
                        Mode::Refuse(code, after) => (
                            code,
                            after
                                .map(|s| format!("Retry-After: {s}\r\n"))
                                .unwrap_or_default(),
                        ),
                    };
                    *answers.lock().unwrap().entry(status).or_default() += 1;
                    let response = format!(
                        "HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        }));
    }

    /// Stops listening: connections are refused.
    fn down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn answered(&self, status: u16) -> usize {
        self.answers
            .lock()
            .unwrap()
            .get(&status)
            .copied()
            .unwrap_or(0)
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body; returns the body.
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf[head_end..head_end + length].to_vec())
}

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The audit records a resource's final status says it went through.
fn expected(v: &Value) -> BTreeSet<String> {
    let phase = v["status"]["phase"].as_str().unwrap_or_default();
    let started = v.pointer("/status/pipelineRunRef/name").is_some();
    let mut out = BTreeSet::new();
    if started {
        out.insert("workflow.started".to_string());
    }
    match phase {
        "Completed" => {
            out.insert("workflow.completed".to_string());
        }
        "Failed" => {
            out.insert("workflow.failed".to_string());
        }
        _ => {}
    }
    out
}

/// The phases of every resource of the scope, by name.
async fn phases(s: &Scope) -> HashMap<String, String> {
    s.wfes()
        .list(&kube::api::ListParams::default())
        .await
        .expect("listing WorkflowExecutions")
        .items
        .into_iter()
        .map(|o| {
            let v = serde_json::to_value(&o).expect("json");
            (
                o.metadata.name.unwrap_or_default(),
                v["status"]["phase"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_transition_is_audited_through_kills_an_endpoint_outage_and_a_backlog() {
    let s = Scope::new("audit-faults").await;
    let mut receiver = Receiver::start().await;
    let backlog = size("LIFECYCLE_FAULT_AUDIT_BACKLOG", 2000);
    let kills = size("LIFECYCLE_FAULT_KILLS", 4);
    let args = {
        let mut a = s.run_args(&support::repo_root().join("lifecycle.yaml"), "2s");
        a.extend(
            [
                "--audit",
                &receiver.url(),
                "--audit-wait",
                "2s",
                "--audit-max-backoff",
                "1s",
            ]
            .map(String::from),
        );
        a
    };
    let started = Instant::now();
    let mut processes = vec![ControllerProcess::spawn(
        s.env,
        s.dir.path(),
        "ctl-0",
        &args,
    )];
    processes[0].wait_ready().await;

    // 1. lifecycles, the controller killed right after status writes
    let lifecycles: Vec<(String, String, bool)> = (0..kills.max(4) * 2)
        .map(|i| {
            (
                unique_name("killed"),
                format!("default/deployment/killed-{i}"),
                i % 3 != 0,
            )
        })
        .collect();
    for (name, target, _) in &lifecycles {
        s.create_wfe(name, target).await;
    }
    let players = futures::future::join_all(
        lifecycles
            .iter()
            .map(|(_, t, ok)| play_to(&s, t, Duration::from_secs(2), *ok)),
    );
    let killer = async {
        let mut processes = processes;
        let mut killed = 0;
        'kills: while killed < kills {
            let before = phases(&s).await;
            // aimed: the moment a status write shows, the process dies
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let now = phases(&s).await;
                if now.iter().any(|(n, p)| before.get(n) != Some(p)) {
                    break;
                }
                if lifecycles.iter().all(|(n, _, _)| {
                    matches!(now.get(n).map(String::as_str), Some("Completed" | "Failed"))
                }) {
                    // every lifecycle has ended: no status write left to aim at
                    break 'kills;
                }
                assert!(Instant::now() < deadline, "no status write for 60 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            processes.last_mut().unwrap().kill();
            killed += 1;
            let mut next =
                ControllerProcess::spawn(s.env, s.dir.path(), &format!("ctl-{killed}"), &args);
            next.wait_ready().await;
            processes.push(next);
        }
        (processes, killed)
    };
    let (_, (processes, kills)) = tokio::join!(players, killer);
    assert!(kills >= 1, "no kill landed");
    let mut ctl = processes.into_iter().last().unwrap();
    let killed_by = started.elapsed();

    // 2. the receiver goes down while a backlog builds up, then refuses with 500 and 429
    let outage = Instant::now();
    receiver.down();
    let invalid: Vec<String> = (0..backlog).map(|_| unique_name("backlog")).collect();
    let late: Vec<(String, String)> = (0..3)
        .map(|i| (unique_name("late"), format!("default/deployment/late-{i}")))
        .collect();
    let creating = async {
        for (name, target) in &late {
            s.create_wfe(name, target).await;
        }
        for chunk in invalid.chunks(50) {
            futures::future::join_all(chunk.iter().map(|n| s.create(n, wfe_body("")))).await;
        }
        outage.elapsed()
    };
    let endpoint = async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        receiver.set(Mode::Refuse(500, None));
        receiver.up().await;
        let down_for = outage.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        receiver.set(Mode::Refuse(429, Some(1)));
        tokio::time::sleep(Duration::from_secs(3)).await;
        receiver.set(Mode::Accept);
        (down_for, outage.elapsed() - down_for)
    };
    let late_players = futures::future::join_all(
        late.iter()
            .map(|(_, t)| play_to(&s, t, Duration::from_millis(300), true)),
    );
    let (created_in, (down_for, refused_for), _) = tokio::join!(creating, endpoint, late_players);

    // every resource reaches its end, lock released where one was taken
    let names: Vec<String> = lifecycles
        .iter()
        .map(|(n, _, _)| n.clone())
        .chain(late.iter().map(|(n, _)| n.clone()))
        .chain(invalid.iter().cloned())
        .collect();
    // a generous deadline, growing with the backlog (the machine's API server sets the pace)
    let settle_deadline = Instant::now() + Duration::from_secs(120 + backlog as u64 / 4);
    let finals: HashMap<String, Value> = eventually(
        Duration::from_secs(120 + backlog as u64 / 4),
        "every resource in its terminal phase, locks released",
        || async {
            // listing thousands of resources costs: once a second is enough
            if Instant::now() < settle_deadline {
                tokio::time::sleep(Duration::from_millis(900)).await;
            }
            let list = s
                .wfes()
                .list(&kube::api::ListParams::default())
                .await
                .ok()?;
            let all: HashMap<String, Value> = list
                .items
                .into_iter()
                .map(|o| {
                    (
                        o.metadata.name.clone().unwrap_or_default(),
                        serde_json::to_value(&o).unwrap(),
                    )
                })
                .collect();
            let done = names.iter().all(|n| {
                all.get(n).is_some_and(|v| {
                    let phase = v["status"]["phase"].as_str().unwrap_or_default();
                    let locked = v.pointer("/status/pipelineRunRef/name").is_some();
                    (phase == "Completed" || phase == "Failed")
                        && (!locked || support::condition(v, "LockReleased").is_some())
                })
            });
            done.then_some(all)
        },
    )
    .await;
    let settled = started.elapsed();

    // what the receiver kept, de-duplicated by event_id
    let records = receiver.records.lock().unwrap().clone();
    let mut by_id: HashMap<String, (String, String)> = HashMap::new();
    let mut got: HashMap<String, BTreeSet<String>> = HashMap::new();
    for r in &records {
        assert_eq!(
            r["namespace"],
            s.ns.as_str(),
            "a record of another namespace: {r}"
        );
        let id = r["event_id"].as_str().expect("an event_id").to_string();
        let what = (
            r["resource_id"].as_str().unwrap_or_default().to_string(),
            r["event_type"].as_str().unwrap_or_default().to_string(),
        );
        let first = by_id.entry(id.clone()).or_insert_with(|| what.clone());
        assert_eq!(*first, what, "one id, two records: {id}");
        got.entry(what.0).or_default().insert(what.1);
    }
    let mut checked = 0;
    for name in &names {
        let want = expected(&finals[name]);
        let have = got.remove(name).unwrap_or_default();
        assert_eq!(have, want, "{name}: {}", finals[name]);
        checked += want.len();
    }
    assert!(got.is_empty(), "records of unknown resources: {got:?}");
    for (name, _, ok) in &lifecycles {
        let phase = &finals[name]["status"]["phase"];
        assert_eq!(phase, if *ok { "Completed" } else { "Failed" }, "{name}");
    }
    assert!(receiver.answered(500) >= 1 && receiver.answered(429) >= 1);
    let metrics = ctl.metrics().await;
    assert!(support::metric_value(&metrics, "lifecycle_audit_retries_total") >= 1.0);
    assert!(support::metric_value(&metrics, "lifecycle_audit_not_accepted_total") >= 1.0);
    assert!(ctl.is_running());
    println!(
        "figures: {} lifecycles, {kills} SIGKILLs right after status writes; endpoint refused connections for {:.1} s, then 500 and 429 (Retry-After 1) for {:.1} s ({} answers 500, {} answers 429); backlog of {backlog} resources; {checked} transitions checked, {} records received ({} repeats); kills done at {:.1} s, backlog created in {:.1} s, all settled {:.1} s after the start",
        lifecycles.len() + late.len(),
        down_for.as_secs_f64(),
        refused_for.as_secs_f64(),
        receiver.answered(500),
        receiver.answered(429),
        records.len(),
        records.len() - by_id.len(),
        killed_by.as_secs_f64(),
        created_in.as_secs_f64(),
        settled.as_secs_f64(),
    );
}

/// The test control plane's CA (a private one) as PEM, and the API server's URL.
fn private_ca(s: &Scope) -> (std::path::PathBuf, String) {
    let text = std::fs::read_to_string(s.env.kubeconfig()).expect("the kubeconfig");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    let cluster = &doc["clusters"][0]["cluster"];
    let data = cluster["certificate-authority-data"]
        .as_str()
        .expect("certificate-authority-data");
    let decoded = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(data.as_bytes())?;
            child.wait_with_output()
        })
        .expect("base64 -d");
    let path = s.dir.path().join("private-ca.pem");
    std::fs::write(&path, decoded.stdout).expect("writing the CA");
    let server = cluster["server"].as_str().expect("server").to_string();
    (path, server)
}

#[tokio::test]
async fn an_https_endpoint_signed_by_a_private_ca_is_reached_with_the_ca_file_only() {
    let s = Scope::new("audit-ca").await;
    // the API server plays the endpoint: its certificate is signed by the control plane's own
    // CA, and it answers the POST (with a 401 or 403, which delivery retries)
    let (ca, url) = private_ca(&s);
    let run = |label: &str, with_ca: bool| {
        let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "1h");
        args.extend(["--audit", &url, "--audit-wait", "1s"].map(String::from));
        if with_ca {
            args.extend(["--audit-ca-file".to_string(), ca.display().to_string()]);
        }
        ControllerProcess::spawn(s.env, s.dir.path(), label, &args)
    };
    let mut trusted = run("trusted", true);
    trusted.wait_ready().await;
    let name = unique_name("ca");
    s.create(&name, wfe_body("")).await;
    let answered = |p: &ControllerProcess| {
        p.log()
            .lines()
            .find(|l| l.contains("audit delivery failed"))
            .map(str::to_string)
    };
    let line = eventually(Duration::from_secs(30), "a delivery attempt", || async {
        answered(&trusted)
    })
    .await;
    assert!(line.contains("endpoint answered 40"), "{line}");
    trusted.kill();
    let mut untrusted = run("untrusted", false);
    untrusted.wait_ready().await;
    let line = eventually(Duration::from_secs(30), "a delivery attempt", || async {
        answered(&untrusted)
    })
    .await;
    assert!(line.contains("endpoint unreachable"), "{line}");
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    // the transition waits for its record: the resource has not failed yet
    let v = s.get(&name).await.expect("the resource");
    assert_ne!(v["status"]["phase"], "Failed", "{v}");
}
