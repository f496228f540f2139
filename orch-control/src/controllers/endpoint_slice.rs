//! The EndpointSlice controller: for every Service with a selector, the
//! addresses of the pods it selects, in EndpointSlices labelled
//! `kubernetes.io/service-name` and owned by the Service. Ready pods are
//! `ready`; terminating ones stay listed with `terminating: true` (and
//! `serving` while their Ready condition holds) so the dataplane can drain
//! them. A named targetPort is resolved per pod, so pods exposing it on
//! different numbers land in different slices; at most 100 endpoints per
//! slice. The dataplane (issue 7's agents) programs service load balancing
//! from these.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use orch_core::runtime::{Cache, Change, Next, ObjectRef, WorkQueue};

use super::garbage_collector::{delete, update};
use super::ownership::controller_reference;
use super::pod_state;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Kubernetes' default --max-endpoints-per-slice.
pub const MAX_ENDPOINTS: usize = 100;
/// How long a created slice may stay unseen before it is given up on.
const CREATED_UNSEEN_FOR: Duration = Duration::from_secs(10);

/// A port as a pod serves it: (Service port name, number, protocol).
type ResolvedPort = (Option<String>, i32, String);

pub struct EndpointSliceController {
    cache: Arc<Cache>,
    pub queue: Arc<WorkQueue<ObjectRef>>,
    /// Per Service, the slices created here not yet seen in the cache, and
    /// when (a slice deleted before it was ever seen is given up on).
    created: Mutex<HashMap<ObjectRef, HashMap<String, Instant>>>,
}

fn service(object: &Object) -> Option<&Service> {
    match object {
        Object::Service(s) => Some(s),
        _ => None,
    }
}

fn selector_of(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

fn selects(svc: &Service, pod: &Object) -> bool {
    let labels = pod.metadata().labels.clone().unwrap_or_default();
    selector_of(svc).is_some_and(|selector| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The port a Service port reaches on `pod`: its targetPort, a name
/// resolved among the pod's container ports; None when the pod has no
/// port of that name.
fn target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

fn endpoint_of(pod: &Pod) -> Option<Endpoint> {
    let status = pod.status.as_ref()?;
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    let object = Object::Pod(Box::new(pod.clone()));
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let serving = pod_state::is_ready(&object);
    Some(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(serving && !terminating),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    })
}

impl EndpointSliceController {
    pub fn new(cache: Arc<Cache>) -> Arc<Self> {
        Arc::new(Self {
            cache,
            queue: WorkQueue::new(),
            created: Mutex::new(HashMap::new()),
        })
    }

    fn created(&self) -> MutexGuard<'_, HashMap<ObjectRef, HashMap<String, Instant>>> {
        self.created
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn services_selecting(&self, pod: &Object) -> Vec<ObjectRef> {
        self.cache
            .select_in(Kind::Service, pod.metadata().namespace.as_deref(), |svc| {
                service(svc).is_some_and(|svc| selects(svc, pod))
            })
            .iter()
            .map(|svc| ObjectRef::of(svc))
            .collect()
    }

    pub fn on_change(&self, change: &Change) {
        match change {
            Change::Applied { new, .. } | Change::Deleted(new) if new.kind() == Kind::Service => {
                if matches!(change, Change::Deleted(_)) {
                    self.created().remove(&ObjectRef::of(new));
                }
                self.queue.add(ObjectRef::of(new));
            }
            Change::Applied { old, new } if new.kind() == Kind::Pod => {
                let mut services = self.services_selecting(new);
                if let Some(old) = old {
                    services.extend(self.services_selecting(old));
                }
                for svc in services {
                    self.queue.add(svc);
                }
            }
            Change::Deleted(pod) if pod.kind() == Kind::Pod => {
                for svc in self.services_selecting(pod) {
                    self.queue.add(svc);
                }
            }
            // A slice changed or removed by someone else is put right.
            Change::Applied { new: slice, .. } | Change::Deleted(slice)
                if slice.kind() == Kind::EndpointSlice =>
            {
                let labels = slice.metadata().labels.clone().unwrap_or_default();
                if labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
                    && let Some(name) = labels.get(SERVICE_NAME_LABEL)
                {
                    self.queue.add(ObjectRef {
                        kind: Kind::Service,
                        namespace: slice.metadata().namespace.clone(),
                        name: name.clone(),
                    });
                }
            }
            _ => {}
        }
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        key: ObjectRef,
    ) -> Result<Next, ApiError> {
        let Some(object) = self.cache.get(&key) else {
            // Its slices go with it (the garbage collector follows their
            // owner references).
            return Ok(Next::Done);
        };
        let Some(svc) = service(&object) else {
            return Ok(Next::Done);
        };
        if object.metadata().deletion_timestamp.is_some() {
            return Ok(Next::Done);
        }
        let namespace = key.namespace.as_deref();
        let mut existing: Vec<Arc<Object>> =
            self.cache
                .select_in(Kind::EndpointSlice, namespace, |slice| {
                    let labels = slice.metadata().labels.clone().unwrap_or_default();
                    labels.get(SERVICE_NAME_LABEL) == Some(&key.name)
                        && labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
                });
        // Slices this controller created that the cache does not show yet:
        // acting now could create them twice (Kubernetes' slice tracker).
        {
            let mut created = self.created();
            if let Some(names) = created.get_mut(&key) {
                names.retain(|name, at| {
                    at.elapsed() < CREATED_UNSEEN_FOR
                        && !existing
                            .iter()
                            .any(|slice| slice.metadata().name.as_deref() == Some(name.as_str()))
                });
                if !names.is_empty() {
                    return Ok(Next::After(Duration::from_millis(100)));
                }
                created.remove(&key);
            }
        }
        if selector_of(svc).is_none() {
            // No selector (any more): its slices are someone else's to
            // write; the ones made here go.
            for slice in existing {
                delete(client, &slice, "Background").await?;
            }
            return Ok(Next::Done);
        }
        let desired = self.desired(&object, svc);
        existing.sort_by(|a, b| a.metadata().name.cmp(&b.metadata().name));
        let mut unused: Vec<Arc<Object>> = Vec::new();
        let mut wanted = desired;
        // Reuse a slice of the same ports where one exists; write only what
        // differs.
        for slice in existing {
            let Object::EndpointSlice(current) = slice.as_ref() else {
                continue;
            };
            match wanted.iter().position(|w| w.ports == current.ports) {
                Some(index) => {
                    let want = wanted.remove(index);
                    if want.endpoints != current.endpoints {
                        let mut changed = current.as_ref().clone();
                        changed.endpoints = want.endpoints;
                        update(client, &Object::from(changed)).await?;
                    }
                }
                None => unused.push(slice),
            }
        }
        for want in wanted {
            // An unused slice is rewritten rather than deleted and made anew.
            match unused.pop() {
                Some(slice) => {
                    let Object::EndpointSlice(current) = slice.as_ref() else {
                        continue;
                    };
                    let mut changed = current.as_ref().clone();
                    changed.ports = want.ports;
                    changed.endpoints = want.endpoints;
                    update(client, &Object::from(changed)).await?;
                }
                None => {
                    let made = client.create(&Object::from(want), false).await?;
                    if let Some(name) = made.metadata().name.clone() {
                        self.created()
                            .entry(key.clone())
                            .or_default()
                            .insert(name, Instant::now());
                    }
                }
            }
        }
        for slice in unused {
            delete(client, &slice, "Background").await?;
        }
        Ok(Next::Done)
    }

    /// The slices the Service should have: endpoints grouped by their
    /// resolved ports, sorted by pod name, at most 100 per slice. A
    /// Service whose pods are all gone keeps one empty slice, as in
    /// Kubernetes.
    fn desired(&self, object: &Object, svc: &Service) -> Vec<EndpointSlice> {
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let publish_not_ready = svc
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            == Some(true);
        let mut pods =
            self.cache
                .select_in(Kind::Pod, object.metadata().namespace.as_deref(), |pod| {
                    selects(svc, pod) && !pod_state::is_finished(pod)
                });
        pods.sort_by(|a, b| a.metadata().name.cmp(&b.metadata().name));
        let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> = BTreeMap::new();
        for pod in &pods {
            let Object::Pod(pod) = pod.as_ref() else {
                continue;
            };
            let Some(mut endpoint) = endpoint_of(pod) else {
                continue;
            };
            if publish_not_ready && let Some(conditions) = &mut endpoint.conditions {
                conditions.ready = Some(true);
            }
            let resolved: Vec<ResolvedPort> = ports
                .iter()
                .filter_map(|port| {
                    target_port(port, pod).map(|number| {
                        (
                            // Stored with "" for an unnamed port.
                            Some(port.name.clone().unwrap_or_default()),
                            number,
                            port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        )
                    })
                })
                .collect();
            groups.entry(resolved).or_default().push(endpoint);
        }
        if groups.is_empty() {
            groups.insert(Vec::new(), Vec::new());
        }
        let mut slices = Vec::new();
        for (ports, endpoints) in groups {
            let ports: Vec<EndpointPort> = ports
                .into_iter()
                .map(|(name, port, protocol)| EndpointPort {
                    name,
                    port: Some(port),
                    protocol: Some(protocol),
                    app_protocol: None,
                })
                .collect();
            let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
                vec![Vec::new()]
            } else {
                endpoints
                    .chunks(MAX_ENDPOINTS)
                    .map(<[Endpoint]>::to_vec)
                    .collect()
            };
            for chunk in chunks {
                slices.push(self.slice(object, ports.clone(), chunk));
            }
        }
        slices
    }

    fn slice(
        &self,
        object: &Object,
        ports: Vec<EndpointPort>,
        endpoints: Vec<Endpoint>,
    ) -> EndpointSlice {
        let name = object.metadata().name.clone().unwrap_or_default();
        EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: object.metadata().namespace.clone(),
                labels: Some(
                    [
                        (SERVICE_NAME_LABEL.to_string(), name),
                        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    ]
                    .into(),
                ),
                owner_references: Some(vec![controller_reference(object)]),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(ports),
        }
    }
}
