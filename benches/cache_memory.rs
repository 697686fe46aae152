//! Heap the controller's watch caches hold per object, by kind, as they store objects now
//! (`runtime/k8s/compact.rs`: compact JSON text) and as they did before (a `DynamicObject` per
//! object: a tree of `serde_json::Value`s), counted by a counting global allocator. The objects
//! are those of `benches/cached_objects.json` (a Running WorkflowExecution of the default rules,
//! its PipelineRun and TaskRun, as the load harness makes them), each copy with its own name,
//! uid and resourceVersion, kept as the controller keeps them: the governed resource whole
//! without `managedFields`, the others projected to what the default rules read.
//!
//! `cargo bench --bench cache_memory [-- N]` (N objects of each kind, 5000 by default). The
//! figures count the bytes asked of the allocator (the allocator's own overhead per block comes
//! on top: the live blocks are counted too). Report: docs/performance.md.

use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{Lookup, Store};
use kube::runtime::watcher;
use lifecycle_engine::rules::{Keep, Rules};
use lifecycle_engine::runtime::k8s::compact::{Compact, CompactResource};
use lifecycle_engine::runtime::k8s::projection::project;
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hash::Hash;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

/// Counts the bytes and blocks live.
struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> (isize, isize) {
    (BYTES.load(Ordering::SeqCst), BLOCKS.load(Ordering::SeqCst))
}

/// The `i`th copy of `object`: its own name, uid and resourceVersion (and the names that
/// follow from them), as the objects of a real cluster differ.
fn copy(object: &Value, i: usize) -> DynamicObject {
    let text = serde_json::to_string(object)
        .expect("json")
        .replace("000001", &format!("{i:06}"))
        .replace(
            "3f9c0d1e2a4b5c6d",
            &format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        )
        .replace("4e5f", &format!("{:04x}", i % 0x10000))
        .replace("7c6b", &format!("{:04x}", i % 0x10000))
        .replace("7a6f", &format!("{:04x}", i % 0x10000))
        .replace("\"1844", &format!("\"{}", 1844 + i));
    serde_json::from_str(&text).expect("object")
}

/// What `n` objects held in a store of `K` cost, per object: bytes and blocks, and the time to
/// read one back as the JSON value a decision reads.
struct Cost {
    bytes: f64,
    blocks: f64,
    read_us: f64,
}

fn measure<K>(
    n: usize,
    dyntype: K::DynamicType,
    make: impl Fn(usize) -> K,
    read: impl Fn(&K) -> Value,
) -> Cost
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    // made before counting: a watch event's object, dropped once stored
    let objects: Vec<K> = (0..n).map(&make).collect();
    let (b0, n0) = live();
    let mut writer = Writer::<K>::new(dyntype);
    let store: Store<K> = writer.as_reader();
    for o in &objects {
        writer.apply_watcher_event(&watcher::Event::Apply(o.clone()));
    }
    let (b1, n1) = live();
    drop(objects);
    let all = store.state();
    let t0 = Instant::now();
    let mut total = 0usize;
    for o in &all {
        total += std::hint::black_box(read(o))
            .as_object()
            .map_or(0, |m| m.len());
    }
    let read_us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    assert!(total > 0, "objects read back");
    Cost {
        bytes: (b1 - b0) as f64 / n as f64,
        blocks: (n1 - n0) as f64 / n as f64,
        read_us,
    }
}

fn json_len(o: &DynamicObject) -> usize {
    serde_json::to_string(o).map(|s| s.len()).unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = Rules::load(&root.join("lifecycle.yaml"), &[]).expect("default rules load");
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("benches/cached_objects.json")).expect("fixture"),
    )
    .expect("fixture json");
    println!(
        "{n} objects of each kind; bytes asked of the allocator per object (blocks), read: one object back as a JSON value"
    );
    println!(
        "{:<18} {:>10} {:>24} {:>24} {:>10} {:>10}",
        "kind", "JSON (B)", "before: DynamicObject", "now: compact", "read then", "read now"
    );
    let row = |kind: &str, json: usize, before: Cost, now: Cost| {
        println!(
            "{kind:<18} {json:>10} {:>15.0} B ({:>4.1}) {:>15.0} B ({:>4.1}) {:>7.2} µs {:>7.2} µs",
            before.bytes, before.blocks, now.bytes, now.blocks, before.read_us, now.read_us
        );
    };

    // the governed resource: whole, without managedFields
    let resource = |i: usize| {
        let mut o = copy(&fixture["resource"], i);
        o.metadata.managed_fields = None;
        o
    };
    let ar = ApiResource::erase::<DynamicObject>(&ApiResource::from_gvk(
        &kube::core::GroupVersionKind::gvk("kubernaut.ai", "v1alpha1", "WorkflowExecution"),
    ));
    let before = measure(n, ar.clone(), resource, |o| {
        serde_json::to_value(o).expect("json")
    });
    let now = measure(
        n,
        Arc::new(ar),
        |i| CompactResource::new(&resource(i)),
        CompactResource::value,
    );
    row("WorkflowExecution", json_len(&resource(0)), before, now);

    // the kinds the rules read: projected
    for (kind, at) in [("PipelineRun", "pipelineRun"), ("TaskRun", "taskRun")] {
        let keep: Keep = rules
            .watched_kinds()
            .into_iter()
            .find(|w| w.kind == kind)
            .map(|w| w.fields.with_runtime_fields())
            .expect("a kind the default rules watch");
        let object = |i: usize| {
            let mut o = copy(&fixture[at], i);
            project(&mut o, &keep);
            o
        };
        let ar = ApiResource::erase::<DynamicObject>(&ApiResource::from_gvk(
            &kube::core::GroupVersionKind::gvk("tekton.dev", "v1", kind),
        ));
        let before = measure(n, ar, object, |o| serde_json::to_value(o).expect("json"));
        let now = measure(n, (), |i| Compact::new(&object(i)), Compact::value);
        row(kind, json_len(&object(0)), before, now);
    }
}
