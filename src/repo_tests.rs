//! Checks of the repository itself: the shipped rules have one source, generated docs stay in
//! sync, and the pure core stays pure.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped rules live once, in deploy/base/rules/ (kustomize reads only files whose real path
/// is below its folder); every other place that names them is a symbolic link there.
#[test]
fn the_shipped_rules_and_the_crd_have_one_source() {
    let r = root();
    for (link, source) in [
        ("lifecycle.yaml", "deploy/base/rules/lifecycle.yaml"),
        ("templates", "deploy/base/rules/templates"),
        (
            "charts/lifecycle-engine/files/lifecycle.yaml",
            "deploy/base/rules/lifecycle.yaml",
        ),
        (
            "charts/lifecycle-engine/files/templates",
            "deploy/base/rules/templates",
        ),
        ("charts/lifecycle-engine/crds", "deploy/base/crds"),
        ("deploy/crds", "deploy/base/crds"),
    ] {
        let meta =
            std::fs::symlink_metadata(r.join(link)).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert!(
            meta.file_type().is_symlink(),
            "{link} must be a symbolic link to {source}, not a copy"
        );
        assert_eq!(
            std::fs::canonicalize(r.join(link)).unwrap(),
            std::fs::canonicalize(r.join(source)).unwrap(),
            "{link} must link to {source}"
        );
    }
}

/// The kustomize ConfigMap of the templates lists each file (a generator takes files, not
/// folders): a template added to templates/ and not listed would be missing from the install.
#[test]
fn the_kustomization_ships_every_template() {
    let r = root();
    let kustomization = std::fs::read_to_string(r.join("deploy/base/kustomization.yaml")).unwrap();
    let names = file_names(&r.join("deploy/base/rules/templates"));
    assert!(!names.is_empty(), "deploy/base/rules/templates is empty");
    for name in &names {
        assert!(
            kustomization.contains(&format!("rules/templates/{name}")),
            "deploy/base/kustomization.yaml does not list rules/templates/{name} in the lifecycle-templates ConfigMap"
        );
    }
}

/// The files of `dir` (names, sorted), empty when it cannot be read.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

/// Markers around the generated `lifecycle run` reference in docs/operations.md.
const FLAGS_BEGIN: &str = "<!-- lifecycle run flags: generated from the flag definitions (the text of \
                           `lifecycle run --help`); `LIFECYCLE_UPDATE_DOCS=1 cargo test --lib \
                           repo_tests` rewrites it -->";
const FLAGS_END: &str = "<!-- end of lifecycle run flags -->";

/// The `lifecycle run` flags as a Markdown table: flag, environment variable, default, help.
fn run_flags_table() -> String {
    use clap::Args;
    let mut cmd = crate::runtime::controller::RunArgs::augment_args(clap::Command::new("run"));
    cmd.build();
    let mut out =
        String::from("| flag | environment | default | what it does |\n|---|---|---|---|\n");
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if long == "help" {
            continue;
        }
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        let flag = if takes_value {
            let name = arg
                .get_value_names()
                .and_then(|names| names.first())
                .map_or_else(|| long.to_uppercase(), |n| n.to_string());
            format!("`--{long} {name}`")
        } else {
            format!("`--{long}`")
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| format!("`{}`", v.to_string_lossy()))
            .collect();
        let mut help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|");
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !help.is_empty() && !help.ends_with('.') {
            help.push('.');
        }
        if !values.is_empty() {
            help.push_str(&format!(" One of {}.", values.join(", ")));
        }
        out.push_str(&format!(
            "| {flag} | {env} | {} | {help} |\n",
            default.join(", ")
        ));
    }
    out
}

#[test]
fn the_operations_guide_lists_every_lifecycle_run_flag() {
    let path = root().join("docs/operations.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (Some(begin), Some(end)) = (text.find(FLAGS_BEGIN), text.find(FLAGS_END)) else {
        panic!(
            "docs/operations.md lacks the markers of the lifecycle run flags:\n{FLAGS_BEGIN}\n{FLAGS_END}"
        );
    };
    let start = begin + FLAGS_BEGIN.len();
    let generated = format!("\n{}", run_flags_table());
    if text[start..end] != generated {
        if std::env::var_os("LIFECYCLE_UPDATE_DOCS").is_some() {
            let updated = format!("{}{generated}{}", &text[..start], &text[end..]);
            std::fs::write(&path, updated).unwrap();
            return;
        }
        panic!(
            "the lifecycle run flags in docs/operations.md differ from the flag definitions; \
             LIFECYCLE_UPDATE_DOCS=1 cargo test --lib repo_tests rewrites them. Expected:{generated}"
        );
    }
}

/// What the pure core must never use: the network, processes, the file system, the environment,
/// the clock, or an async runtime. Each entry is a text that would appear in code using it.
const IMPURE: &[&str] = &[
    "kube::",
    "k8s_openapi",
    "tokio",
    "reqwest",
    "axum",
    "notify::",
    "std::fs",
    "fs::read",
    "File::open",
    "std::env",
    "env::var",
    "std::net",
    "std::process",
    "SystemTime",
    "Instant",
    "Timestamp::now",
    "Zoned::now",
    "thread::sleep",
];

/// Files of the pure core allowed to read files, each with why: reading is one step before the
/// pure compilation, kept in one place so everything after it can be tested from strings.
const READS_FILES: &[&str] = &[
    // `Sources::read` and `read_limited`: the rules file and its templates, then compiled
    "src/rules/sources.rs",
];

/// The code of a source file without its test module (`#[cfg(test)] mod tests { ... }` at the
/// end, as rustfmt and this project place it); `#[cfg(test)] mod name;` declarations are skipped.
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line == "#[cfg(test)]" {
            let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
            if next.starts_with("mod ") && next.ends_with('{') {
                break;
            }
            i += 2;
            continue;
        }
        if !line.starts_with("//") {
            out.push_str(lines[i]);
            out.push('\n');
        }
        i += 1;
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && !path.to_string_lossy().ends_with("_tests.rs")
        {
            out.push(path);
        }
    }
}

#[test]
fn the_pure_core_touches_no_network_files_environment_or_clock() {
    let r = root();
    let mut files = vec![r.join("src/time.rs")];
    for dir in ["src/rules", "src/expr", "src/render", "src/engine"] {
        rust_files(&r.join(dir), &mut files);
    }
    assert!(files.len() > 10, "the pure core's files were not found");
    let mut found = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(r)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for line in code.lines() {
            for bad in IMPURE {
                let allowed = READS_FILES.contains(&rel.as_str())
                    && ["std::fs", "fs::read", "File::open"].contains(bad);
                if line.contains(bad) && !allowed {
                    found.push(format!("{rel}: `{bad}` in: {}", line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the pure core (rules, expr, render, engine, time) must not use the network, files, the \
         environment or the clock; move this into src/runtime or src/offline, or pass the value \
         in:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_purity_check_sees_impure_code() {
    let code = code_of(
        "use std::fs;\n#[cfg(test)]\nmod helpers;\nfn a() { let _ = std::env::var(\"X\"); }\n\
         #[cfg(test)]\nmod tests {\n    fn b() { std::process::exit(1) }\n}\n",
    );
    assert!(code.contains("std::env::var"));
    assert!(code.contains("use std::fs"));
    assert!(
        !code.contains("std::process"),
        "the test module is left out"
    );
    assert!(!code.contains("mod helpers"));
}
