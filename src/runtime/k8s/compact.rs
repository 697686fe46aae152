//! Cached objects, compactly. A watch cache keeps each object as the key its store finds it by
//! (name and namespace) and the rest of what it keeps of it (`projection.rs`) as one compact
//! JSON text, decoded only when a reconcile reads the object. A tree of `serde_json::Value`s
//! (with `preserve_order`, each map an index map with its hash table) takes several times its
//! JSON's size in heap; the text takes its size.
//!
//! [`Compact`] is the objects of the kinds the rules read (the caches of `caches.rs`); its store
//! holds one kind, so its key carries no type. [`CompactResource`] is the governed resource in
//! the controller's own cache, which kube-runtime's controller reads: it implements
//! [`Resource`], with the kind shared by every key ([`SharedKind`]).

use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use kube::core::{DynamicResourceScope, Resource};
use kube::runtime::reflector::Lookup;
use kube::runtime::watcher;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;

/// An object of a kind the rules read, as its cache keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compact {
    name: Box<str>,
    namespace: Option<Box<str>>,
    /// The object as kept, `metadata` and all, as compact JSON.
    json: Box<str>,
}

impl Compact {
    /// The object as it is (already trimmed to what the cache keeps).
    pub fn new(o: &DynamicObject) -> Compact {
        Compact {
            name: o.metadata.name.as_deref().unwrap_or_default().into(),
            namespace: o.metadata.namespace.as_deref().map(Into::into),
            json: encode(o),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace (none: cluster-scoped).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The object as JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The object as a JSON value: the same value, fields in the same order, as the
    /// [`DynamicObject`] it was made from serializes to.
    pub fn value(&self) -> Value {
        decode(&self.json)
    }

    /// Its uid and resourceVersion.
    pub fn version(&self) -> Version {
        version(&self.json)
    }
}

/// A cache of one kind: the key needs no type.
impl Lookup for Compact {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    // not kept in the key: the caches read them from the object when they need them
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// The governed kind, shared by every key of the controller's cache (one allocation, not five
/// strings per object).
pub type SharedKind = Arc<ApiResource>;

/// A governed resource in the controller's cache: its name and namespace (the only metadata
/// kube-runtime reads) and the whole resource, `managedFields` dropped, as compact JSON.
#[derive(Clone, Debug)]
pub struct CompactResource {
    metadata: ObjectMeta,
    json: Box<str>,
}

impl CompactResource {
    /// The resource as it is (`managedFields` already dropped).
    pub fn new(o: &DynamicObject) -> CompactResource {
        CompactResource {
            metadata: ObjectMeta {
                name: o.metadata.name.clone(),
                namespace: o.metadata.namespace.clone(),
                ..ObjectMeta::default()
            },
            json: encode(o),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// Its namespace (none: cluster-scoped).
    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }

    /// The resource as JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The resource as a JSON value (as [`Compact::value`]).
    pub fn value(&self) -> Value {
        decode(&self.json)
    }

    /// The resource as a [`DynamicObject`].
    pub fn object(&self) -> DynamicObject {
        // made from a DynamicObject, it reads back as one
        serde_json::from_str(&self.json).unwrap_or_else(|_| DynamicObject {
            types: None,
            metadata: self.metadata.clone(),
            data: Value::Null,
        })
    }

    /// Its uid and resourceVersion.
    pub fn version(&self) -> Version {
        version(&self.json)
    }
}

impl Resource for CompactResource {
    type DynamicType = SharedKind;
    type Scope = DynamicResourceScope;

    fn kind(dt: &SharedKind) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &SharedKind) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &SharedKind) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &SharedKind) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &SharedKind) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// kube-runtime's controller asks for it; the cache makes its objects with
/// [`CompactResource::new`].
impl<'de> Deserialize<'de> for CompactResource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut o = DynamicObject::deserialize(d)?;
        o.metadata.managed_fields = None;
        Ok(CompactResource::new(&o))
    }
}

/// An object's uid and resourceVersion, read from its JSON.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct Version {
    /// Its uid.
    pub uid: Option<String>,
    /// Its resourceVersion.
    #[serde(rename = "resourceVersion")]
    pub resource_version: Option<String>,
}

fn version(json: &str) -> Version {
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        metadata: Version,
    }
    serde_json::from_str::<Only>(json)
        .map(|o| o.metadata)
        .unwrap_or_default()
}

fn encode(o: &DynamicObject) -> Box<str> {
    serde_json::to_string(o).unwrap_or_default().into()
}

fn decode(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

/// A watch event of `A`s as one of `B`s.
pub fn convert<A, B>(event: &watcher::Event<A>, f: impl Fn(&A) -> B) -> watcher::Event<B> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(f(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(f(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(f(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object() -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": "a", "namespace": "n", "uid": "u1", "resourceVersion": "7",
                "labels": {"z": "1", "a": "2"}, "generation": 3},
            "status": {"conditions": [{"type": "Succeeded", "status": "Unknown"}],
                "zeta": 1.5, "alpha": [1, "x", null, true]}
        }))
        .expect("object")
    }

    #[test]
    fn a_compact_object_reads_back_as_the_object_it_was_made_from() {
        let o = object();
        let c = Compact::new(&o);
        let whole = serde_json::to_value(&o).expect("json");
        let back = c.value();
        assert_eq!(back, whole);
        // the same order of fields, too (templates iterate maps in it)
        assert_eq!(
            serde_json::to_string(&back).expect("json"),
            serde_json::to_string(&whole).expect("json")
        );
        assert_eq!((c.name(), c.namespace()), ("a", Some("n")));
        assert_eq!(
            c.version(),
            Version {
                uid: Some("u1".into()),
                resource_version: Some("7".into())
            }
        );
        // the store's key carries only where the object is
        let key = c.to_object_ref(());
        assert_eq!(
            (key.name.as_str(), key.namespace.as_deref()),
            ("a", Some("n"))
        );
        assert_eq!(key.extra.uid, None);
    }

    #[test]
    fn a_compact_resource_keeps_its_name_and_reads_back_whole() {
        let mut o = object();
        o.metadata.namespace = None;
        let r = CompactResource::new(&o);
        assert_eq!(r.value(), serde_json::to_value(&o).expect("json"));
        assert_eq!(r.object(), o);
        assert_eq!((r.name(), r.namespace()), ("a", None));
        assert_eq!(
            r.meta().uid,
            None,
            "kube-runtime reads only name and namespace"
        );
        assert_eq!(r.version().uid.as_deref(), Some("u1"));
        let kind: SharedKind =
            Arc::new(ApiResource::erase::<DynamicObject>(&ApiResource::from_gvk(
                &kube::core::GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"),
            )));
        let key = r.to_object_ref(kind.clone());
        assert_eq!(key.name, "a");
        assert_eq!(<CompactResource as Resource>::plural(&kind), "pipelineruns");
        // deserialized, as kube-runtime would: managedFields never kept
        let mut with_fields = serde_json::to_value(&o).expect("json");
        with_fields["metadata"]["managedFields"] = json!([{"manager": "m"}]);
        let r: CompactResource = serde_json::from_value(with_fields).expect("resource");
        assert_eq!(r.value(), serde_json::to_value(&o).expect("json"));
    }

    #[test]
    fn an_object_without_metadata_has_no_version() {
        assert_eq!(version("{}"), Version::default());
        assert_eq!(version("not json"), Version::default());
    }
}
