//! The README's walkthrough ("Run the controller against the local control plane, and play Tekton
//! by hand"), run as written, and checked against what its text says.
//!
//! The blocks are taken from README.md itself: every ```` ```sh ```` block preceded by a
//! `<!-- walkthrough: NAME -->` line, in order, so the README cannot drift from what is tested.
//! They run in one bash session (`set -euo pipefail`, like a careful reader's terminal), from the
//! repository's root, with two documented substitutions: `cargo run --` becomes the `lifecycle`
//! binary this test run built (no rebuild inside a test), and `127.0.0.1:8080` a free port (other
//! tests, or a developer's controller, may hold 8080). Between blocks the test checks, through
//! the API server, the block's output and the session's transcript, what the README claims.
//!
//! The control plane is one of this test's own, in `target/tmp/walkthrough-<pid>`, never the
//! shared one: the walkthrough's controller governs every namespace and creates fixed namespaces.
//! It is started before the first block with `--owner-pid` (a watchdog stops it if this process
//! dies), so the block's own `scripts/testenv up` finds it up and only prints the export line;
//! the walkthrough's last block stops it. The rules are edited on a copy (`mktemp -d`, here under
//! the test's folder), never in the checkout: the test checks the checkout's `lifecycle.yaml` is
//! unchanged.
//!
//! Also here, because the walkthrough serves on a fixed port: `lifecycle run` refuses to start
//! when that address is taken, before it writes anything to the API server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{
    ControllerProcess, Scope, condition, metric_value, repo_root, run_name, text,
    workflowexecutions,
};

/// The marked blocks, in the order the README has them. Adding, removing or reordering a block
/// is a change to this test too.
const BLOCKS: &[&str] = &[
    "control-plane",
    "controller",
    "create",
    "tekton",
    "cooldown",
    "reload",
    "explain",
    "delete",
    "stop",
];
/// The example the walkthrough applies.
const NAMESPACE: &str = "kubernaut-system";
const NAME: &str = "restart-nginx-7f3a";
const TARGET: &str = "default/deployment/nginx";
/// What the README runs the controller with, and the address substituted.
const CARGO_RUN: &str = "cargo run --";
const ADDRESS: &str = "127.0.0.1:8080";
/// How long one block may take.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn readme_walkthrough_runs_as_written_and_shows_what_it_says() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let blocks = walkthrough_blocks(&readme);
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, BLOCKS, "the README's walkthrough blocks");
    let code = |name: &str| {
        blocks
            .iter()
            .find(|(n, _)| n == name)
            .expect(name)
            .1
            .clone()
    };
    let cooldown = setting_secs(&code("controller"), "cooldown");
    let checkout_rules = std::fs::read(repo_root().join("lifecycle.yaml")).expect("lifecycle.yaml");

    let plane = OwnControlPlane::start().await;
    let port = free_port();
    let mut shell = Shell::start(&plane, port).await;

    shell.run("control-plane", &code("control-plane")).await;
    let client = plane.client().await;
    let wfes =
        Api::<DynamicObject>::namespaced_with(client.clone(), NAMESPACE, &workflowexecutions());
    let phases = watch_phases(wfes.clone()).await;

    let out = shell.run("controller", &code("controller")).await;
    assert!(out.contains("caches synced: true"), "{out}");
    let first_revision = revision(&out);
    assert!(
        out.contains(&format!("rules: {}", shell.tmp.path().display())),
        "the controller runs the copy of the rules: {out}"
    );

    let created = Instant::now();
    let out = shell.run("create", &code("create")).await;
    let run = run_name(TARGET);
    assert!(out.contains(&run), "the PipelineRun {run} is listed: {out}");
    phases.wait_for(&["Pending", "Running"]).await;

    let out = shell.run("tekton", &code("tekton")).await;
    let spent = created.elapsed().as_secs_f64();
    let wfe = get(&wfes).await.expect("the WorkflowExecution");
    phases.wait_for(&["Pending", "Running", "Completed"]).await;
    let duration = text(&wfe, "/status/duration");
    let secs = go_duration_secs(&duration);
    let (start, end) = (
        timestamp(&text(&wfe, "/status/startTime")),
        timestamp(&text(&wfe, "/status/completionTime")),
    );
    assert_eq!(secs, end - start, "duration = completion - start: {wfe}");
    // the README sleeps 5 s between the two patches; the duration can't exceed the time spent
    assert!(
        (5..=spent.ceil() as i64 + 1).contains(&secs),
        "duration {duration} is not about the {spent:.1} s the walkthrough spent"
    );
    let listed = out
        .lines()
        .find(|l| l.starts_with(NAME))
        .unwrap_or_else(|| panic!("kubectl get wfe lists {NAME}: {out}"));
    assert!(
        listed.contains("Completed") && listed.split_whitespace().any(|w| w == duration),
        "kubectl get wfe shows Completed and {duration}: {listed}"
    );
    assert_eq!(
        condition(&wfe, "TektonPipelineComplete").map(|c| text(&c, "/message")),
        Some(format!("All tasks completed successfully in {duration}"))
    );
    let completed_note =
        format!("Workflow restart-deployment completed successfully in {duration}");
    let seen = events(&client).await;
    assert!(
        seen.contains(&("WorkflowCompleted".into(), completed_note.clone())),
        "{seen:?}"
    );
    assert!(
        out.contains(&completed_note),
        "kubectl describe shows the Event: {out}"
    );
    let started = audit_record(&shell.transcript, "workflow.started");
    assert_eq!(
        started["event_data"]["started_at"],
        text(&wfe, "/status/startTime").as_str()
    );
    let completed = audit_record(&shell.transcript, "workflow.completed");
    assert_eq!(completed["event_data"]["duration"], duration.as_str());
    assert_eq!(
        completed["event_data"]["completed_at"],
        text(&wfe, "/status/completionTime").as_str()
    );
    for (series, value) in [
        (
            "workflowexecution_reconciler_pipelinerun_creations_total",
            1.0,
        ),
        (
            "workflowexecution_reconciler_total{outcome=\"Completed\"}",
            1.0,
        ),
        (
            "workflowexecution_reconciler_duration_seconds_count{outcome=\"Completed\"}",
            1.0,
        ),
        (
            "workflowexecution_reconciler_duration_seconds_sum{outcome=\"Completed\"}",
            secs as f64,
        ),
    ] {
        assert_eq!(metric_value(&out, series), value, "{series} in: {out}");
    }
    assert!(
        condition(&wfe, "LockReleased").is_none(),
        "released at once: {wfe}"
    );
    assert!(
        completed_at(&wfe) + cooldown > now_secs(),
        "the cooldown is over before the check: the machine is too slow for this test"
    );
    assert!(
        run_exists(&client, &run).await,
        "the lock is kept during the cooldown"
    );

    let out = shell.run("cooldown", &code("cooldown")).await;
    let (still_there, after) = out
        .split_once("condition met")
        .unwrap_or_else(|| panic!("kubectl wait says `condition met`: {out}"));
    assert!(
        still_there.contains(&run),
        "listed during the cooldown: {out}"
    );
    assert!(
        after.contains("No resources found"),
        "deleted after it: {out}"
    );
    let wfe = get(&wfes).await.expect("the WorkflowExecution");
    let released = condition(&wfe, "LockReleased").expect("LockReleased");
    let waited = timestamp(&text(&released, "/lastTransitionTime")) - completed_at(&wfe);
    assert!(
        (cooldown..=cooldown + 10).contains(&waited),
        "released {waited} s after completion, the cooldown is {cooldown} s"
    );
    let reasons: Vec<String> = events(&client).await.into_iter().map(|(r, _)| r).collect();
    for reason in ["PipelineRunCreated", "WorkflowCompleted", "LockReleased"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {reasons:?}");
        assert!(
            out.contains(reason),
            "kubectl get events shows {reason}: {out}"
        );
    }

    let out = shell.run("reload", &code("reload")).await;
    // the two /readyz bodies, each beginning `rules: FILE (revision R)`
    let with_newline = format!("\n{out}");
    let bodies: Vec<&str> = with_newline.split("\nrules: ").skip(1).collect();
    let [valid, broken] = bodies[..] else {
        panic!("two /readyz bodies: {out}")
    };
    let new_revision = revision(valid);
    assert_ne!(
        new_revision, first_revision,
        "the valid change is loaded: {valid}"
    );
    assert!(
        valid.contains("reloads accepted: 1, rejected: 0") && !valid.contains("REJECTED"),
        "{valid}"
    );
    assert!(
        shell.transcript.contains("rules reloaded"),
        "the log says so"
    );
    assert_eq!(
        revision(broken),
        new_revision,
        "the old rules keep running: {broken}"
    );
    assert!(
        broken.contains("reloads accepted: 1, rejected: 1"),
        "{broken}"
    );
    assert!(
        broken.contains("last rules change REJECTED")
            && broken.contains("unknown phase `Complete`"),
        "the report, naming the phase: {broken}"
    );
    assert_eq!(
        std::fs::read(repo_root().join("lifecycle.yaml")).expect("lifecycle.yaml"),
        checkout_rules,
        "the walkthrough edits a copy, never the checkout's rules"
    );

    let out = shell.run("explain", &code("explain")).await;
    let (explained, diffed) = out
        .split_once("Rules: lifecycle.yaml (revision ")
        .unwrap_or_else(|| panic!("explain, then diff from the checkout's rules: {out}"));
    for line in [
        format!("Resource:    WorkflowExecution {NAMESPACE}/{NAME}"),
        format!("(revision {new_revision})"),
        format!("Recorded:    revision {first_revision} (last written by other rules)"),
        "Phase:       Completed".to_string(),
        "Decision now:".to_string(),
    ] {
        assert!(explained.contains(&line), "explain shows `{line}`: {out}");
    }
    assert!(
        diffed.contains(&format!("-> {}", shell.tmp.path().display()))
            && diffed.contains(&format!("(revision {new_revision})")),
        "diff compares the checkout's rules with the running copy: {out}"
    );
    for line in [
        "Changes (1):",
        "settings.pollInterval",
        "\"10s\" -> \"5s\"",
        "Scenarios: 1 run against both, 1 differ:",
        "new rules: step 1: expected requeue after 10s, got 5s",
        "Live resources: 1,",
        "diff exit status: 1",
    ] {
        assert!(diffed.contains(line), "diff shows `{line}`: {out}");
    }

    let out = shell.run("delete", &code("delete")).await;
    assert!(get(&wfes).await.is_none(), "deleted: the finalizer is gone");
    assert!(out.contains("WorkflowExecutionDeleted"), "{out}");

    shell.run("stop", &code("stop")).await;
    let status = shell
        .probe("rc=0; wait \"$controller\" || rc=$?; echo \"controller exit status: $rc\"")
        .await;
    assert!(status.contains("controller exit status: 0"), "{status}");
    assert!(
        !plane.dir.join("kubeconfig").exists(),
        "scripts/testenv down stopped the control plane"
    );
    shell.finish().await;
}

#[tokio::test]
async fn run_exits_non_zero_before_touching_the_cluster_when_its_address_is_taken() {
    let scope = Scope::new("bind").await;
    scope.create_wfe("waiting", "default/deployment/bind").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let address = taken.local_addr().expect("its address").to_string();
    let args: Vec<String> = scope
        .run_args(&repo_root().join("lifecycle.yaml"), "5m")
        .into_iter()
        .map(|a| {
            if a == "127.0.0.1:0" {
                address.clone()
            } else {
                a
            }
        })
        .collect();
    assert!(args.contains(&address), "{args:?}");
    let mut controller = ControllerProcess::spawn(scope.env, scope.dir.path(), "bind", &args);
    let (code, log) = controller.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "error: cannot serve /healthz, /readyz and /metrics on {address}: Address already in use"
        )),
        "{log}"
    );
    let wfe = scope.get("waiting").await.expect("the WorkflowExecution");
    assert!(
        wfe.pointer("/metadata/finalizers").is_none(),
        "no finalizer: {wfe}"
    );
    assert!(wfe.get("status").is_none(), "no status: {wfe}");
    assert!(scope.run_list().await.is_empty(), "no PipelineRun");
    assert!(scope.events("waiting").await.is_empty(), "no Event");
    drop(taken);
}

/// The marked `sh` blocks of the README, by name, in order. Panics on a marker without a block
/// and on an unmarked `sh` block among the marked ones (it would be a step nobody tests).
fn walkthrough_blocks(readme: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut unmarked = Vec::new();
    let mut marker: Option<String> = None;
    let mut lines = readme.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if let Some(rest) = line.trim().strip_prefix("<!-- walkthrough:") {
            let name = rest.trim_end_matches("-->").trim();
            assert!(
                marker.is_none(),
                "README.md:{}: two markers in a row",
                n + 1
            );
            marker = Some(name.to_string());
            continue;
        }
        let Some(lang) = line.strip_prefix("```") else {
            assert!(
                marker.is_none() || line.trim().is_empty(),
                "README.md:{}: a walkthrough marker must precede its ```sh block",
                n + 1
            );
            continue;
        };
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        match marker.take() {
            Some(name) => {
                assert_eq!(lang, "sh", "README.md:{}: block {name}", n + 1);
                blocks.push((name, body));
            }
            None if lang == "sh" && !blocks.is_empty() => unmarked.push((n + 1, blocks.len())),
            None => {}
        }
    }
    for (line, before) in unmarked {
        assert!(
            before == blocks.len(),
            "README.md:{line}: a ```sh block inside the walkthrough without a `<!-- walkthrough: NAME -->` marker"
        );
    }
    blocks
}

/// Seconds of a `--set NAME=VALUE` given in whole seconds (`15s`) in a block.
fn setting_secs(block: &str, name: &str) -> i64 {
    let value = block
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("the block sets {name}: {block}"));
    value
        .strip_suffix('s')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}={value} is not whole seconds"))
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Seconds since the epoch of an RFC 3339 timestamp.
fn timestamp(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("`{text}` is not a timestamp: {e}"))
        .as_second()
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn completed_at(wfe: &Value) -> i64 {
    timestamp(&text(wfe, "/status/completionTime"))
}

/// Seconds of a Go duration text of whole seconds (`5s`, `1m2s`, `1h0m0s`); panics on anything
/// else, a negative duration included.
fn go_duration_secs(text: &str) -> i64 {
    let mut total = 0;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' if !number.is_empty() => {
                let n: i64 = number.parse().expect("digits");
                total += n * [("h", 3600), ("m", 60), ("s", 1)]
                    .iter()
                    .find(|(u, _)| u.starts_with(c))
                    .map_or(0, |(_, f)| *f);
                number.clear();
            }
            _ => panic!("`{text}` is not a non-negative Go duration of whole seconds"),
        }
    }
    assert!(number.is_empty() && !text.is_empty(), "`{text}`");
    total
}

/// The revision in a `/readyz` body.
fn revision(readyz: &str) -> String {
    readyz
        .split("(revision ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no revision in: {readyz}"))
        .to_string()
}

/// The audit record of `event_type` about the example among the transcript's JSON lines
/// (`--audit stdout`).
fn audit_record(transcript: &str, event_type: &str) -> Value {
    transcript
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|r| r["event_type"] == event_type && r["resource_id"] == NAME)
        .unwrap_or_else(|| panic!("no audit record {event_type} in the transcript"))
}

async fn get(api: &Api<DynamicObject>) -> Option<Value> {
    api.get_opt(NAME)
        .await
        .expect("reading the WorkflowExecution")
        .map(|o| serde_json::to_value(o).expect("json"))
}

/// (reason, note) of the Events about the example.
async fn events(client: &kube::Client) -> Vec<(String, String)> {
    Api::<Event>::namespaced(client.clone(), NAMESPACE)
        .list(&Default::default())
        .await
        .expect("listing Events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(NAME))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Whether the PipelineRun `name` exists in the walkthrough's execution namespace.
async fn run_exists(client: &kube::Client, name: &str) -> bool {
    Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "kubernaut-workflows",
        &crate::tekton::pipelineruns(),
    )
    .get_opt(name)
    .await
    .expect("reading the PipelineRun")
    .is_some()
}

/// The phases the example goes through, as a watch sees every write.
struct Phases(Arc<Mutex<Vec<String>>>);

impl Phases {
    fn seen(&self) -> Vec<String> {
        self.0.lock().expect("phases").clone()
    }

    /// Waits (a watch event may trail what kubectl saw) until exactly these were seen.
    async fn wait_for(&self, expected: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.seen() != expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(self.seen(), expected, "the phases, in order");
    }
}

async fn watch_phases(api: Api<DynamicObject>) -> Phases {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let params = WatchParams::default().fields(&format!("metadata.name={NAME}"));
    let mut stream = api
        .watch(&params, "0")
        .await
        .expect("watching WorkflowExecutions")
        .boxed();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.try_next().await {
            if let WatchEvent::Added(o) | WatchEvent::Modified(o) = event {
                let phase = o.data.pointer("/status/phase").and_then(Value::as_str);
                let mut seen = sink.lock().expect("phases");
                if let Some(phase) = phase
                    && seen.last().map(String::as_str) != Some(phase)
                {
                    seen.push(phase.to_string());
                }
            }
        }
    });
    Phases(seen)
}

/// A control plane of this test's own; `scripts/testenv down` when dropped (the walkthrough
/// stops it itself when it gets that far).
struct OwnControlPlane {
    dir: PathBuf,
}

impl OwnControlPlane {
    async fn start() -> OwnControlPlane {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("walkthrough-{}", std::process::id()));
        let plane = OwnControlPlane { dir };
        plane.testenv(&["build"]).await;
        plane
            .testenv(&["up", "--owner-pid", &std::process::id().to_string()])
            .await;
        plane
    }

    async fn testenv(&self, args: &[&str]) {
        let out = tokio::process::Command::new(repo_root().join("scripts/testenv"))
            .args(args)
            .env("LIFECYCLE_TESTENV_DIR", &self.dir)
            .output()
            .await
            .expect("running scripts/testenv");
        assert!(
            out.status.success(),
            "scripts/testenv {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An administrator client.
    async fn client(&self) -> kube::Client {
        let path = self.dir.join("kubeconfig");
        let file = Kubeconfig::read_from(&path).expect("the kubeconfig");
        let options = KubeConfigOptions {
            context: Some("admin".into()),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(file, &options)
            .await
            .expect("the admin context");
        kube::Client::try_from(config).expect("a client")
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("scripts/testenv"))
            .arg("down")
            .env("LIFECYCLE_TESTENV_DIR", &self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// One bash session, fed block after block, its output (standard error included) collected
/// line by line. Dropping it kills its process group (bash and the controller it started).
struct Shell {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Everything so far: each block's text, then its output.
    transcript: String,
    /// The session's temporary folder (`TMPDIR`, so `mktemp -d` lands here).
    tmp: tempfile::TempDir,
    port: u16,
    blocks: usize,
}

impl Shell {
    async fn start(plane: &OwnControlPlane, port: u16) -> Shell {
        let tmp = tempfile::Builder::new()
            .prefix("walkthrough-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temporary folder");
        let mut command = tokio::process::Command::new("bash");
        command
            .args(["--noprofile", "--norc"])
            .current_dir(repo_root())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        // Only what a fresh terminal at the checkout would have, plus where this control plane is.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("LIFECYCLE_") && name != "LIFECYCLE_TESTENV_CACHE" {
                command.env_remove(name.as_ref());
            }
        }
        command
            .env("LIFECYCLE_TESTENV_DIR", &plane.dir)
            .env("KUBECONFIG", plane.dir.join("kubeconfig"))
            .env("TMPDIR", tmp.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        let mut child = command.spawn().expect("starting bash");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut shell = Shell {
            child,
            stdin: Some(stdin),
            lines,
            transcript: String::new(),
            tmp,
            port,
            blocks: 0,
        };
        shell.send("exec 2>&1\nset -euo pipefail\n").await;
        shell
    }

    async fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("bash's input is open");
        stdin
            .write_all(text.as_bytes())
            .await
            .expect("writing to bash");
        stdin.flush().await.expect("writing to bash");
    }

    /// Runs one README block (after the substitutions); returns what it printed.
    async fn run(&mut self, name: &str, code: &str) -> String {
        let adapted = self.adapt(name, code);
        self.blocks += 1;
        let file = self
            .tmp
            .path()
            .join(format!("{:02}-{name}.sh", self.blocks));
        std::fs::write(&file, &adapted).expect("writing the block");
        self.transcript.push_str(&format!(
            "----- block {name} -----\n{adapted}----- output -----\n"
        ));
        // Sourced in this shell (its variables and background job stay), stdin not the script's.
        self.execute(name, &format!("source '{}' </dev/null", file.display()))
            .await
    }

    /// Runs a command of the test's own in the session (not a README step).
    async fn probe(&mut self, command: &str) -> String {
        self.transcript
            .push_str(&format!("----- test's own command -----\n{command}\n"));
        self.execute("probe", command).await
    }

    async fn execute(&mut self, name: &str, command: &str) -> String {
        let marker = format!("@@ walkthrough {} done @@", self.blocks);
        self.send(&format!("{command}\necho '{marker}'\n")).await;
        let deadline = tokio::time::Instant::now() + BLOCK_TIMEOUT;
        let mut output = String::new();
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(&marker) => return output,
                Ok(Some(line)) => {
                    self.transcript.push_str(&line);
                    self.transcript.push('\n');
                    output.push_str(&line);
                    output.push('\n');
                }
                Ok(None) => {
                    let status = self.child.wait().await.expect("bash");
                    panic!("block {name} failed: bash exited ({status})");
                }
                Err(_) => panic!("block {name} still running after {BLOCK_TIMEOUT:?}"),
            }
        }
    }

    /// The README text with `cargo run --` replaced by the built binary and port 8080 by ours.
    fn adapt(&self, name: &str, code: &str) -> String {
        let runs = ["controller", "explain"].contains(&name);
        assert_eq!(
            code.contains(CARGO_RUN),
            runs,
            "block {name}: only the controller and explain blocks run `{CARGO_RUN}`"
        );
        if name == "controller" {
            assert!(
                code.contains(ADDRESS),
                "the controller block uses `{ADDRESS}`"
            );
        }
        code.replace(CARGO_RUN, env!("CARGO_BIN_EXE_lifecycle"))
            .replace(ADDRESS, &format!("127.0.0.1:{}", self.port))
    }

    /// Ends the session (end of input) and expects bash to exit 0.
    async fn finish(mut self) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("bash exits at the end of its input")
            .expect("bash");
        assert!(status.success(), "bash exited with {status}");
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // bash and the background controller share the group bash leads
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- walkthrough transcript -----\n{}----- end of walkthrough transcript -----",
                self.transcript
            );
        }
    }
}
