//! Events (events.k8s.io/v1) about the governed resources and the controller's Pod.
//!
//! Each Event is created with one POST and nothing is kept afterwards: no cache of recent Events
//! to fold repeats into a series (kube's `Recorder` keeps every Event of the last six minutes and
//! scans them all on each publish). The Events of the rules come from transitions, and the object
//! reference carries the resource's `resourceVersion`, so the same Event about the same version
//! of a resource is not recorded twice in practice anyway.
//!
//! The fields are those kube's recorder writes: `reason`, `note`, `type`, `action`, `regarding`,
//! `eventTime`, `reportingController` and `reportingInstance` (the controller's name when no
//! instance is set), in the namespace of the object (`default` for a cluster-scoped one), named
//! `<object name>.<event time in nanoseconds, hex>`. The time part is strictly increasing within
//! the process, so two Events about one object never get the same name.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use std::sync::atomic::{AtomicI64, Ordering};

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something worth a look happened.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One Event to record.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// `Normal` or `Warning`.
    pub type_: EventType,
    /// Why (CamelCase, short).
    pub reason: &'a str,
    /// What happened, for people.
    pub note: &'a str,
    /// What the controller did or failed to do.
    pub action: &'a str,
}

/// Posts Events as one controller instance.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    /// The last event time given out, in nanoseconds since the epoch.
    last_stamp: AtomicI64,
}

impl Recorder {
    /// A recorder reporting as `controller` (and `instance`, else the controller's name).
    pub fn new(client: Client, controller: String, instance: Option<String>) -> Self {
        let instance = instance.unwrap_or_else(|| controller.clone());
        Self {
            client,
            controller,
            instance,
            last_stamp: AtomicI64::new(0),
        }
    }

    /// A time strictly after every one this recorder gave out before (the clock, unless two
    /// Events come within the same nanosecond or the clock steps back).
    fn stamp(&self) -> Timestamp {
        let now = i64::try_from(Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX - 1);
        let prev = self
            .last_stamp
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or_else(|last| last);
        let nanos = now.max(prev + 1);
        Timestamp::from_nanosecond(i128::from(nanos)).unwrap_or_else(|_| Timestamp::now())
    }

    /// The Event object for `ev` about `regarding`.
    fn build(&self, ev: &Event<'_>, regarding: &ObjectReference) -> K8sEvent {
        let time = self.stamp();
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            time.as_nanosecond()
        );
        K8sEvent {
            action: Some(ev.action.to_string()),
            reason: Some(ev.reason.to_string()),
            note: Some(ev.note.to_string()),
            type_: Some(ev.type_.as_str().to_string()),
            event_time: Some(MicroTime(time)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            metadata: ObjectMeta {
                name: Some(name),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Creates the Event (one POST).
    pub async fn publish(
        &self,
        ev: &Event<'_>,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let event = self.build(ev, regarding);
        let api: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        api.create(&PostParams::default(), &event).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(instance: Option<&str>) -> Recorder {
        // a client that is never used: building an Event makes no request
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        Recorder::new(
            client,
            "the-controller".into(),
            instance.map(str::to_string),
        )
    }

    fn reference() -> ObjectReference {
        ObjectReference {
            api_version: Some("example.io/v1".into()),
            kind: Some("Thing".into()),
            name: Some("thing-1".into()),
            namespace: Some("ns".into()),
            uid: Some("u-1".into()),
            resource_version: Some("42".into()),
            field_path: None,
        }
    }

    #[tokio::test]
    async fn an_event_carries_every_field() {
        let r = recorder(Some("pod-a"));
        let ev = Event {
            type_: EventType::Warning,
            reason: "Broke",
            note: "it broke",
            action: "Fix",
        };
        let e = r.build(&ev, &reference());
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("Broke"));
        assert_eq!(e.note.as_deref(), Some("it broke"));
        assert_eq!(e.action.as_deref(), Some("Fix"));
        assert_eq!(e.regarding, Some(reference()));
        assert_eq!(e.reporting_controller.as_deref(), Some("the-controller"));
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-a"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("ns"));
        assert!(e.series.is_none());
        let time = e.event_time.unwrap().0.as_nanosecond();
        assert_eq!(
            e.metadata.name.as_deref(),
            Some(format!("thing-1.{time:x}").as_str())
        );
        let json = serde_json::to_value(r.build(&ev, &reference())).unwrap();
        assert_eq!(json["reportingController"], "the-controller");
        assert_eq!(json["regarding"]["resourceVersion"], "42");
    }

    #[tokio::test]
    async fn the_instance_defaults_to_the_controller_and_names_never_repeat() {
        let r = recorder(None);
        let ev = Event {
            type_: EventType::Normal,
            reason: "Done",
            note: "",
            action: "Done",
        };
        let mut names = std::collections::HashSet::new();
        let mut last = 0;
        for _ in 0..1000 {
            let e = r.build(&ev, &reference());
            assert_eq!(e.type_.as_deref(), Some("Normal"));
            assert_eq!(e.reporting_instance.as_deref(), Some("the-controller"));
            let time = e.event_time.unwrap().0.as_nanosecond();
            assert!(time > last, "{time} after {last}");
            last = time;
            assert!(names.insert(e.metadata.name.unwrap()));
        }
        let mut unnamed = reference();
        unnamed.name = None;
        let e = r.build(&ev, &unnamed);
        assert!(e.metadata.name.unwrap().starts_with("the-controller."));
    }
}
