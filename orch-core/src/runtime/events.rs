//! Events for what controllers and the scheduler did (client-go's event
//! recorder): recording never blocks the caller; a background task creates
//! the Events through the API. Under a flood the oldest wish is kept and
//! later ones are dropped with a log line, as client-go drops them, so a
//! reconcile is never slowed by its own reporting.

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio::sync::mpsc;

use crate::api::ApiClient;
use crate::object::Object;

/// Events waiting to be written; beyond this they are dropped.
const BACKLOG: usize = 4096;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

#[derive(Clone)]
pub struct EventRecorder {
    sender: mpsc::Sender<Event>,
    component: &'static str,
}

/// Distinguishes events made in the same nanosecond.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);
/// Events dropped so far (logged at 1, 2, 4, 8, ... so a flood does not
/// flood the log too).
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Events being written at once.
const IN_FLIGHT: usize = 8;

impl EventRecorder {
    /// A recorder reporting as `component` (`default-scheduler`,
    /// `replicaset-controller`, ...), and the task that writes its events
    /// until every recorder is dropped.
    pub fn new(
        client: ApiClient,
        component: &'static str,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (sender, receiver) = mpsc::channel(BACKLOG);
        (Self { sender, component }, write_events(client, receiver))
    }

    /// Records that `reason` happened to `object` (`type_`: [`NORMAL`] or
    /// [`WARNING`]).
    pub fn record(&self, object: &Object, type_: &str, reason: &str, message: String) {
        let event = self.event(object, type_, reason, message);
        if self.sender.try_send(event).is_err() {
            let dropped = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    component = self.component,
                    object = %object.display_name(),
                    reason,
                    dropped,
                    "events dropped: too many waiting to be written"
                );
            }
        }
    }

    fn event(&self, object: &Object, type_: &str, reason: &str, message: String) -> Event {
        let meta = object.metadata();
        let name = meta.name.clone().unwrap_or_default();
        let namespace = meta
            .namespace
            .clone()
            .filter(|_| object.kind().namespaced())
            .unwrap_or_else(|| "default".into());
        let now = crate::time::now();
        let unique =
            (now.as_nanosecond() as u64).wrapping_add(SEQUENCE.fetch_add(1, Ordering::Relaxed));
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{unique:x}")),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(object.kind().api_version().into()),
                kind: Some(object.kind().name().into()),
                name: Some(name),
                namespace: meta
                    .namespace
                    .clone()
                    .filter(|_| object.kind().namespaced()),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                field_path: None,
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some(self.component.into()),
                host: None,
            }),
            reporting_component: Some(self.component.into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Event::default()
        }
    }
}

async fn write_events(client: ApiClient, mut receiver: mpsc::Receiver<Event>) {
    let mut writing = tokio::task::JoinSet::new();
    while let Some(event) = receiver.recv().await {
        while writing.len() >= IN_FLIGHT {
            writing.join_next().await;
        }
        let mut client = client.clone();
        writing.spawn(async move {
            let object = Object::from(event);
            if let Err(error) = client.create(&object, false).await {
                // A namespace being deleted refuses new events: nothing to
                // keep.
                tracing::debug!(event = %object.display_name(), %error, "event not written");
            }
        });
    }
    while writing.join_next().await.is_some() {}
}
