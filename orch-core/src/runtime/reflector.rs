//! List+watch of one kind into a cache (client-go's reflector and
//! informer): list every object, then watch from the list's revision, and
//! relist when the watch's revision has been compacted away. Every change
//! goes into the cache first, then to the handler, so a handler that looks
//! in the cache sees at least what it was told.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::api::{ApiClient, ApiError, ListOptions, WatchEventType};
use crate::object::{Kind, Object};

/// Names one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    /// None for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn of(object: &Object) -> Self {
        let meta = object.metadata();
        Self {
            kind: object.kind(),
            namespace: meta
                .namespace
                .clone()
                .filter(|_| object.kind().namespaced()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {namespace}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// What a handler is told.
#[derive(Clone, Debug)]
pub enum Change {
    /// Created or changed (`old` is the cached state before, if any).
    Applied {
        old: Option<Arc<Object>>,
        new: Arc<Object>,
    },
    /// Gone from the store (its last known state).
    Deleted(Arc<Object>),
}

/// Objects of one kind in one namespace (None: cluster-scoped), by name.
type Bucket = HashMap<String, Arc<Object>>;

/// The objects of one or more kinds, as last seen by their reflectors,
/// indexed by kind and namespace so a controller looking at one
/// namespace's pods does not walk the whole cluster.
#[derive(Default)]
pub struct Cache {
    objects: RwLock<HashMap<(Kind, Option<String>), Bucket>>,
}

impl Cache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(Kind, Option<String>), Bucket>> {
        self.objects
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<(Kind, Option<String>), Bucket>> {
        self.objects
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &ObjectRef) -> Option<Arc<Object>> {
        self.read()
            .get(&(key.kind, key.namespace.clone()))
            .and_then(|bucket| bucket.get(&key.name))
            .cloned()
    }

    /// Every cached object that `keep` selects.
    pub fn select(&self, keep: impl Fn(&Object) -> bool) -> Vec<Arc<Object>> {
        self.read()
            .values()
            .flat_map(|bucket| bucket.values())
            .filter(|object| keep(object))
            .cloned()
            .collect()
    }

    /// The cached objects of `kind`, in every namespace, that `keep`
    /// selects.
    pub fn select_kind(&self, kind: Kind, keep: impl Fn(&Object) -> bool) -> Vec<Arc<Object>> {
        self.read()
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .flat_map(|(_, bucket)| bucket.values())
            .filter(|object| keep(object))
            .cloned()
            .collect()
    }

    /// The cached objects of `kind` in `namespace` (None for cluster-scoped
    /// kinds) that `keep` selects.
    pub fn select_in(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        keep: impl Fn(&Object) -> bool,
    ) -> Vec<Arc<Object>> {
        self.read()
            .get(&(kind, namespace.map(str::to_owned)))
            .map(|bucket| bucket.values().filter(|o| keep(o)).cloned().collect())
            .unwrap_or_default()
    }

    fn put(&self, object: Arc<Object>) -> Option<Arc<Object>> {
        let key = ObjectRef::of(&object);
        self.write()
            .entry((key.kind, key.namespace))
            .or_default()
            .insert(key.name, object)
    }

    fn remove(&self, key: &ObjectRef) -> Option<Arc<Object>> {
        let mut objects = self.write();
        let bucket_key = (key.kind, key.namespace.clone());
        let bucket = objects.get_mut(&bucket_key)?;
        let removed = bucket.remove(&key.name);
        if bucket.is_empty() {
            objects.remove(&bucket_key);
        }
        removed
    }

    fn keys_of(&self, kind: Kind) -> Vec<ObjectRef> {
        self.read()
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .flat_map(|((kind, namespace), bucket)| {
                bucket.keys().map(|name| ObjectRef {
                    kind: *kind,
                    namespace: namespace.clone(),
                    name: name.clone(),
                })
            })
            .collect()
    }
}

/// Called for every change, in the order the store made them.
pub type Handler = Arc<dyn Fn(Change) + Send + Sync>;

/// Lists and watches `kind` in every namespace into `cache`, forever.
/// `synced` is set to true after the first complete list.
pub async fn reflect(
    client: ApiClient,
    kind: Kind,
    cache: Arc<Cache>,
    handler: Handler,
    synced: tokio::sync::watch::Sender<bool>,
) {
    reflect_selected(client, kind, Selection::default(), cache, handler, synced).await
}

/// Which objects of a kind a reflector holds: label and field selectors
/// as the API takes them (an object that stops matching is deleted from
/// the cache, as the API's watch reports it).
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub label_selector: String,
    pub field_selector: String,
}

/// Like [`reflect`], for the objects `selection` picks (a node agent's
/// pods: `spec.nodeName=<node>`).
pub async fn reflect_selected(
    mut client: ApiClient,
    kind: Kind,
    selection: Selection,
    cache: Arc<Cache>,
    handler: Handler,
    synced: tokio::sync::watch::Sender<bool>,
) {
    let mut failures = 0u32;
    loop {
        let revision = match relist(&mut client, kind, &selection, &cache, &handler).await {
            Ok(revision) => revision,
            Err(error) => {
                failures += 1;
                tracing::warn!(%kind, %error, "listing failed; retrying");
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        synced.send_replace(true);
        failures = 0;
        match watch(&mut client, kind, &selection, &cache, &handler, revision).await {
            WatchEnd::Relist => tracing::info!(%kind, "watch revision compacted; relisting"),
            WatchEnd::Failed(error) => {
                failures += 1;
                tracing::warn!(%kind, %error, "watch failed; relisting");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(5))
}

/// Lists every page; the cache becomes the listed objects (handlers hear
/// of what changed meanwhile). Returns the first page's revision: the
/// watch replays from there, so nothing between pages is missed.
async fn relist(
    client: &mut ApiClient,
    kind: Kind,
    selection: &Selection,
    cache: &Cache,
    handler: &Handler,
) -> Result<String, ApiError> {
    let mut options = ListOptions {
        limit: 500,
        label_selector: selection.label_selector.clone(),
        field_selector: selection.field_selector.clone(),
        ..ListOptions::default()
    };
    let mut revision = None;
    let mut listed = Vec::new();
    loop {
        let page = client.list(kind, None, &options).await?;
        revision.get_or_insert(page.resource_version);
        listed.extend(page.items.into_iter().map(Arc::new));
        if page.continue_token.is_empty() {
            break;
        }
        options.continue_token = page.continue_token;
    }
    let mut gone: std::collections::HashSet<ObjectRef> = cache.keys_of(kind).into_iter().collect();
    for object in listed {
        gone.remove(&ObjectRef::of(&object));
        apply(cache, handler, object);
    }
    for key in gone {
        if let Some(old) = cache.remove(&key) {
            handler(Change::Deleted(old));
        }
    }
    Ok(revision.unwrap_or_default())
}

fn apply(cache: &Cache, handler: &Handler, new: Arc<Object>) {
    let old = cache.put(new.clone());
    let unchanged = old.as_ref().is_some_and(|old| {
        old.metadata().resource_version.is_some()
            && old.metadata().resource_version == new.metadata().resource_version
    });
    if !unchanged {
        handler(Change::Applied { old, new });
    }
}

enum WatchEnd {
    Relist,
    Failed(ApiError),
}

async fn watch(
    client: &mut ApiClient,
    kind: Kind,
    selection: &Selection,
    cache: &Cache,
    handler: &Handler,
    mut revision: String,
) -> WatchEnd {
    let options = ListOptions {
        label_selector: selection.label_selector.clone(),
        field_selector: selection.field_selector.clone(),
        ..ListOptions::default()
    };
    loop {
        let mut stream = match client.watch(kind, None, &options, &revision, true).await {
            Ok(stream) => stream,
            Err(ApiError::Gone(_)) => return WatchEnd::Relist,
            Err(error) => return WatchEnd::Failed(error),
        };
        loop {
            match stream.next().await {
                Ok(Some(event)) => {
                    revision = event.resource_version.clone();
                    match (event.event_type, event.object) {
                        (WatchEventType::Deleted, Some(object)) => {
                            let key = ObjectRef::of(&object);
                            cache.remove(&key);
                            handler(Change::Deleted(Arc::new(object)));
                        }
                        (WatchEventType::Added | WatchEventType::Modified, Some(object)) => {
                            apply(cache, handler, Arc::new(object));
                        }
                        _ => {}
                    }
                }
                // The server ended the watch (a replica stopping): resume.
                Ok(None) => break,
                Err(ApiError::Gone(_)) => return WatchEnd::Relist,
                Err(error) => return WatchEnd::Failed(error),
            }
        }
    }
}
