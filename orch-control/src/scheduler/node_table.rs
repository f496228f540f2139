//! The scheduler's view of every node (Kubernetes' scheduler cache): each
//! node with the pods bound or assumed to it and what they use, kept up to
//! date from the watch as changes arrive, so deciding never scans every
//! pod of the cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use orch_core::object::{Kind, Object};
use orch_core::runtime::ObjectRef;
use orch_core::scheduling::{self, NO_SCHEDULE, Resources};

/// Taints Kubernetes' node lifecycle controller puts on nodes that are not
/// Ready; the scheduler reads a node's Ready condition the same way, so a
/// pod that tolerates them may still land there.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Requests the scoring assumes for a container that sets none (the
/// scheduler's non-zero defaults), so best-effort pods still spread.
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// One pod as a node holds it.
pub struct PlacedPod {
    pub pod: Arc<Object>,
    pub requests: Resources,
    /// Requests with the non-zero defaults, for scoring.
    pub nonzero: Resources,
    /// Host ports it takes: (protocol, hostIP, port).
    pub host_ports: Vec<(String, String, i32)>,
    /// Its controller owner's uid (default spreading counts these).
    pub owner: Option<String>,
}

impl PlacedPod {
    pub fn new(pod: Arc<Object>) -> Option<Self> {
        let Object::Pod(inner) = pod.as_ref() else {
            return None;
        };
        let spec = inner.spec.as_ref()?;
        let requests = scheduling::pod_requests(spec);
        let mut nonzero = requests;
        let containers = spec.containers.len() as i64;
        if requests.milli_cpu == 0 {
            nonzero.milli_cpu = DEFAULT_MILLI_CPU * containers;
        }
        if requests.memory == 0 {
            nonzero.memory = DEFAULT_MEMORY * containers;
        }
        Some(Self {
            host_ports: host_ports(inner),
            owner: controller_uid(&pod),
            requests,
            nonzero,
            pod,
        })
    }
}

/// Host ports a pod asks for: (protocol, hostIP, port).
pub fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            p.host_port.filter(|port| *port > 0).map(|port| {
                (
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                    port,
                )
            })
        })
        .collect()
}

/// The uid of the object's controlling owner.
fn controller_uid(object: &Object) -> Option<String> {
    crate::controllers::ownership::controller_of(object).map(|r| r.uid.clone())
}

/// A node and what runs (or is assumed to run) on it.
pub struct NodeInfo {
    pub node: Arc<Object>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub nonzero_requested: Resources,
    pub pods: HashMap<ObjectRef, PlacedPod>,
    /// Pods per controlling owner uid.
    pub by_owner: HashMap<String, u32>,
    /// The node's taints plus those its conditions imply.
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// Images it holds: name -> size in bytes.
    pub images: HashMap<String, i64>,
}

impl NodeInfo {
    fn new(node: Arc<Object>) -> Self {
        let mut info = Self {
            node: node.clone(),
            allocatable: Resources::default(),
            requested: Resources::default(),
            nonzero_requested: Resources::default(),
            pods: HashMap::new(),
            by_owner: HashMap::new(),
            taints: Vec::new(),
            unschedulable: false,
            images: HashMap::new(),
        };
        info.set_node(node);
        info
    }

    fn set_node(&mut self, object: Arc<Object>) {
        if let Object::Node(node) = object.as_ref() {
            self.allocatable = scheduling::node_allocatable(node);
            self.taints = node_taints(node);
            self.unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
            self.images = node
                .status
                .iter()
                .flat_map(|s| s.images.iter().flatten())
                .flat_map(|image| {
                    let size = image.size_bytes.unwrap_or(0);
                    image
                        .names
                        .iter()
                        .flatten()
                        .map(move |name| (name.clone(), size))
                })
                .collect();
        }
        self.node = object;
    }

    pub fn node(&self) -> Option<&Node> {
        match self.node.as_ref() {
            Object::Node(node) => Some(node),
            _ => None,
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata().name.as_deref().unwrap_or_default()
    }

    fn add(&mut self, key: ObjectRef, placed: PlacedPod) {
        self.remove(&key);
        self.requested.add(&placed.requests);
        self.nonzero_requested.add(&placed.nonzero);
        if let Some(owner) = &placed.owner {
            *self.by_owner.entry(owner.clone()).or_default() += 1;
        }
        self.pods.insert(key, placed);
    }

    fn remove(&mut self, key: &ObjectRef) -> bool {
        let Some(placed) = self.pods.remove(key) else {
            return false;
        };
        self.requested.subtract(&placed.requests);
        self.nonzero_requested.subtract(&placed.nonzero);
        if let Some(owner) = &placed.owner
            && let Some(count) = self.by_owner.get_mut(owner)
        {
            *count -= 1;
            if *count == 0 {
                self.by_owner.remove(owner);
            }
        }
        true
    }

    /// Whether a host port of the pod is taken here.
    pub fn port_taken(&self, wanted: &(String, String, i32)) -> bool {
        let any = |ip: &str| ip == "0.0.0.0" || ip.is_empty();
        self.pods
            .values()
            .flat_map(|p| p.host_ports.iter())
            .any(|used| {
                used.0 == wanted.0
                    && used.2 == wanted.2
                    && (any(&used.1) || any(&wanted.1) || used.1 == wanted.1)
            })
    }
}

/// The node's own taints, plus not-ready / unreachable for a node whose
/// Ready condition is False / not True, as the node lifecycle controller
/// would set them.
fn node_taints(node: &Node) -> Vec<Taint> {
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str());
    let implied = match ready {
        Some("True") => None,
        Some("False") => Some(NOT_READY_TAINT),
        _ => Some(UNREACHABLE_TAINT),
    };
    if let Some(key) = implied
        && !taints
            .iter()
            .any(|t| t.key == key && t.effect == NO_SCHEDULE)
    {
        taints.push(Taint {
            key: key.into(),
            effect: NO_SCHEDULE.into(),
            value: None,
            time_added: None,
        });
    }
    taints
}

/// Every node, by name, and where each pod is.
#[derive(Default)]
pub struct NodeTable {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Pod -> the node it is on (bound or assumed).
    placed: HashMap<ObjectRef, String>,
    /// Pods placed by this scheduler whose binding the watch has not shown
    /// yet.
    assumed: HashSet<ObjectRef>,
    /// Pods bound to a node not (yet) seen: accounted once it appears.
    waiting: HashMap<String, HashMap<ObjectRef, Arc<Object>>>,
    /// Placed pods with required anti-affinity terms, which every later
    /// pod must respect.
    anti_affine: HashSet<ObjectRef>,
    /// The last node the previous search examined.
    search_cursor: Option<String>,
}

fn has_required_anti_affinity(pod: &Object) -> bool {
    let Object::Pod(inner) = pod else {
        return false;
    };
    inner
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|terms| !terms.is_empty())
}

/// Whether the pod holds its node's resources: bound and not finished.
fn occupies(pod: &Object) -> Option<&str> {
    let Object::Pod(inner) = pod else {
        return None;
    };
    let phase = inner.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    inner
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

impl NodeTable {
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_assumed(&self, key: &ObjectRef) -> bool {
        self.assumed.contains(key)
    }

    /// Whether the pod is charged to a node (bound or assumed).
    pub fn is_placed(&self, key: &ObjectRef) -> bool {
        self.placed.contains_key(key)
    }

    /// Placed pods with required anti-affinity, with their nodes.
    pub fn anti_affine(&self) -> impl Iterator<Item = (&PlacedPod, &NodeInfo)> {
        self.anti_affine.iter().filter_map(|key| {
            let info = self.nodes.get(self.placed.get(key)?)?;
            Some((info.pods.get(key)?, info))
        })
    }

    /// A node was created or changed.
    pub fn set_node(&mut self, node: Arc<Object>) {
        let name = node.metadata().name.clone().unwrap_or_default();
        match self.nodes.get_mut(&name) {
            Some(info) => info.set_node(node),
            None => {
                let mut info = NodeInfo::new(node);
                for (key, pod) in self.waiting.remove(&name).unwrap_or_default() {
                    if let Some(placed) = PlacedPod::new(pod) {
                        info.add(key, placed);
                    }
                }
                self.nodes.insert(name, info);
            }
        }
    }

    /// A node was deleted; its pods wait for it to come back.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.remove(name) {
            let waiting = self.waiting.entry(name.into()).or_default();
            for (key, placed) in info.pods {
                waiting.insert(key, placed.pod);
            }
        }
    }

    /// A pod was created or changed: accounted on its node while bound and
    /// running; a binding the watch now shows confirms an assumption.
    pub fn set_pod(&mut self, pod: Arc<Object>) {
        let key = ObjectRef::of(&pod);
        match occupies(&pod).map(str::to_owned) {
            Some(node) => {
                self.assumed.remove(&key);
                self.place(key, node, pod);
            }
            None if self.assumed.contains(&key) => {}
            None => self.remove_pod(&key),
        }
    }

    /// A pod is gone.
    pub fn delete_pod(&mut self, key: &ObjectRef) {
        self.assumed.remove(key);
        self.remove_pod(key);
    }

    /// Accounts `pod` on `node` before its binding is written, so the
    /// next decision already sees it.
    /// Every node once, starting after the last one the previous search
    /// examined: searches that stop early (enough feasible nodes) rotate
    /// over the cluster, as Kubernetes' do.
    pub fn search_order(&self) -> impl Iterator<Item = &NodeInfo> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let (after, up_to) = match self.search_cursor.as_deref() {
            Some(last) => ((Excluded(last), Unbounded), (Unbounded, Included(last))),
            None => ((Unbounded, Unbounded), (Unbounded, Excluded(""))),
        };
        self.nodes
            .range::<str, _>(after)
            .chain(self.nodes.range::<str, _>(up_to))
            .map(|(_, info)| info)
    }

    /// The last node a search examined: the next starts after it.
    pub fn searched_up_to(&mut self, last: Option<String>) {
        if last.is_some() {
            self.search_cursor = last;
        }
    }

    pub fn assume(&mut self, pod: Arc<Object>, node: &str) {
        let key = ObjectRef::of(&pod);
        self.assumed.insert(key.clone());
        self.place(key, node.to_owned(), pod);
    }

    /// The binding failed: the assumption is dropped.
    pub fn forget(&mut self, key: &ObjectRef) {
        if self.assumed.remove(key) {
            self.remove_pod(key);
        }
    }

    fn place(&mut self, key: ObjectRef, node: String, pod: Arc<Object>) {
        if self.placed.get(&key) != Some(&node) {
            self.remove_pod(&key);
        }
        if has_required_anti_affinity(&pod) {
            self.anti_affine.insert(key.clone());
        }
        match self.nodes.get_mut(&node) {
            Some(info) => {
                if let Some(placed) = PlacedPod::new(pod) {
                    info.add(key.clone(), placed);
                }
            }
            None => {
                self.waiting
                    .entry(node.clone())
                    .or_default()
                    .insert(key.clone(), pod);
            }
        }
        self.placed.insert(key, node);
    }

    fn remove_pod(&mut self, key: &ObjectRef) {
        if key.kind != Kind::Pod {
            return;
        }
        let Some(node) = self.placed.remove(key) else {
            return;
        };
        self.anti_affine.remove(key);
        if let Some(info) = self.nodes.get_mut(&node) {
            info.remove(key);
        } else if let Some(waiting) = self.waiting.get_mut(&node) {
            waiting.remove(key);
            if waiting.is_empty() {
                self.waiting.remove(&node);
            }
        }
    }
}
