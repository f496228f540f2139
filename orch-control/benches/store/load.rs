//! The load: the same operations against orch (its store client, as the
//! API server uses it) and etcd (its v3 gRPC API), one connection per
//! client task, like etcd's own `benchmark put --clients`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use orch_control::store::raft::client::StoreClient;
use orch_control::store::raft::peer_tls::PeerTls;
use orch_control::store::raft::service::RangeQuery;
use orch_control::store::types::{Command, Op, Outcome, Request, RequestId, Txn};

/// One client connection to either system.
pub enum Conn {
    Orch(StoreClient),
    Etcd(Box<etcd_client::KvClient>),
}

/// Which system and where: orch replica addresses or etcd client URLs.
#[derive(Clone)]
pub enum Target {
    Orch(Vec<String>, PeerTls),
    Etcd(Vec<String>, tonic::transport::ClientTlsConfig),
}

impl Target {
    pub async fn connect(&self) -> Result<Conn> {
        Ok(match self {
            Target::Orch(addrs, tls) => {
                Conn::Orch(StoreClient::new(addrs, tls, Duration::from_secs(30))?)
            }
            Target::Etcd(urls, tls) => Conn::Etcd(Box::new(
                crate::clusters::EtcdCluster::connect(urls, tls)
                    .await?
                    .kv_client(),
            )),
        })
    }
}

impl Conn {
    pub async fn put(&mut self, key: String, value: Vec<u8>) -> Result<()> {
        match self {
            Conn::Orch(client) => {
                let request = Request {
                    id: RequestId::unique(),
                    command: Command::Txn(Txn {
                        success: vec![Op::Put {
                            key: key.into_bytes(),
                            value,
                            lease: None,
                        }],
                        ..Txn::default()
                    }),
                };
                let response = client.write(&request).await?;
                if let Outcome::Rejected { reason } = response.outcome {
                    bail!("put refused: {reason}");
                }
            }
            Conn::Etcd(client) => {
                client.put(key, value, None).await?;
            }
        }
        Ok(())
    }

    /// A linearizable read of one key (orch: read index; etcd: its default).
    pub async fn get(&mut self, key: &str) -> Result<()> {
        match self {
            Conn::Orch(client) => {
                let query = RangeQuery {
                    prefix: key.as_bytes().to_vec(),
                    start: None,
                    limit: 1,
                    linearizable: true,
                };
                let found = client.range(&query).await?;
                if found.kvs.is_empty() {
                    bail!("{key} missing");
                }
            }
            Conn::Etcd(client) => {
                let found = client.get(key, None).await?;
                if found.kvs().is_empty() {
                    bail!("{key} missing");
                }
            }
        }
        Ok(())
    }
}

/// What one run measured.
pub struct Run {
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Run {
    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// The median of `values`.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `clients` connections each putting `per_client` values of `value_len`
/// bytes under their own keys (`prefix/<client>/<i>`), all at once.
pub async fn puts(
    target: &Target,
    clients: usize,
    per_client: usize,
    value_len: usize,
    prefix: &str,
) -> Result<Run> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(target.connect().await?);
    }
    let value = vec![b'v'; value_len];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (client, mut conn) in conns.into_iter().enumerate() {
        let value = value.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let key = format!("{prefix}/{client}/{i}");
                let sent = Instant::now();
                conn.put(key, value.clone()).await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(clients * per_client);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Run {
        elapsed: started.elapsed(),
        latencies,
    })
}

/// One client reading one existing key `count` times, linearizably.
pub async fn gets(target: &Target, count: usize) -> Result<Run> {
    let mut conn = target.connect().await?;
    let key = "/registry/bench/get-me".to_string();
    conn.put(key.clone(), vec![b'g'; 256]).await?;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let sent = Instant::now();
        conn.get(&key).await?;
        latencies.push(sent.elapsed());
    }
    Ok(Run {
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Leader failover as a writer sees it: one client puts in a loop; the
/// leader is killed (`kill` returns once SIGKILL is delivered); the result
/// is the time from the kill to the first put acknowledged after it.
pub async fn failover(target: &Target, kill: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let mut conn = target.connect().await?;
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let writer = tokio::spawn(async move {
        for i in 0u64.. {
            let put = conn.put(format!("/registry/bench/failover/{i}"), vec![b'f'; 256]);
            // A put stuck on the dead leader is abandoned and sent again.
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), put).await
                && acks.send(Instant::now()).is_err()
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    // Warm: the writer is reaching the leader steadily.
    for _ in 0..50 {
        tokio::time::timeout(Duration::from_secs(10), acked.recv())
            .await
            .context("writer made no progress before the kill")?;
    }
    kill()?;
    let killed = Instant::now();
    let first = loop {
        let ack = tokio::time::timeout(Duration::from_secs(30), acked.recv())
            .await
            .context("no write acknowledged within 30 s of the kill")?
            .context("writer ended")?;
        if ack > killed {
            break ack;
        }
    };
    writer.abort();
    Ok(first - killed)
}
