//! The gRPC face of the API (`orch.api.v1.Api`): requests in, the registry
//! does the work, objects out as JSON; errors as statuses (see
//! `orch_core::api::ApiError`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use orch_core::api::proto::api_server::{Api, ApiServer};
use orch_core::api::proto::{
    DeleteRequest, ExecInput, GetRequest, ImageImportChunk, ImageImportReply, ListReply,
    ListRequest, NodeDataplaneReply, NodeDataplaneRequest, NodeMonitorRequest, ObjectReply,
    ObjectRequest, PatchRequest, PodLogsRequest, WatchEvent, WatchRequest,
};
use orch_core::api::{ApiError, kind_of_resource, kind_prefix};
use orch_core::object::{Kind, Object};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::filter::Filter;
use super::node_proxy::{ExecStream, LogStream, MonitorStream, NodeProxy};
use super::registry::{DeleteOptions, Registry, UpdateKind, Written, served_json};
use crate::store::types::{Event, EventKind, Revision};

/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

pub struct ApiService {
    registry: Arc<Registry>,
    nodes: Arc<NodeProxy>,
}

pub fn api_server(registry: Arc<Registry>, nodes: Arc<NodeProxy>) -> ApiServer<ApiService> {
    ApiServer::new(ApiService { registry, nodes })
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(64 << 20)
}

fn kind(resource: &str) -> Result<Kind, Status> {
    kind_of_resource(resource).ok_or_else(|| {
        ApiError::NotFound(format!(
            "the server doesn't have a resource type {resource:?}"
        ))
        .to_status()
    })
}

fn json(object: &Object) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(object).map_err(|e| Status::internal(format!("encoding: {e}")))
}

fn reply(written: Result<Written, ApiError>) -> Result<Response<ObjectReply>, Status> {
    let written = written.map_err(|e| e.to_status())?;
    Ok(Response::new(ObjectReply {
        object: json(&written.object)?,
        warnings: written.warnings,
    }))
}

fn parse_revision(text: &str) -> Result<Option<Revision>, Status> {
    match text {
        "" | "0" => Ok(None),
        text => text.parse().map(Some).map_err(|_| {
            ApiError::Invalid(format!(
                "resourceVersion: {text:?} is not a resource version"
            ))
            .to_status()
        }),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

/// Runs one API call, counting it and timing it by method and resource.
async fn instrumented<T>(
    method: &str,
    resource: &str,
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let started = std::time::Instant::now();
    let result = call.await;
    let code = match &result {
        Ok(_) => "OK".to_string(),
        Err(status) => format!("{:?}", status.code()),
    };
    crate::metrics::global().observe_request(method, resource, &code, started.elapsed());
    result
}

impl ApiService {
    async fn replace(
        &self,
        request: ObjectRequest,
        update: UpdateKind,
    ) -> Result<Response<ObjectReply>, Status> {
        let kind = kind(&request.resource)?;
        reply(
            self.registry
                .update(
                    kind,
                    &request.namespace,
                    &request.object,
                    request.dry_run,
                    update,
                )
                .await,
        )
    }

    /// The object a get or delete returns.
    fn object_reply(object: Result<Object, ApiError>) -> Result<Response<ObjectReply>, Status> {
        let object = object.map_err(|e| e.to_status())?;
        Ok(Response::new(ObjectReply {
            object: json(&object)?,
            warnings: Vec::new(),
        }))
    }
}

#[tonic::async_trait]
impl Api for ApiService {
    type WatchStream = WatchStream;
    type PodLogsStream = LogStream;
    type NodeMonitorStream = MonitorStream;
    type PodExecStream = ExecStream;

    async fn pod_logs(
        &self,
        request: Request<PodLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        instrumented("logs", "pods", async move {
            let stream = self
                .nodes
                .logs(&self.registry, request.into_inner())
                .await?;
            Ok(Response::new(stream))
        })
        .await
    }

    async fn node_dataplane(
        &self,
        request: Request<NodeDataplaneRequest>,
    ) -> Result<Response<NodeDataplaneReply>, Status> {
        instrumented("get", "nodes/dataplane", async move {
            let reply = self
                .nodes
                .dataplane(&self.registry, request.into_inner())
                .await?;
            Ok(Response::new(reply))
        })
        .await
    }

    async fn node_monitor(
        &self,
        request: Request<NodeMonitorRequest>,
    ) -> Result<Response<MonitorStream>, Status> {
        instrumented("watch", "nodes/monitor", async move {
            let stream = self
                .nodes
                .monitor(&self.registry, request.into_inner())
                .await?;
            Ok(Response::new(stream))
        })
        .await
    }

    async fn import_image(
        &self,
        request: Request<tonic::Streaming<ImageImportChunk>>,
    ) -> Result<Response<ImageImportReply>, Status> {
        instrumented("import", "images", async move {
            let reply = self
                .nodes
                .import_image(&self.registry, request.into_inner())
                .await?;
            Ok(Response::new(reply))
        })
        .await
    }

    async fn pod_exec(
        &self,
        request: Request<tonic::Streaming<ExecInput>>,
    ) -> Result<Response<ExecStream>, Status> {
        instrumented("exec", "pods", async move {
            let stream = self
                .nodes
                .exec(&self.registry, request.into_inner())
                .await?;
            Ok(Response::new(stream))
        })
        .await
    }

    async fn create(
        &self,
        request: Request<ObjectRequest>,
    ) -> Result<Response<ObjectReply>, Status> {
        let resource = request.get_ref().resource.clone();
        instrumented("create", &resource, async move {
            let request = request.into_inner();
            let kind = kind(&request.resource)?;
            reply(
                self.registry
                    .create(kind, &request.namespace, &request.object, request.dry_run)
                    .await,
            )
        })
        .await
    }

    async fn bind(&self, request: Request<ObjectRequest>) -> Result<Response<ObjectReply>, Status> {
        instrumented("bind", "pods", async move {
            let request = request.into_inner();
            if request.resource != "pods" && !request.resource.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "{} has no binding subresource",
                    request.resource
                ))
                .to_status());
            }
            self.registry
                .bind(&request.namespace, &request.object, request.dry_run)
                .await
                .map_err(|e| e.to_status())?;
            // Kubernetes answers a binding with a Status, not the pod: the
            // scheduler has no use for it, and encoding and decoding it
            // for every binding showed in the scheduler's profile.
            Ok(Response::new(ObjectReply {
                object: br#"{"apiVersion":"v1","kind":"Status","status":"Success","code":201}"#
                    .to_vec(),
                warnings: Vec::new(),
            }))
        })
        .await
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<ObjectReply>, Status> {
        let resource = request.get_ref().resource.clone();
        instrumented("get", &resource, async move {
            let request = request.into_inner();
            let kind = kind(&request.resource)?;
            Self::object_reply(
                self.registry
                    .get(kind, &request.namespace, &request.name)
                    .await,
            )
        })
        .await
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let resource = request.get_ref().resource.clone();
        instrumented("list", &resource, async move {
            let request = request.into_inner();
            let kind = kind(&request.resource)?;
            let filter = Filter::parse(&request.label_selector, &request.field_selector)
                .map_err(|e| e.to_status())?;
            let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
            let (items, revision, continue_token) = self
                .registry
                .list(
                    kind,
                    &request.namespace,
                    &filter,
                    limit,
                    &request.continue_token,
                )
                .await
                .map_err(|e| e.to_status())?;
            Ok(Response::new(ListReply {
                items: items.iter().map(json).collect::<Result<_, _>>()?,
                resource_version: revision.to_string(),
                continue_token,
            }))
        })
        .await
    }

    async fn update(
        &self,
        request: Request<ObjectRequest>,
    ) -> Result<Response<ObjectReply>, Status> {
        let resource = request.get_ref().resource.clone();
        instrumented("update", &resource, async move {
            self.replace(request.into_inner(), UpdateKind::Object).await
        })
        .await
    }

    async fn update_status(
        &self,
        request: Request<ObjectRequest>,
    ) -> Result<Response<ObjectReply>, Status> {
        let resource = request.get_ref().resource.clone();
        instrumented("update_status", &resource, async move {
            self.replace(request.into_inner(), UpdateKind::Status).await
        })
        .await
    }

    async fn patch(&self, request: Request<PatchRequest>) -> Result<Response<ObjectReply>, Status> {
        let resource = request.get_ref().resource.clone();
        instrumented("patch", &resource, async move {
            let request = request.into_inner();
            let kind = kind(&request.resource)?;
            let update = if request.status {
                UpdateKind::Status
            } else {
                UpdateKind::Object
            };
            reply(
                self.registry
                    .patch(
                        kind,
                        &request.namespace,
                        &request.name,
                        &request.merge_patch,
                        request.dry_run,
                        update,
                    )
                    .await,
            )
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<ObjectReply>, Status> {
        let resource = request.get_ref().resource.clone();
        instrumented("delete", &resource, async move {
            let request = request.into_inner();
            let kind = kind(&request.resource)?;
            let options = DeleteOptions {
                resource_version: parse_revision(&request.resource_version)?,
                uid: Some(request.uid).filter(|uid| !uid.is_empty()),
                grace_period_seconds: request.grace_period_seconds.filter(|s| *s >= 0),
                propagation_policy: request.propagation_policy,
                dry_run: request.dry_run,
            };
            Self::object_reply(
                self.registry
                    .delete(kind, &request.namespace, &request.name, &options)
                    .await,
            )
        })
        .await
    }

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let resource = request.get_ref().resource.clone();
        instrumented("watch", &resource, async move {
            let request = request.into_inner();
            let kind = kind(&request.resource)?;
            let filter = Filter::parse(&request.label_selector, &request.field_selector)
                .map_err(|e| e.to_status())?;
            let namespace = Some(request.namespace.as_str()).filter(|n| !n.is_empty());
            // No revision: the current objects first, as ADDED, then changes
            // after the revision they were listed at.
            let (initial, from) = match parse_revision(&request.resource_version)? {
                Some(revision) => (Vec::new(), revision),
                None => {
                    let (items, revision, _) = self
                        .registry
                        .list(kind, &request.namespace, &filter, 0, "")
                        .await
                        .map_err(|e| e.to_status())?;
                    (items, revision)
                }
            };
            let prefix = kind_prefix(kind, namespace);
            let mut watcher = self
                .registry
                .store
                .watch(prefix.as_bytes(), from + 1)
                .map_err(|e| e.to_status())?;
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchEvent, Status>>(64);
            let bookmarks = request.allow_bookmarks;
            let open = crate::metrics::global().watch_opened(kind.plural());
            tokio::spawn(async move {
                let _open = open;
                for object in &initial {
                    let event = json(object).map(|object| WatchEvent {
                        r#type: "ADDED".into(),
                        object,
                    });
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                loop {
                    let batch = if bookmarks {
                        match tokio::time::timeout(BOOKMARK_EVERY, watcher.next_batch()).await {
                            Ok(batch) => batch,
                            Err(_) => {
                                let bookmark = serde_json::json!({
                                    "kind": kind.name(),
                                    "apiVersion": kind.api_version(),
                                    "metadata": {"resourceVersion": watcher.position().to_string()},
                                });
                                let event = WatchEvent {
                                    r#type: "BOOKMARK".into(),
                                    object: bookmark.to_string().into_bytes(),
                                };
                                if tx.send(Ok(event)).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                        }
                    } else {
                        watcher.next_batch().await
                    };
                    let events = match batch {
                        Ok(events) if events.is_empty() => return, // replica stopping
                        Ok(events) => events,
                        Err(crate::store::StoreError::Compacted {
                            requested,
                            compacted,
                        }) => {
                            let gone = ApiError::Gone(format!(
                                "too old resource version: {} ({compacted})",
                                requested.saturating_sub(1)
                            ));
                            let _ = tx.send(Err(gone.to_status())).await;
                            return;
                        }
                        Err(other) => {
                            let _ = tx.send(Err(Status::internal(other.to_string()))).await;
                            return;
                        }
                    };
                    for event in &events {
                        match watch_event(&filter, event) {
                            Ok(None) => {}
                            Ok(Some(event)) => {
                                if tx.send(Ok(event)).await.is_err() {
                                    return;
                                }
                            }
                            Err(status) => {
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        }
                    }
                }
            });
            let stream: WatchStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(Response::new(stream))
        })
        .await
    }
}

/// A store event as the watcher under `filter` sees it: an object
/// entering the selection is ADDED, leaving it DELETED. Objects are parsed
/// only when the filter selects something (most watchers take a whole
/// kind) and are served as stored, with their resourceVersion.
fn watch_event(filter: &Filter, event: &Event) -> Result<Option<WatchEvent>, Status> {
    let selected = |kv: &crate::store::types::KeyValue| -> Result<bool, Status> {
        if filter.selects_all() {
            return Ok(true);
        }
        let value =
            serde_json::from_slice(&kv.value).map_err(|e| Status::internal(e.to_string()))?;
        Ok(filter.matches(&value))
    };
    let was = match &event.prev_kv {
        Some(prev) => selected(prev)?,
        None => false,
    };
    let (event_type, kv, revision) = match event.kind {
        EventKind::Delete => {
            let Some(prev) = &event.prev_kv else {
                return Ok(None);
            };
            if !was {
                return Ok(None);
            }
            // The last state, at the revision that deleted it.
            ("DELETED", prev, event.kv.mod_revision)
        }
        EventKind::Put => {
            let is = selected(&event.kv)?;
            let event_type = match (was, is) {
                (false, true) => "ADDED",
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, false) => return Ok(None),
            };
            (event_type, &event.kv, event.kv.mod_revision)
        }
    };
    Ok(Some(WatchEvent {
        r#type: event_type.into(),
        object: served_json(kv, revision).map_err(|e| e.to_status())?,
    }))
}
