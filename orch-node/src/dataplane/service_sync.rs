//! kube-proxy's job: Services and EndpointSlices from the API, reconciled
//! into the node's service table, on the runtime every controller shares
//! (reflectors into a cache, a work queue of Service keys, workers).
//!
//! A ClusterIP port balances over the ready endpoints of the Service's
//! slices, at the port the slice gives for that port's name. Endpoints that
//! are not ready (terminating ones included) take no new connections;
//! connections already made keep their backend, since the socket was
//! translated when it connected.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use orch_core::api::ApiClient;
use orch_core::object::{Kind, Object};
use orch_core::runtime::{Cache, Change, Handler, Next, ObjectRef, WorkQueue, reflector};

use super::DataplaneError;
use super::services::{Balancing, Frontend, Protocol, ServiceTable};

/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Service keys reconciled at once: table writes are syscalls of
/// microseconds, so a few workers keep up with any churn.
const WORKERS: usize = 4;

/// The node this agent runs on, for NodePort frontends: its address, and
/// its name (which endpoints are local for `externalTrafficPolicy: Local`).
#[derive(Clone, Debug)]
pub struct LocalNode {
    pub name: String,
    pub address: Ipv4Addr,
}

/// What the table should hold for a Service: each TCP or UDP port of its
/// IPv4 ClusterIP, with the ready endpoints behind it (sorted, without
/// duplicates); with `node`, each NodePort of a NodePort or LoadBalancer
/// Service on the node's address, with the same endpoints, or only the
/// node's own for `externalTrafficPolicy: Local`; and each port on each
/// address of a LoadBalancer's status the same way. Headless and
/// ExternalName Services have no ClusterIP frontend.
pub fn desired(
    service: &Service,
    slices: &[&EndpointSlice],
    node: Option<&LocalNode>,
) -> Vec<(Frontend, Balancing)> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let node_ports =
        node.filter(|_| matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")));
    // A LoadBalancer's addresses (status.loadBalancer) take its ports as
    // its NodePorts do, on every node the traffic is sent to.
    let load_balancer = match node_ports {
        Some(_) if spec.type_.as_deref() == Some("LoadBalancer") => {
            orch_core::networking::load_balancer_addresses(service)
        }
        _ => Vec::new(),
    };
    let local_only = spec.external_traffic_policy.as_deref() == Some("Local");
    let affinity_seconds = affinity_seconds(spec);
    let mut wanted = Vec::new();
    for port in spec.ports.iter().flatten() {
        let protocol_name = port.protocol.as_deref().unwrap_or("TCP");
        let protocol = match protocol_name {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            _ => continue,
        };
        let name = port.name.as_deref().unwrap_or_default();
        let backends = |on_node: Option<&str>| Balancing {
            backends: ready_endpoints(slices, name, protocol_name, on_node),
            affinity_seconds,
        };
        if let (Some(address), Ok(number)) = (cluster_ip, u16::try_from(port.port)) {
            let frontend = Frontend {
                address,
                port: number,
                protocol,
            };
            wanted.push((frontend, backends(None)));
        }
        let node_port = port
            .node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0);
        if let (Some(node), Some(number)) = (node_ports, node_port) {
            let frontend = Frontend {
                address: node.address,
                port: number,
                protocol,
            };
            let on_node = local_only.then_some(node.name.as_str());
            wanted.push((frontend, backends(on_node)));
        }
        if let (Some(node), Ok(number)) = (node_ports, u16::try_from(port.port)) {
            for address in &load_balancer {
                let frontend = Frontend {
                    address: *address,
                    port: number,
                    protocol,
                };
                let on_node = local_only.then_some(node.name.as_str());
                wanted.push((frontend, backends(on_node)));
            }
        }
    }
    wanted
}

/// sessionAffinity ClientIP's timeout (Kubernetes' default: 3 hours), or
/// 0 without affinity.
fn affinity_seconds(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> u32 {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return 0;
    }
    spec.session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(10_800)
}

/// The ready endpoints of `slices` at the port named `port_name` (only
/// those on node `on_node`, when given).
fn ready_endpoints(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol_name: &str,
    on_node: Option<&str>,
) -> Vec<SocketAddrV4> {
    let mut backends = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == protocol_name
        }) else {
            continue;
        };
        let Some(target) = target.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // Ready unset means ready (the API's rule for consumers).
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready || on_node.is_some_and(|n| endpoint.node_name.as_deref() != Some(n)) {
                continue;
            }
            if let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            {
                backends.insert(SocketAddrV4::new(ip, target));
            }
        }
    }
    backends.into_iter().collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct ServiceSync {
    cache: Arc<Cache>,
    pub queue: Arc<WorkQueue<ObjectRef>>,
    table: Mutex<ServiceTable>,
    /// What was written: the frontends of each Service, and the Service
    /// owning each frontend (a deleted Service's address may already be a
    /// new Service's, whose entry must then stay).
    installed: Mutex<Installed>,
    /// Set when NodePort frontends are wanted.
    node: Option<LocalNode>,
}

#[derive(Default)]
struct Installed {
    by_service: HashMap<ObjectRef, BTreeSet<Frontend>>,
    owner: HashMap<Frontend, ObjectRef>,
}

/// With a `cgroup`: attaches the socket programs to it and keeps the
/// node's service table in step with the API from a task of its own (the
/// returned object holds the loaded programs). Without: detaches what an
/// earlier run attached, so a node started without service balancing has
/// none, rather than a table frozen at its last state.
///
/// An attachment found pinned gets this agent's programs swapped in; one on
/// another cgroup is moved (see `services::attach`).
///
/// `node` is given when the pod network's tc programs run on this node:
/// NodePort frontends are written for them. With neither a cgroup nor a
/// node, nothing reads the table and no sync runs.
pub fn start(
    layout: &super::PinLayout,
    cgroup: Option<&std::path::Path>,
    node: Option<LocalNode>,
    client: ApiClient,
) -> Result<Started, DataplaneError> {
    let programs = match cgroup {
        Some(cgroup) => {
            let mut programs = super::services::attach(layout, cgroup)?;
            super::kernel_logs::forward(&mut programs, "service balancing");
            Some(programs)
        }
        None => {
            if super::services::detach(layout)? {
                tracing::info!("service balancing detached (started without --service-cgroup)");
            }
            None
        }
    };
    if programs.is_none() && node.is_none() {
        return Ok(Started {
            programs,
            sync: None,
        });
    }
    let sync = ServiceSync::new(ServiceTable::open(layout)?, node);
    tokio::spawn(sync.clone().run(client));
    Ok(Started {
        programs,
        sync: Some(sync),
    })
}

/// What [`start`] started: the socket programs' loader (holding their
/// log buffer) and the sync.
pub struct Started {
    pub programs: Option<aya::Ebpf>,
    pub sync: Option<Arc<ServiceSync>>,
}

/// The Service an object is about: itself, or the one a slice is labelled
/// with.
fn service_of(object: &Object) -> Option<ObjectRef> {
    let meta = object.metadata();
    let name = match object.kind() {
        Kind::Service => meta.name.clone()?,
        Kind::EndpointSlice => meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone(),
        _ => return None,
    };
    Some(ObjectRef {
        kind: Kind::Service,
        namespace: meta.namespace.clone(),
        name,
    })
}

impl ServiceSync {
    pub fn new(table: ServiceTable, node: Option<LocalNode>) -> Arc<Self> {
        Arc::new(Self {
            cache: Cache::new(),
            queue: WorkQueue::new(),
            table: Mutex::new(table),
            installed: Mutex::new(Installed::default()),
            node,
        })
    }

    fn handler(self: &Arc<Self>) -> Handler {
        let queue = self.queue.clone();
        Arc::new(move |change: Change| {
            let object = match &change {
                Change::Applied { new, .. } => new,
                Change::Deleted(old) => old,
            };
            if let Some(key) = service_of(object) {
                queue.add(key);
            }
        })
    }

    /// Follows Services and EndpointSlices through `client` and keeps the
    /// table in step, until the task is dropped. Once both kinds are
    /// listed, every frontend no Service wants (left by an earlier agent,
    /// or by a Service deleted while no agent ran) is removed.
    pub async fn run(self: Arc<Self>, client: ApiClient) {
        let handler = self.handler();
        let mut synced = Vec::new();
        for kind in [Kind::Service, Kind::EndpointSlice] {
            let (sender, receiver) = tokio::sync::watch::channel(false);
            synced.push(receiver);
            tokio::spawn(reflector::reflect(
                client.clone(),
                kind,
                self.cache.clone(),
                handler.clone(),
                sender,
            ));
        }
        for mut receiver in synced {
            if receiver.wait_for(|synced| *synced).await.is_err() {
                return;
            }
        }
        for service in self.cache.select_kind(Kind::Service, |_| true) {
            if let Err(error) = self.reconcile(ObjectRef::of(&service)) {
                tracing::warn!(%error, "service table: first sync");
            }
        }
        if let Err(error) = self.remove_orphans() {
            tracing::warn!(%error, "service table: removing what no Service wants");
        }
        let sync = self.clone();
        orch_core::runtime::run_workers("service-table", self.queue.clone(), WORKERS, move |key| {
            let sync = sync.clone();
            async move { sync.reconcile(key) }
        })
        .await;
    }

    /// Writes the frontends of one Service and removes those it no longer
    /// has.
    pub fn reconcile(&self, key: ObjectRef) -> Result<Next, DataplaneError> {
        let wanted = match self.cache.get(&key).as_deref() {
            Some(Object::Service(service)) => {
                let namespace = key.namespace.as_deref();
                let slices = self
                    .cache
                    .select_in(Kind::EndpointSlice, namespace, |object| {
                        service_of(object).as_ref() == Some(&key)
                    });
                let slices: Vec<&EndpointSlice> = slices
                    .iter()
                    .filter_map(|object| match object.as_ref() {
                        Object::EndpointSlice(slice) => Some(slice.as_ref()),
                        _ => None,
                    })
                    .collect();
                desired(service, &slices, self.node.as_ref())
            }
            _ => Vec::new(),
        };
        let now: BTreeSet<Frontend> = wanted.iter().map(|(frontend, _)| *frontend).collect();
        let mut table = lock(&self.table);
        let mut installed = lock(&self.installed);
        let before = installed.by_service.remove(&key).unwrap_or_default();
        // Until every write went through, the key keeps both sets: a retry
        // then still knows what to remove.
        installed
            .by_service
            .insert(key.clone(), before.union(&now).copied().collect());
        for (frontend, balancing) in &wanted {
            table.set(*frontend, &balancing.backends, balancing.affinity_seconds)?;
            installed.owner.insert(*frontend, key.clone());
        }
        for gone in before.difference(&now) {
            if installed.owner.get(gone) == Some(&key) {
                table.remove(*gone)?;
                installed.owner.remove(gone);
            }
        }
        if now.is_empty() {
            installed.by_service.remove(&key);
        } else {
            installed.by_service.insert(key, now);
        }
        Ok(Next::Done)
    }

    /// The Service (`namespace/name`) each written frontend belongs to.
    pub fn owners(&self) -> HashMap<Frontend, String> {
        lock(&self.installed)
            .owner
            .iter()
            .map(|(frontend, key)| {
                let namespace = key.namespace.as_deref().unwrap_or_default();
                (*frontend, format!("{namespace}/{}", key.name))
            })
            .collect()
    }

    fn remove_orphans(&self) -> Result<(), DataplaneError> {
        let wanted: BTreeSet<Frontend> = lock(&self.installed).owner.keys().copied().collect();
        let mut table = lock(&self.table);
        for (frontend, _) in table.list()? {
            if !wanted.contains(&frontend) {
                table.remove(frontend)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    #[test]
    fn ports_balance_over_ready_endpoints_at_the_named_target_port() {
        let service: Service = parse(
            "metadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - {name: http, port: 80}\n  - {name: dns, port: 53, protocol: UDP}\n  - {name: sctp, port: 99, protocol: SCTP}\n",
        );
        let slice: EndpointSlice = parse(
            "metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\n- {name: dns, port: 5353, protocol: UDP}\nendpoints:\n- addresses: [10.244.1.5]\n  conditions: {ready: true}\n- addresses: [10.244.2.7]\n- addresses: [10.244.3.9]\n  conditions: {ready: false, terminating: true}\n",
        );
        let other: EndpointSlice = parse(
            "metadata: {name: web-2, namespace: default}\naddressType: IPv4\nports:\n- {name: http, port: 9090}\nendpoints:\n- addresses: [10.244.1.5]\n",
        );
        let wanted = desired(&service, &[&slice, &other], None);
        let http = Frontend {
            address: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let dns = Frontend {
            port: 53,
            protocol: Protocol::Udp,
            ..http
        };
        let balancing = |backends: &[&str]| {
            Balancing::without_affinity(backends.iter().map(|b| b.parse().expect("addr")).collect())
        };
        assert_eq!(
            wanted,
            vec![
                (
                    http,
                    balancing(&["10.244.1.5:8080", "10.244.1.5:9090", "10.244.2.7:8080"])
                ),
                (dns, balancing(&["10.244.1.5:5353", "10.244.2.7:5353"])),
            ]
        );
    }

    #[test]
    fn node_ports_listen_on_the_node_and_local_policy_keeps_to_its_pods() {
        let slice: EndpointSlice = parse(
            "metadata: {name: web-1, namespace: default}\naddressType: IPv4\nports:\n- {name: http, port: 8080}\nendpoints:\n- addresses: [10.244.1.5]\n  nodeName: here\n- addresses: [10.244.2.7]\n  nodeName: there\n",
        );
        let node = LocalNode {
            name: "here".into(),
            address: Ipv4Addr::new(10, 0, 0, 1),
        };
        let all: Vec<SocketAddrV4> = vec![
            "10.244.1.5:8080".parse().expect("addr"),
            "10.244.2.7:8080".parse().expect("addr"),
        ];
        for (policy, on_node) in [("Cluster", all.clone()), ("Local", all[..1].to_vec())] {
            let service: Service = parse(&format!(
                "metadata: {{name: web}}\nspec:\n  type: NodePort\n  externalTrafficPolicy: {policy}\n  clusterIP: 10.96.0.10\n  sessionAffinity: ClientIP\n  ports: [{{name: http, port: 80, nodePort: 30080}}]\n"
            ));
            // ClientIP affinity, Kubernetes' default timeout.
            let balancing = |backends: Vec<SocketAddrV4>| Balancing {
                backends,
                affinity_seconds: 10_800,
            };
            let cluster_ip = Frontend {
                address: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: Protocol::Tcp,
            };
            let node_port = Frontend {
                address: node.address,
                port: 30080,
                protocol: Protocol::Tcp,
            };
            assert_eq!(
                desired(&service, &[&slice], Some(&node)),
                vec![
                    (cluster_ip, balancing(all.clone())),
                    (node_port, balancing(on_node))
                ],
                "{policy}"
            );
            // Without the pod network's programs, no NodePort frontend.
            assert_eq!(desired(&service, &[&slice], None).len(), 1);
        }
    }

    #[test]
    fn headless_and_external_name_services_have_no_frontend() {
        for spec in [
            "clusterIP: None\n  ports: [{port: 80}]",
            "type: ExternalName\n  externalName: example.com\n  ports: [{port: 80}]",
        ] {
            let service: Service = parse(&format!("metadata: {{name: x}}\nspec:\n  {spec}\n"));
            assert!(desired(&service, &[], None).is_empty(), "{spec}");
        }
    }
}
