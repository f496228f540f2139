//! The kinds orch serves, as one closed enum over Kubernetes' own types.
//!
//! Every kind is listed once in [`kinds!`]; the enum, the kind registry
//! (apiVersion, plural, short names, scope) and the dispatch helpers are all
//! generated from that list so adding a kind is one line.

use std::fmt;

use k8s_openapi::Metadata as _;
use k8s_openapi::Resource as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

macro_rules! kinds {
    ($( $variant:ident($ty:ty) { namespaced: $ns:expr, short: [$($short:literal),*] } )*) => {
        /// One object of any kind orch serves. Serializes exactly as Kubernetes
        /// does (apiVersion and kind included).
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Object {
            $( $variant(Box<$ty>), )*
        }

        /// The kinds orch serves.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $( $variant, )*
        }

        impl Kind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [Kind] = &[$( Kind::$variant, )*];

            /// `apiVersion` as Kubernetes writes it (`v1`, `apps/v1`, ...).
            pub fn api_version(self) -> &'static str {
                match self { $( Kind::$variant => <$ty>::API_VERSION, )* }
            }

            /// API group, empty for the core group.
            pub fn group(self) -> &'static str {
                match self { $( Kind::$variant => <$ty>::GROUP, )* }
            }

            /// `kind` as Kubernetes writes it (`Pod`, `EndpointSlice`, ...).
            pub fn name(self) -> &'static str {
                match self { $( Kind::$variant => <$ty>::KIND, )* }
            }

            /// Lower-case plural used in URLs and store keys (`pods`).
            pub fn plural(self) -> &'static str {
                match self { $( Kind::$variant => <$ty>::URL_PATH_SEGMENT, )* }
            }

            /// Short names kubectl accepts (`po`, `deploy`, ...).
            pub fn short_names(self) -> &'static [&'static str] {
                match self { $( Kind::$variant => &[$($short),*], )* }
            }

            /// Whether objects of this kind live in a namespace.
            pub fn namespaced(self) -> bool {
                match self { $( Kind::$variant => $ns, )* }
            }

            fn deserialize_object<'de, D>(self, deserializer: D) -> Result<Object, D::Error>
            where
                D: serde::Deserializer<'de>,
            {
                use serde::Deserialize as _;
                Ok(match self {
                    $( Kind::$variant => Object::$variant(Box::new(<$ty>::deserialize(deserializer)?)), )*
                })
            }
        }

        impl Object {
            /// The kind of this object.
            pub fn kind(&self) -> Kind {
                match self { $( Object::$variant(_) => Kind::$variant, )* }
            }

            /// The object's metadata.
            pub fn metadata(&self) -> &ObjectMeta {
                match self { $( Object::$variant(o) => o.metadata(), )* }
            }

            /// The object's metadata, mutable.
            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self { $( Object::$variant(o) => o.metadata_mut(), )* }
            }
        }

        $(
            impl From<$ty> for Object {
                fn from(object: $ty) -> Self {
                    Object::$variant(Box::new(object))
                }
            }
        )*
    };
}

kinds! {
    Namespace(Namespace) { namespaced: false, short: ["ns"] }
    Node(Node) { namespaced: false, short: ["no"] }
    Pod(Pod) { namespaced: true, short: ["po"] }
    Deployment(Deployment) { namespaced: true, short: ["deploy"] }
    ReplicaSet(ReplicaSet) { namespaced: true, short: ["rs"] }
    Service(Service) { namespaced: true, short: ["svc"] }
    EndpointSlice(EndpointSlice) { namespaced: true, short: [] }
    Lease(Lease) { namespaced: true, short: [] }
    Event(Event) { namespaced: true, short: ["ev"] }
    ConfigMap(ConfigMap) { namespaced: true, short: ["cm"] }
    Secret(Secret) { namespaced: true, short: [] }
}

impl Kind {
    /// The kind named by a manifest's `apiVersion` and `kind`.
    pub fn from_type_meta(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.api_version() == api_version && k.name() == kind)
    }

    /// The kind a user names on the command line, as kubectl accepts it:
    /// plural, singular, short name or kind, case-insensitively
    /// (`pods`, `pod`, `po`, `Pod`, `endpointslices`).
    pub fn from_user_name(name: &str) -> Option<Kind> {
        let name = name.to_ascii_lowercase();
        Kind::ALL.iter().copied().find(|k| {
            k.plural() == name
                || k.name().to_ascii_lowercase() == name
                || k.short_names().contains(&name.as_str())
        })
    }

    /// Deserializes an object of this kind from any serde source.
    pub fn deserialize<'de, D>(self, deserializer: D) -> Result<Object, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        self.deserialize_object(deserializer)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Object {
    /// `namespace/name` (or `name` for cluster-scoped kinds), for messages.
    pub fn display_name(&self) -> String {
        let meta = self.metadata();
        let name = meta
            .name
            .as_deref()
            .or(meta.generate_name.as_deref())
            .unwrap_or("<unnamed>");
        match (&meta.namespace, self.kind().namespaced()) {
            (Some(ns), true) => format!("{ns}/{name}"),
            _ => name.to_string(),
        }
    }

    /// The object as a JSON value (the wire and storage shape).
    pub fn to_json(&self) -> serde_json::Value {
        // Serializing k8s-openapi types into a Value cannot fail: they hold
        // only strings, numbers, maps and lists.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_matches_kubernetes() {
        assert_eq!(Kind::Deployment.api_version(), "apps/v1");
        assert_eq!(Kind::EndpointSlice.api_version(), "discovery.k8s.io/v1");
        assert_eq!(Kind::Lease.api_version(), "coordination.k8s.io/v1");
        assert_eq!(Kind::Pod.plural(), "pods");
        assert_eq!(Kind::EndpointSlice.plural(), "endpointslices");
        assert!(!Kind::Node.namespaced());
        assert!(Kind::ConfigMap.namespaced());
        assert_eq!(
            Kind::from_type_meta("apps/v1", "ReplicaSet"),
            Some(Kind::ReplicaSet)
        );
        assert_eq!(Kind::from_type_meta("v1", "Deployment"), None);
        assert_eq!(Kind::from_user_name("deploy"), Some(Kind::Deployment));
        assert_eq!(Kind::from_user_name("Pods"), Some(Kind::Pod));
        assert_eq!(Kind::from_user_name("svc"), Some(Kind::Service));
        assert_eq!(Kind::from_user_name("widgets"), None);
    }

    #[test]
    fn serializes_type_meta() {
        let object = Object::from(Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let json = object.to_json();
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["kind"], "Pod");
        assert_eq!(object.display_name(), "default/web");
        assert_eq!(object.kind(), Kind::Pod);
    }
}
