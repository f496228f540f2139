//! The calls the API server relays to a node's agent: logs, exec, image
//! imports, and the node's dataplane (its table, its monitor).

use super::{ApiClient, ApiError, Kind, proto};

impl ApiClient {
    /// A container's log (`orchctl logs`), streamed from the pod's node.
    pub async fn pod_logs(
        &mut self,
        request: proto::PodLogsRequest,
    ) -> Result<tonic::Streaming<proto::LogChunk>, ApiError> {
        self.call(request, |mut c, request| async move {
            c.pod_logs(request).await
        })
        .await
    }

    /// Sends an image archive (`docker save` or an OCI layout tarball) to
    /// node `node` through the API server; the names the node now holds.
    /// Like exec, it goes to the first replica that answers a get of the
    /// node, and is not moved once sending.
    pub async fn import_image(
        &mut self,
        node: &str,
        archive: &std::path::Path,
    ) -> Result<Vec<String>, ApiError> {
        use tokio::io::AsyncReadExt as _;
        let mut file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| ApiError::Invalid(format!("{}: {e}", archive.display())))?;
        self.get(Kind::Node, None, node).await?;
        let (chunks, outbound) = tokio::sync::mpsc::channel(4);
        let (node, path) = (node.to_string(), archive.to_path_buf());
        let reader = tokio::spawn(async move {
            let mut first = true;
            loop {
                let mut data = vec![0u8; 1 << 20];
                let read = file
                    .read(&mut data)
                    .await
                    .map_err(|e| ApiError::Invalid(format!("{}: {e}", path.display())))?;
                data.truncate(read);
                let chunk = proto::ImageImportChunk {
                    node: if first { node.clone() } else { String::new() },
                    data,
                    done: read == 0,
                };
                first = false;
                if chunks.send(chunk).await.is_err() || read == 0 {
                    return Ok(());
                }
            }
        });
        let (_, client) = &self.replicas[self.preferred];
        let request = self.request(tokio_stream::wrappers::ReceiverStream::new(outbound));
        let reply = client.clone().import_image(request).await;
        // A file that could not be read is the error, not what followed.
        if let Ok(Err(error)) = reader.await {
            return Err(error);
        }
        Ok(reply
            .map_err(|s| ApiError::from_status(&s))?
            .into_inner()
            .images)
    }

    /// Runs a command in a pod's container (`orchctl exec`): `start`
    /// first, then whatever `input` yields (stdin, its end, terminal
    /// sizes); the output comes back, the exit code last. The session
    /// goes to the first replica that answers (a get of the pod finds
    /// it); a session is not moved once started.
    pub async fn pod_exec(
        &mut self,
        start: proto::ExecStart,
        input: tokio::sync::mpsc::Receiver<proto::ExecInput>,
    ) -> Result<tonic::Streaming<proto::ExecOutput>, ApiError> {
        self.get(Kind::Pod, Some(&start.namespace), &start.name)
            .await?;
        let (_, client) = &self.replicas[self.preferred];
        let first = proto::ExecInput {
            input: Some(proto::exec_input::Input::Start(start)),
        };
        let stream = tokio_stream::StreamExt::chain(
            tokio_stream::once(first),
            tokio_stream::wrappers::ReceiverStream::new(input),
        );
        let request = self.request(stream);
        let reply = client
            .clone()
            .pod_exec(request)
            .await
            .map_err(|s| ApiError::from_status(&s))?;
        Ok(reply.into_inner())
    }

    /// Node `node`'s service table and map usage, from its agent.
    pub async fn node_dataplane(
        &mut self,
        node: &str,
    ) -> Result<proto::NodeDataplaneReply, ApiError> {
        let request = proto::NodeDataplaneRequest {
            node: node.to_string(),
        };
        self.call(request, |mut c, request| async move {
            c.node_dataplane(request).await
        })
        .await
    }

    /// What node `node`'s programs do, as it happens (drops always, traces
    /// unless `drops_only`), for `addresses` (none: all).
    pub async fn node_monitor(
        &mut self,
        request: proto::NodeMonitorRequest,
    ) -> Result<tonic::Streaming<proto::MonitorEvent>, ApiError> {
        self.call(request, |mut c, request| async move {
            c.node_monitor(request).await
        })
        .await
    }
}
