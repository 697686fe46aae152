//! The offline commands as a user runs them: the built binary, its output and exit codes. No
//! control plane is needed here.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn lifecycle(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifecycle"));
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn run(args: &[&str]) -> Output {
    lifecycle(args).output().expect("running lifecycle")
}

/// Runs a command whose stdout is a pipe already closed at the other end.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    lifecycle(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("running lifecycle")
}

#[test]
fn offline_commands_end_quietly_when_their_output_is_closed() {
    for args in [
        &["simulate"][..],
        &["simulate", "--format", "json"][..],
        &["schema"][..],
        &["graph"][..],
        &["check"][..],
        &["test", "-v"][..],
        &["render", "--resource", "examples/workflowexecution.yaml"][..],
    ] {
        let out = with_closed_stdout(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
}

#[test]
fn simulate_reports_failures_as_json_with_format_json() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("a folder");
    std::fs::create_dir(dir.path().join("templates")).expect("a templates folder");
    for f in std::fs::read_dir(root.join("templates")).expect("templates") {
        let f = f.expect("a template");
        std::fs::copy(f.path(), dir.path().join("templates").join(f.file_name()))
            .expect("copying a template");
    }
    let broken = dir.path().join("lifecycle.yaml");
    let text = std::fs::read_to_string(root.join("lifecycle.yaml")).expect("the default rules");
    std::fs::write(
        &broken,
        text.replacen("        to: Running\n", "        to: Runing\n", 1),
    )
    .expect("writing rules");
    let broken = broken.display().to_string();
    let cases: [(&[&str], i32, &str); 4] = [
        (&["--rules", &broken], 1, "rules"),
        (&["--resource", "no/such/file.yaml"], 2, "resource"),
        (&["--start", "yesterday"], 2, "arguments"),
        (&["--outcome", "exploded"], 1, "simulation"),
    ];
    for (extra, code, kind) in cases {
        let mut args = vec!["simulate", "--format", "json"];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(v["error"]["kind"], kind, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        if kind == "rules" {
            // the typo, once: not also the phases and the cooldown behind it
            assert_eq!(
                v["error"]["problems"].as_array().map(Vec::len),
                Some(1),
                "{v}"
            );
            assert_eq!(v["error"]["problems"][0]["line"], 274, "{v}");
            assert!(
                v["error"]["problems"][0]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("unknown phase `Runing`; did you mean `Running`?"),
                "{v}"
            );
        }
    }
}

#[test]
fn a_file_of_the_wrong_kind_says_which_command_reads_it() {
    let out = run(&["test", "lifecycle.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "cannot read scenario: this looks like a rules file, not a scenario: run `lifecycle check lifecycle.yaml`"
        ),
        "{stdout}"
    );
    let scenario = "tests/lifecycle/conditions-successful-run-all-true.yaml";
    let out = run(&["check", scenario]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr,
        format!(
            "1 problem in the rules:\n  {scenario}:1:1: (document): this looks like a scenario file (it has `steps`), not a rules file: run it with `lifecycle test {scenario}`\n"
        )
    );
}
