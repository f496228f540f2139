//! The API's front door: TLS only, callers authenticated by a client
//! certificate from the cluster CA or a bearer token from the token file;
//! everyone else refused with a precise status and nothing written.

mod common;

use std::time::Duration;

use orch_core::api::proto::GetRequest;
use orch_core::api::proto::api_client::ApiClient as RawClient;
use orch_core::api::{ApiClient, ApiError, ListOptions};
use orch_core::object::Kind;

async fn replica_with_tokens(dir: &std::path::Path) -> common::Replica {
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, "s3cret-token,alice,1000\n").expect("token file");
    let mut replica = common::Replica::new(1, dir.join("replica-1"));
    replica.start(&["--init", "--token-file", &tokens.to_string_lossy()]);
    replica
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authenticated_tls_callers_get_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let replica = replica_with_tokens(dir.path()).await;
    let servers = vec![replica.api_addr.clone()];
    let admin = replica.api_config(&servers);

    // The admin's client certificate works.
    let mut client = ApiClient::new(&admin, Duration::from_secs(20)).expect("client");
    for _ in 0..100 {
        if client.get(Kind::Namespace, None, "default").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .get(Kind::Namespace, None, "default")
        .await
        .expect("the admin certificate authenticates");

    // TLS with the CA but no credentials: Unauthenticated, naming why.
    let mut anonymous_config = admin.clone();
    anonymous_config.client_certificate = None;
    anonymous_config.client_key = None;
    let mut anonymous = ApiClient::new(&anonymous_config, Duration::from_secs(5)).expect("c");
    match anonymous.get(Kind::Namespace, None, "default").await {
        Err(ApiError::Unauthenticated(message)) => {
            assert!(
                message.contains("no client certificate and no bearer token"),
                "{message}"
            )
        }
        other => panic!("anonymous call: {other:?}"),
    }

    // A wrong token: Unauthenticated; the right one: in.
    let mut wrong = anonymous_config.clone();
    wrong.token = Some("guess".into());
    let mut wrong = ApiClient::new(&wrong, Duration::from_secs(5)).expect("c");
    match wrong.list(Kind::Pod, None, &ListOptions::default()).await {
        Err(ApiError::Unauthenticated(message)) => assert_eq!(message, "invalid bearer token"),
        other => panic!("bad token: {other:?}"),
    }
    let mut right = anonymous_config.clone();
    right.token = Some("s3cret-token".into());
    let mut right = ApiClient::new(&right, Duration::from_secs(5)).expect("c");
    right
        .list(Kind::Pod, None, &ListOptions::default())
        .await
        .expect("the token from the token file authenticates");

    // A client that does not trust the cluster CA never gets to talk.
    let other = tempfile::tempdir().expect("temp dir");
    let stranger = orch_control::pki::Pki::new(other.path());
    stranger.create_ca().expect("another CA");
    let mut untrusting = admin.clone();
    untrusting.certificate_authority =
        std::fs::read_to_string(stranger.path(orch_control::pki::CA_CERT)).expect("ca");
    let mut untrusting = ApiClient::new(&untrusting, Duration::from_secs(3)).expect("c");
    match untrusting.get(Kind::Namespace, None, "default").await {
        Err(ApiError::Unavailable(_)) => {}
        other => panic!("a client distrusting the server's CA: {other:?}"),
    }

    // Plain text to the TLS port: refused before any request is read.
    let mut plain = RawClient::connect(format!("http://{}", replica.api_addr))
        .await
        .expect("a TCP connection opens");
    let refused = plain
        .get(GetRequest {
            resource: "namespaces".into(),
            namespace: String::new(),
            name: "default".into(),
        })
        .await
        .expect_err("plain text must be refused");
    // The TLS server closes the connection: the client sees it as
    // unavailable, cancelled or broken, never as an answer.
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cannot_join_without_the_cluster_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = common::Replica::new(1, dir.path().join("replica-1"));
    first.start(&["--init"]);
    let second = dir.path().join("replica-2");
    let error = common::refused(&[
        "--data-dir",
        &second.to_string_lossy(),
        "--node-id",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--join",
        &first.addr,
    ]);
    assert!(
        error.contains(
            "no cluster CA (ca.crt and ca.key); copy them from an existing replica's pki directory"
        ),
        "{error}"
    );
    assert!(common::dir_contents(&second).is_empty(), "nothing written");
}

/// The replication port (Raft, forwarded writes, joins, snapshots) takes
/// mutual TLS with the cluster CA only: no plain text, no certificate-less
/// TLS, no certificate from another CA, and a token config cannot reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_port_takes_only_cluster_certificates() {
    use orch_control::store::raft::client::replica_status;
    use orch_control::store::raft::peer_tls::PeerTls;
    use orch_control::store::raft::transport::proto::membership_client::MembershipClient;
    use orch_control::store::raft::transport::proto::raft_transport_client::RaftTransportClient;
    use orch_control::store::raft::transport::proto::{RaftMessage, StatusRequest};

    let dir = tempfile::tempdir().expect("temp dir");
    let replica = replica_with_tokens(dir.path()).await;
    let addr = replica.addr.clone();
    let admin = replica.api_config(std::slice::from_ref(&replica.api_addr));

    // The admin certificate (same CA) is let in.
    let status = replica_status(&addr, &common::peer_tls(&addr))
        .await
        .expect("the cluster's certificate is accepted");
    assert_eq!(status.node_id, 1);

    // Plain text: no answer.
    let mut plain = MembershipClient::connect(format!("http://{addr}"))
        .await
        .expect("a TCP connection opens");
    let refused = plain
        .status(StatusRequest {})
        .await
        .expect_err("plain text must be refused");
    assert_ne!(refused.code(), tonic::Code::Ok);

    // TLS that trusts the server but presents no certificate: refused.
    let anonymous = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(&admin.certificate_authority),
        ))
        .expect("tls");
    let refused = match anonymous.connect().await {
        Ok(channel) => MembershipClient::new(channel)
            .status(StatusRequest {})
            .await
            .expect_err("a caller without a certificate must be refused"),
        Err(_) => tonic::Status::unavailable("refused at the handshake"),
    };
    assert_ne!(refused.code(), tonic::Code::Ok);

    // A certificate signed by another CA: refused.
    let foreign = orch_control::pki::Pki::new(&dir.path().join("foreign"));
    foreign.create_ca().expect("foreign CA");
    let foreign_config = orch_core::api::config::ClientConfig::load(
        &foreign
            .write_admin_config(&["127.0.0.1:1".into()])
            .expect("foreign admin config"),
    )
    .expect("load");
    let impostor = PeerTls::new(
        &admin.certificate_authority,
        foreign_config.client_certificate.as_deref().expect("cert"),
        foreign_config.client_key.as_deref().expect("key"),
    );
    let refused = replica_status(&addr, &impostor)
        .await
        .expect_err("a certificate of another CA must be refused");
    assert_ne!(refused.code(), tonic::Code::Ok);

    // The cluster CA's certificate of a node agent or a controller: the
    // CA also signs those, so the port checks the organization.
    let cluster_pki = orch_control::pki::Pki::new(&replica.dir);
    let node_config = cluster_pki
        .component_config("system:node:node-1", Some("system:nodes"), &[])
        .expect("a node certificate");
    let node = PeerTls::from_client_config(&node_config).expect("node tls");
    let refused = replica_status(&addr, &node)
        .await
        .expect_err("a node's certificate must not reach the store's port");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("organization system:nodes")
            && refused.message().contains("Membership"),
        "{refused:?}"
    );
    let mut node_store =
        orch_control::store::raft::transport::proto::store_client::StoreClient::new(
            node.endpoint(&addr)
                .expect("endpoint")
                .connect()
                .await
                .expect("connect"),
        );
    let refused = node_store
        .write(RaftMessage { data: Vec::new() })
        .await
        .expect_err("a node may not write to the store");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Raft's own RPCs take replicas only: the admin is turned away before
    // the message is even read, a replica's certificate gets as far as the
    // (here missing) cluster id check.
    let append = |tls: PeerTls| {
        let addr = addr.clone();
        async move {
            RaftTransportClient::new(
                tls.endpoint(&addr)
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect"),
            )
            .append_entries(RaftMessage { data: Vec::new() })
            .await
            .expect_err("an empty append is refused either way")
        }
    };
    let refused = append(common::peer_tls(&addr)).await;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("system:masters"), "{refused:?}");
    let refused = append(cluster_pki.peer_tls().expect("the replica's peer tls")).await;
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("cluster id mismatch"),
        "{refused:?}"
    );

    // A token-only config has nothing to present there.
    let mut token_only = admin.clone();
    token_only.client_certificate = None;
    token_only.client_key = None;
    token_only.token = Some("s3cret-token".into());
    let error = PeerTls::from_client_config(&token_only).expect_err("no certificate");
    assert!(
        error.to_string().contains("client certificates only"),
        "{error}"
    );
}
