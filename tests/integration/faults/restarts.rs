use super::*;

#[tokio::test]
async fn lifecycles_survive_a_controller_killed_at_random_moments() {
    let m = size("LIFECYCLE_FAULT_LIFECYCLES", 12);
    let kills = size("LIFECYCLE_FAULT_KILLS", 4);
    let s = Scope::new("fault-crash").await;
    let watch = RunWatch::start(s.runs()).await;
    let items = lifecycles(m, "crash", 1);
    let cooldown = "2s";
    let ctl = s.start("ctl-000", cooldown).await;
    let controller = Arc::new(tokio::sync::Mutex::new(ctl));
    let spread = m * 400;

    let killer = async {
        let mut rng = Rng::new(2);
        let mut after_create = 0;
        for k in 0..kills {
            if k % 2 == 1 {
                // right after a run is created, before its resource's status is written
                let before = watch.created();
                let seen = tokio::time::timeout(Duration::from_secs(10), async {
                    while watch.created() == before {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
                .await;
                after_create += u64::from(seen.is_ok());
            } else {
                tokio::time::sleep(rng.ms(200, 1500)).await;
            }
            let mut ctl = controller.lock().await;
            assert!(ctl.is_running(), "controller {} died on its own", ctl.label);
            ctl.kill();
            *ctl = s.start(&format!("ctl-{:03}", k + 1), cooldown).await;
        }
        after_create
    };
    let players = futures::future::join_all(
        items
            .iter()
            .map(|(n, t, o, r)| play(&s, n, t, *o, r.clone(), spread)),
    );
    let (after_create, played) = tokio::join!(killer, players);
    watch.played(&played);

    for (n, t, o, _) in &items {
        assert_finished(&s, n, t, *o).await;
    }
    until(
        60,
        "every PipelineRun deleted after its cooldown",
        || async { s.run_list().await.is_empty().then_some(()) },
    )
    .await;
    watch.assert(&one_run_each(&items));
    assert!(controller.lock().await.is_running());
    assert_no_panic(&s);
    let failed = items.iter().filter(|i| i.2 == Outcome::Fails).count();
    eprintln!(
        "figures: crash: {m} lifecycles ({failed} failing), {kills} SIGKILLs ({after_create} right after a run was created), {} controller processes, {} audit transitions checked, {}",
        kills + 1,
        2 * m,
        watch.figures()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. API server restart

#[tokio::test]
async fn lifecycles_survive_an_api_server_restart_without_a_controller_restart() {
    let m = (size("LIFECYCLE_FAULT_LIFECYCLES", 12) / 3).max(4);
    let restarts = size("LIFECYCLE_FAULT_RESTARTS", 1);
    let plane = PrivateControlPlane::start("faults-apiserver").await;
    let s = Scope::in_env(plane.env, "fault-api").await;
    let watch = RunWatch::start(s.runs()).await;
    let mut ctl = ControllerProcess::spawn(
        s.env,
        s.dir.path(),
        "ctl",
        &s.run_args(&support::repo_root().join("lifecycle.yaml"), "2s"),
    );
    ctl.wait_ready().await;
    let pid = ctl.pid();

    let mut all = Vec::new();
    for round in 0..restarts {
        // a batch in flight: some resources created before the restart, some during, some after
        let items = lifecycles(m, &format!("api{round}"), 10 + round);
        let players = futures::future::join_all(
            items
                .iter()
                .map(|(n, t, o, r)| play(&s, n, t, *o, r.clone(), m * 300)),
        );
        let restart = async {
            tokio::time::sleep(Duration::from_millis(m * 120)).await;
            let old = plane.apiserver_pid();
            plane.testenv(&["restart-apiserver"]).await;
            assert_ne!(plane.apiserver_pid(), old, "the API server was restarted");
        };
        let (played, ()) = tokio::join!(players, restart);
        watch.played(&played);
        all.extend(items);
    }
    for (n, t, o, _) in &all {
        assert_finished(&s, n, t, *o).await;
    }
    until(
        60,
        "every PipelineRun deleted after its cooldown",
        || async {
            s.runs()
                .list(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        },
    )
    .await;
    // and a resource created well after the restart runs too
    let late = unique_name("late");
    let played = play(
        &s,
        &late,
        "default/deployment/late",
        Outcome::Succeeds,
        Rng::new(99),
        0,
    )
    .await;
    watch.played([&played]);
    assert_finished(&s, &late, "default/deployment/late", Outcome::Succeeds).await;
    let mut expected = one_run_each(&all);
    expected.insert(target_label("default/deployment/late"), 1);
    watch.assert(&expected);
    assert!(ctl.is_running(), "the controller exited:\n{}", ctl.log());
    assert_eq!(ctl.pid(), pid, "the same controller process throughout");
    assert_no_panic(&s);
    eprintln!(
        "figures: apiserver: {} lifecycles, {restarts} API server restarts, 1 controller process, {}",
        all.len() + 1,
        watch.figures()
    );
    drop(ctl);
    drop(plane);
}

// ---------------------------------------------------------------------------------------------
// 3. conflicting writers

#[tokio::test]
async fn lifecycles_finish_while_another_client_keeps_rewriting_their_metadata() {
    let m = (size("LIFECYCLE_FAULT_LIFECYCLES", 12) / 3).max(4);
    let s = Scope::new("fault-writers").await;
    let watch = RunWatch::start(s.runs()).await;
    let ctl = s.start("ctl", "2s").await;
    let items = lifecycles(m, "writers", 20);
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let conflicts = AtomicU64::new(0);
    let writer = async {
        let mut rng = Rng::new(21);
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let (name, _, _, _) = &items[rng.below(items.len() as u64) as usize];
            if i.is_multiple_of(2) {
                // a merge patch of labels and annotations (no resourceVersion: always applies)
                let patch = json!({"metadata": {
                    "labels": {"example.com/writer": format!("w{i}")},
                    "annotations": {"example.com/touched": format!("{i}"), format!("example.com/n{}", i % 7): "x"},
                }});
                if s.wfes()
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            } else if let Ok(Some(mut o)) = s.wfes().get_opt(name).await {
                // a read-modify-write of the whole object: a conflict when anyone wrote meanwhile
                o.metadata
                    .labels
                    .get_or_insert_default()
                    .insert("example.com/writer".into(), format!("w{i}"));
                o.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert("example.com/touched".into(), format!("{i}"));
                match s.wfes().replace(name, &PostParams::default(), &o).await {
                    Ok(_) => {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if api_code(&e) == Some(409) => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(rng.ms(0, 15)).await;
        }
    };
    let work = async {
        let played = futures::future::join_all(
            items
                .iter()
                .map(|(n, t, o, r)| play(&s, n, t, *o, r.clone(), m * 200)),
        )
        .await;
        watch.played(&played);
        for (n, t, o, _) in &items {
            assert_finished(&s, n, t, *o).await;
        }
        stop.store(true, Ordering::SeqCst);
    };
    tokio::join!(writer, work);
    for (n, t, o, _) in &items {
        // status intact after the last metadata writes
        let v = assert_finished(&s, n, t, *o).await;
        assert!(
            text(&v, "/metadata/labels/example.com~1writer").starts_with('w'),
            "{v:#}"
        );
        assert!(support::condition(&v, "AuditRecorded").is_some(), "{v:#}");
        assert_eq!(
            v["metadata"]["finalizers"][0],
            "workflowexecution.kubernaut.ai/workflowexecution-cleanup"
        );
    }
    watch.assert(&one_run_each(&items));
    assert_no_panic(&s);
    drop(ctl);
    eprintln!(
        "figures: writers: {m} lifecycles, {} metadata writes, {} writer conflicts",
        writes.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. a burst for one target
