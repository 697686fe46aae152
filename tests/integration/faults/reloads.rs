use super::*;

/// Copies lifecycle.yaml and templates/ into `<scope dir>/<folder>`; returns the rules file.
fn copy_rules(s: &Scope, folder: &str) -> PathBuf {
    let root = support::repo_root();
    let dir = s.dir.path().join(folder);
    std::fs::create_dir_all(dir.join("templates")).expect("rules folder");
    std::fs::copy(root.join("lifecycle.yaml"), dir.join("lifecycle.yaml")).expect("copy rules");
    for f in std::fs::read_dir(root.join("templates")).expect("templates") {
        let f = f.expect("template");
        std::fs::copy(f.path(), dir.join("templates").join(f.file_name())).expect("copy template");
    }
    dir.join("lifecycle.yaml")
}

/// Writes a file whole in one rename, as a ConfigMap volume update or an editor's save does.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("writing a variant");
    std::fs::rename(&tmp, path).expect("renaming a variant into place");
}

#[tokio::test]
async fn a_reload_storm_never_lets_a_reconcile_use_an_invalid_rule_set() {
    let m = (size("LIFECYCLE_FAULT_LIFECYCLES", 12) / 3).max(4);
    let storm = size("LIFECYCLE_FAULT_STORM_MS", 3000);
    let s = Scope::new("fault-storm").await;
    let rules = copy_rules(&s, "rules");
    let original = std::fs::read_to_string(&rules).expect("rules");
    let account = "runnerServiceAccount: kubernaut-workflow-runner";
    assert!(original.contains(account));
    // valid variants: another runner account (visible in each run); invalid: an unknown phase,
    // a YAML syntax error, an empty file
    let valid: Vec<(String, String)> = ["kubernaut-workflow-runner", "runner-b", "runner-c"]
        .iter()
        .map(|a| {
            (
                a.to_string(),
                original.replacen(account, &format!("runnerServiceAccount: {a}"), 1),
            )
        })
        .collect();
    let invalid = [
        original.replacen("        to: Running\n", "        to: Runnning\n", 1),
        original.replacen("settings:", "settings: [", 1),
        String::new(),
    ];
    let probe = s.dir.path().join("rules").join("probe.yaml");
    let mut revisions = BTreeMap::new();
    for (a, text) in &valid {
        write_atomically(&probe, text);
        let r = lifecycle_engine::rules::Rules::load(&probe, &[]).expect("a valid variant");
        revisions.insert(r.revision, a.clone());
    }
    for text in &invalid {
        write_atomically(&probe, text);
        assert!(
            lifecycle_engine::rules::Rules::load(&probe, &[]).is_err(),
            "an invalid variant loads"
        );
    }
    std::fs::remove_file(&probe).expect("probe");
    assert_eq!(revisions.len(), valid.len());

    // every revision ever recorded on a resource, as the watch shows them
    let seen: Arc<Mutex<BTreeSet<String>>> = Default::default();
    let seen_task = {
        let seen = seen.clone();
        let api = s.wfes();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event {
                    let v = serde_json::to_value(o).expect("json");
                    let r = text(&v, "/status/rulesRevision");
                    if !r.is_empty() {
                        seen.lock().unwrap().insert(r);
                    }
                }
            }
        })
    };
    let ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &s.run_args(&rules, "2s"));
    let mut ctl = ctl;
    ctl.wait_ready().await;
    let items = lifecycles(m, "storm", 30);
    let (mut good, mut bad, mut settled_bad) = (0u64, 0u64, 0u64);
    let storm_writer = async {
        let mut rng = Rng::new(31);
        let end = tokio::time::Instant::now() + Duration::from_millis(storm);
        let (mut i, mut burst, mut current) = (0u64, 0u64, 0usize);
        while tokio::time::Instant::now() < end {
            i += 1;
            if i.is_multiple_of(2) {
                write_atomically(&rules, &invalid[rng.below(invalid.len() as u64) as usize]);
                bad += 1;
            } else {
                write_atomically(&rules, &valid[rng.below(valid.len() as u64) as usize].1);
                good += 1;
            }
            tokio::time::sleep(rng.ms(50, 100)).await;
            if i.is_multiple_of(6) {
                // let the reloader's debounce (300 ms) settle on a variant now and then, so that
                // reloads, accepted and rejected, happen while lifecycles run
                burst += 1;
                if burst.is_multiple_of(2) {
                    write_atomically(&rules, &invalid[0]);
                    bad += 1;
                    settled_bad += 1;
                } else {
                    current = (current + 1) % valid.len();
                    write_atomically(&rules, &valid[current].1);
                    good += 1;
                }
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        }
        // the storm ends on a valid variant
        current = (current + 1) % valid.len();
        write_atomically(&rules, &valid[current].1);
        good += 1;
    };
    let players = futures::future::join_all(
        items
            .iter()
            .map(|(n, t, o, r)| play(&s, n, t, *o, r.clone(), storm)),
    );
    tokio::join!(storm_writer, players);
    for (n, t, o, _) in &items {
        assert_finished(&s, n, t, *o).await;
    }
    let last = lifecycle_engine::rules::Rules::load(&rules, &[])
        .expect("valid")
        .revision;
    until(30, "the last variant loaded", || async {
        (ctl.revision().await == last).then_some(())
    })
    .await;
    seen_task.abort();
    let seen = seen.lock().unwrap().clone();
    for r in &seen {
        assert!(
            revisions.contains_key(r),
            "a resource recorded revision {r}, none of the valid variants {revisions:?}"
        );
    }
    assert!(!seen.is_empty());
    assert!(ctl.is_running());
    let m_text = ctl.metrics().await;
    let ok = support::metric_value(&m_text, "lifecycle_rules_reload_total{result=\"ok\"}");
    let err = support::metric_value(&m_text, "lifecycle_rules_reload_total{result=\"error\"}");
    if settled_bad > 0 {
        assert!(err >= 1.0, "no rejected reload: {m_text}");
    }
    assert!(ok >= 1.0, "no accepted reload: {m_text}");
    assert_no_panic(&s);
    eprintln!(
        "figures: storm: {m} lifecycles, {} rewrites ({good} valid, {bad} invalid) in {storm} ms, controller reloads ok={ok} error={err}, revisions recorded {}",
        good + bad,
        seen.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. hostile resources
