//! Objects in the store: keys `/registry/<plural>/<namespace>/<name>`,
//! values the object's JSON without `metadata.resourceVersion` (which is
//! the key's mod revision, set on every read). Every write is one store
//! transaction guarded by the mod revisions it read, so concurrent writers
//! never overwrite each other unseen.

use orch_core::api::{ApiError, kind_prefix, object_key};
use orch_core::object::{Kind, Object};
use serde_json::Value;

use super::access::StoreAccess;
use super::admission::{self, resource_name};
use super::filter::Filter;
use crate::store::types::{
    Command, Compare, CompareOp, KeyValue, LeaseId, Op, Outcome, Request, RequestId, Revision, Txn,
};

/// Retries of a write whose guard failed because someone else wrote in
/// between (only when the caller gave no resourceVersion precondition).
const RETRIES: usize = 8;

pub struct Registry {
    pub store: StoreAccess,
    /// Where Services' ClusterIPs and NodePorts come from.
    pub services: ServiceRanges,
    /// tolerationSeconds of the not-ready and unreachable NoExecute
    /// tolerations every new pod gets (DefaultTolerationSeconds).
    pub default_toleration_seconds: (i64, i64),
    /// How long Events live (kube-apiserver's --event-ttl).
    pub event_ttl: std::time::Duration,
    /// The store lease new Events are attached to, and when it was granted.
    event_lease: tokio::sync::Mutex<Option<(LeaseId, std::time::Instant)>>,
}

/// What a delete asks beyond the object's name.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub resource_version: Option<Revision>,
    /// Delete only the object with this uid.
    pub uid: Option<String>,
    /// None: the object's own default (a pod's terminationGracePeriodSeconds).
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: String,
    pub dry_run: bool,
}

/// What a write changed, for the caller's reply.
pub struct Written {
    pub object: Object,
    pub warnings: Vec<String>,
}

fn internal(what: &str) -> impl Fn(serde_json::Error) -> ApiError + '_ {
    move |e| ApiError::Internal(format!("{what}: {e}"))
}

/// The object as stored: JSON without resourceVersion (the key's mod
/// revision is the truth), encoded straight from the typed object.
fn stored_bytes(object: &mut Object) -> Result<Vec<u8>, ApiError> {
    let resource_version = object.metadata_mut().resource_version.take();
    let encoded = serde_json::to_vec(&*object).map_err(internal("encoding"));
    object.metadata_mut().resource_version = resource_version;
    encoded
}

fn stored_value(kv: &KeyValue) -> Result<Value, ApiError> {
    serde_json::from_slice(&kv.value).map_err(internal("decoding a stored object"))
}

/// An object from JSON, with `resource_version` set.
fn object_from(kind: Kind, value: Value, resource_version: Revision) -> Result<Object, ApiError> {
    let mut object = kind
        .deserialize(value)
        .map_err(|e| ApiError::Invalid(format!("object: {e}")))?;
    object.metadata_mut().resource_version = Some(resource_version.to_string());
    Ok(object)
}

/// The stored object of `kv`, decoded straight into its type, with its
/// resourceVersion.
pub fn object_from_kv(kind: Kind, kv: &KeyValue) -> Result<Object, ApiError> {
    let mut object = kind
        .deserialize(&mut serde_json::Deserializer::from_slice(&kv.value))
        .map_err(internal("decoding a stored object"))?;
    object.metadata_mut().resource_version = Some(kv.mod_revision.to_string());
    Ok(object)
}

/// The object of `kv` as the API serves it (its JSON with
/// metadata.resourceVersion set to `resource_version`) without decoding
/// it: only the top level and the metadata are parsed, the rest is copied
/// as stored. Watches use it, where every change of a busy prefix goes to
/// every watcher.
pub fn served_json(kv: &KeyValue, resource_version: Revision) -> Result<Vec<u8>, ApiError> {
    use serde_json::value::{RawValue, to_raw_value};
    use std::collections::BTreeMap;
    let decoding = internal("decoding a stored object");
    let mut top: BTreeMap<String, &RawValue> =
        serde_json::from_slice(&kv.value).map_err(&decoding)?;
    let mut metadata: BTreeMap<String, &RawValue> = match top.get("metadata") {
        Some(raw) => serde_json::from_str(raw.get()).map_err(&decoding)?,
        None => BTreeMap::new(),
    };
    let revision = to_raw_value(&resource_version.to_string()).map_err(internal("encoding"))?;
    metadata.insert("resourceVersion".into(), &revision);
    let metadata = to_raw_value(&metadata).map_err(internal("encoding"))?;
    top.insert("metadata".into(), &metadata);
    serde_json::to_vec(&top).map_err(internal("encoding"))
}

fn request(txn: Txn) -> Request {
    Request {
        id: RequestId::unique(),
        command: Command::Txn(txn),
    }
}

fn guard(key: &str, mod_revision: Revision) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        op: CompareOp::Equal,
        mod_revision,
    }
}

fn name_of(object: &Object) -> Result<String, ApiError> {
    match object.metadata().name.as_deref() {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(ApiError::Invalid(
            "metadata.name: Required value: name or generateName is required".into(),
        )),
    }
}

fn key_of(object: &Object) -> Result<String, ApiError> {
    Ok(object_key(
        object.kind(),
        object.metadata().namespace.as_deref(),
        &name_of(object)?,
    ))
}

fn not_found(kind: Kind, name: &str) -> ApiError {
    ApiError::NotFound(format!("{} \"{name}\" not found", resource_name(kind)))
}

fn conflict(kind: Kind, name: &str, current: Revision, yours: Revision) -> ApiError {
    ApiError::Conflict(format!(
        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again (current resourceVersion {current}, yours {yours})",
        resource_name(kind)
    ))
}

fn uid_conflict(kind: Kind, name: &str, current: &str, yours: &str) -> ApiError {
    ApiError::Conflict(format!(
        "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {yours}, UID in object meta: {current}",
        resource_name(kind)
    ))
}

/// Did the transaction's guards hold? A refusal is the client's fault.
fn succeeded(outcome: &Outcome) -> Result<bool, ApiError> {
    match outcome {
        Outcome::Txn { succeeded, .. } => Ok(*succeeded),
        Outcome::Rejected { reason } => Err(ApiError::Invalid(reason.clone())),
        other => Err(ApiError::Internal(format!(
            "unexpected store outcome {other:?}"
        ))),
    }
}

fn parse_revision(text: &str) -> Result<Option<Revision>, ApiError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::Invalid(format!(
            "metadata.resourceVersion: Invalid value: {text:?}: not a resource version"
        ))
    })
}

impl Registry {
    pub fn new(store: StoreAccess) -> Self {
        Self {
            store,
            services: ServiceRanges::default(),
            default_toleration_seconds: (300, 300),
            event_ttl: std::time::Duration::from_secs(3600),
            event_lease: tokio::sync::Mutex::new(None),
        }
    }

    pub fn with_event_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.event_ttl = ttl.max(std::time::Duration::from_secs(1));
        self
    }

    /// The lease a new Event is attached to: Events expire with it, as
    /// kube-apiserver attaches etcd leases to them. One lease serves the
    /// Events of a tenth of the TTL (at most a minute), so few leases
    /// exist; an Event lives between 0.9 and 1 TTL.
    async fn event_lease(&self) -> Result<LeaseId, ApiError> {
        let mut current = self.event_lease.lock().await;
        let reuse = (self.event_ttl / 10).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        );
        if let Some((id, granted)) = *current
            && granted.elapsed() < reuse
        {
            return Ok(id);
        }
        // Positive and as unlikely to repeat as a request id.
        let id = ((RequestId::unique().0 as u64) >> 1) as LeaseId;
        let ttl_seconds = self.event_ttl.as_secs().max(1) as i64;
        let grant = Request {
            id: RequestId::unique(),
            command: Command::LeaseGrant { id, ttl_seconds },
        };
        match self.store.write(&grant).await?.outcome {
            Outcome::LeaseGranted => {}
            other => {
                return Err(ApiError::Internal(format!(
                    "granting the events' lease: {other:?}"
                )));
            }
        }
        *current = Some((id, std::time::Instant::now()));
        Ok(id)
    }

    /// A write refused because its lease expired meanwhile: a new one is
    /// granted on the next try.
    async fn drop_event_lease(&self) {
        *self.event_lease.lock().await = None;
    }

    pub fn with_default_toleration_seconds(mut self, not_ready: i64, unreachable: i64) -> Self {
        self.default_toleration_seconds = (not_ready, unreachable);
        self
    }

    pub fn with_service_ranges(mut self, services: ServiceRanges) -> Self {
        self.services = services;
        self
    }

    /// Whether `key` exists now.
    async fn exists(&self, key: String) -> Result<bool, ApiError> {
        Ok(self.store.get(&key).await?.0.is_some())
    }

    /// The Service's addresses, allocated against what is taken now
    /// (`previous`: its stored state, on an update).
    async fn allocate(
        &self,
        object: &mut Object,
        previous: Option<&Value>,
    ) -> Result<Allocation, ApiError> {
        if object.kind() != Kind::Service {
            return Ok(Allocation::default());
        }
        service_alloc::allocate(&self.services, object, previous, |key| self.exists(key)).await
    }

    /// After a failed write: an address the user asked for that is taken
    /// is their error; auto-picked ones were raced and are picked again.
    async fn refuse_taken(&self, allocation: &Allocation) -> Result<(), ApiError> {
        for key in &allocation.requested {
            if self.exists(key.clone()).await? {
                let what = key.rsplit('/').next().unwrap_or_default();
                return Err(ApiError::Invalid(format!(
                    "spec: Invalid value: {what}: provided {} is already allocated",
                    if key.contains("nodeports") {
                        "port"
                    } else {
                        "IP"
                    }
                )));
            }
        }
        Ok(())
    }

    async fn current(&self, kind: Kind, key: &str, name: &str) -> Result<KeyValue, ApiError> {
        self.store
            .get(key)
            .await?
            .0
            .ok_or_else(|| not_found(kind, name))
    }

    /// The stored object a guarded write starts from. The first attempt
    /// (`fresh` false) reads this replica's copy without a read-index
    /// round: a stale copy only fails the write's guard, and the retry
    /// reads linearizably. What is missing locally is looked for
    /// linearizably at once (it may have just been created elsewhere).
    async fn current_for_write(
        &self,
        kind: Kind,
        key: &str,
        name: &str,
        fresh: bool,
    ) -> Result<KeyValue, ApiError> {
        if !fresh && let Some(kv) = self.store.get_local(key).await? {
            return Ok(kv);
        }
        self.current(kind, key, name).await
    }

    /// The namespace `object` goes in must exist and not be terminating;
    /// returns its key and mod revision, to guard the write with.
    /// `fresh` false reads this replica's copy first (the guard catches a
    /// stale one); anything that would refuse the create is confirmed by
    /// a linearizable read.
    async fn open_namespace(
        &self,
        object: &Object,
        fresh: bool,
    ) -> Result<Option<Compare>, ApiError> {
        let Some(namespace) = object
            .metadata()
            .namespace
            .as_deref()
            .filter(|_| object.kind().namespaced())
        else {
            return Ok(None);
        };
        let key = object_key(Kind::Namespace, None, namespace);
        let terminating = |value: &Value| {
            !value["metadata"]["deletionTimestamp"].is_null()
                || value["status"]["phase"] == "Terminating"
        };
        if !fresh
            && let Some(kv) = self.store.get_local(&key).await?
            && !terminating(&stored_value(&kv)?)
        {
            return Ok(Some(guard(&key, kv.mod_revision)));
        }
        let (found, _) = self.store.get(&key).await?;
        let kv = found
            .ok_or_else(|| ApiError::NotFound(format!("namespaces \"{namespace}\" not found")))?;
        let value = stored_value(&kv)?;
        if terminating(&value) {
            return Err(ApiError::Forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            )));
        }
        Ok(Some(guard(&key, kv.mod_revision)))
    }

    pub async fn create(
        &self,
        kind: Kind,
        namespace: &str,
        bytes: &[u8],
        dry_run: bool,
    ) -> Result<Written, ApiError> {
        let (mut object, warnings) = admission::decode(kind, bytes)?;
        admission::settle_namespace(&mut object, namespace)?;
        admission::set_create_fields(&mut object)?;
        let (not_ready, unreachable) = self.default_toleration_seconds;
        admission::default_tolerations(&mut object, not_ready, unreachable);
        admission::default_and_validate(&mut object)?;
        let key = key_of(&object)?;
        let name = name_of(&object)?;
        let admitted = object;
        // Services racing for the last free addresses of a range may lose
        // a few rounds in a row.
        let attempts = if kind == Kind::Service {
            4 * RETRIES
        } else {
            RETRIES
        };
        for attempt in 0..attempts {
            let mut object = admitted.clone();
            let namespace_guard = self.open_namespace(&object, attempt > 0).await?;
            let allocation = self.allocate(&mut object, None).await?;
            if dry_run {
                return Ok(Written { object, warnings });
            }
            let mut compares = vec![guard(&key, 0)];
            compares.extend(namespace_guard);
            compares.extend(allocation.compares.iter().cloned());
            let lease = if kind == Kind::Event {
                Some(self.event_lease().await?)
            } else {
                None
            };
            let mut success = vec![Op::Put {
                key: key.clone().into_bytes(),
                value: stored_bytes(&mut object)?,
                lease,
            }];
            success.extend(allocation.ops.iter().cloned());
            let txn = Txn {
                compares,
                success,
                failure: Vec::new(),
            };
            let response = self.store.write(&request(txn)).await?;
            if let Outcome::Rejected { reason } = &response.outcome
                && lease.is_some()
                && reason.starts_with("lease ")
            {
                self.drop_event_lease().await;
                continue;
            }
            if succeeded(&response.outcome)? {
                object.metadata_mut().resource_version = Some(response.revision.to_string());
                return Ok(Written { object, warnings });
            }
            if self.store.get(&key).await?.0.is_some() {
                return Err(ApiError::AlreadyExists(format!(
                    "{} \"{name}\" already exists",
                    resource_name(kind)
                )));
            }
            self.refuse_taken(&allocation).await?;
            // The namespace changed in between, or an address picked was
            // taken meanwhile: check and pick again.
        }
        Err(ApiError::Unavailable(format!(
            "creating {} \"{name}\": too many concurrent changes to its namespace",
            resource_name(kind)
        )))
    }

    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Object, ApiError> {
        let key = object_key(kind, Some(namespace).filter(|n| !n.is_empty()), name);
        object_from_kv(kind, &self.current(kind, &key, name).await?)
    }

    /// One page of objects; returns them with the revision read at and the
    /// continue token (empty when this is the last page).
    pub async fn list(
        &self,
        kind: Kind,
        namespace: &str,
        filter: &Filter,
        limit: usize,
        continue_token: &str,
    ) -> Result<(Vec<Object>, Revision, String), ApiError> {
        let prefix = kind_prefix(kind, Some(namespace).filter(|n| !n.is_empty()));
        let mut start = decode_continue(continue_token, &prefix)?;
        let mut items = Vec::new();
        let mut revision = None;
        loop {
            // Fetch more than asked: the filter may drop some.
            let page_size = if limit == 0 { 0 } else { limit.max(100) };
            let page = self
                .store
                .range(prefix.as_bytes(), start.clone(), page_size)
                .await?;
            let read_at = *revision.get_or_insert(page.revision);
            for kv in &page.kvs {
                let value = stored_value(kv)?;
                if !filter.matches(&value) {
                    continue;
                }
                items.push(object_from(kind, value, kv.mod_revision)?);
                if limit > 0 && items.len() == limit {
                    let last_of_page = page.kvs.last().map(|l| &l.key) == Some(&kv.key);
                    let token = if page.more || !last_of_page {
                        // The smallest key after this one.
                        let mut next = kv.key.clone();
                        next.push(0);
                        encode_continue(&next)
                    } else {
                        String::new()
                    };
                    return Ok((items, read_at, token));
                }
            }
            match page.next_key {
                Some(next) if page.more => start = Some(next),
                _ => return Ok((items, read_at, String::new())),
            }
        }
    }
}

/// Continue tokens: the next key to read, hex-encoded.
fn encode_continue(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str, prefix: &str) -> Result<Option<Vec<u8>>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ApiError::Invalid(format!("continue: invalid token {token:?}"));
    if !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let key = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    if !key.starts_with(prefix.as_bytes()) {
        return Err(invalid());
    }
    Ok(Some(key))
}

pub(super) use write::UpdateKind;

mod binding;
pub mod service_alloc;
mod write;

use service_alloc::{Allocation, ServiceRanges};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_json_is_the_decoded_object_with_its_revision() {
        let pod = orch_core::manifest::parse_str(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default, labels: {app: \"a\\\"b\"}}\nspec:\n  containers: [{name: c, image: busybox}]\n",
            "test",
        )
        .expect("a pod")
        .remove(0)
        .object;
        let kv = KeyValue {
            key: b"/registry/pods/default/p".to_vec(),
            value: stored_bytes(&mut pod.clone()).expect("encodes"),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            lease: None,
        };
        let served = served_json(&kv, 7).expect("serves");
        let decoded = Kind::Pod
            .deserialize(&mut serde_json::Deserializer::from_slice(&served))
            .expect("decodes");
        assert_eq!(decoded, object_from_kv(Kind::Pod, &kv).expect("decodes"));
        assert_eq!(decoded.metadata().resource_version.as_deref(), Some("7"));
        // A deleted object is served at the deleting revision.
        let served = served_json(&kv, 9).expect("serves");
        let value: Value = serde_json::from_slice(&served).expect("json");
        assert_eq!(value["metadata"]["resourceVersion"], "9");
    }
}
