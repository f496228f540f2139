//! Lease expiry, on the leader. Like etcd's lessor: expiry is leader time,
//! not replicated state. Keep-alives refresh a lease on the leader only; an
//! expired lease is revoked through Raft (`LeaseRevoke`), so every replica
//! deletes its keys at the same revision. A new leader starts every lease's
//! clock afresh, so a failover never expires a lease early.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::Raft;

use super::state_machine::SharedStore;
use super::{NodeId, TypeConfig};
use crate::store::types::{Command, LeaseId, Request, RequestId};

/// How often the leader looks for expired leases.
const TICK: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Lessor {
    /// Lease -> (ttl, deadline), kept only while this replica leads.
    deadlines: Mutex<HashMap<LeaseId, (Duration, Instant)>>,
}

impl Lessor {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, (Duration, Instant)>> {
        match self.deadlines.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Refreshes a lease; returns its TTL, or None when this replica does
    /// not know it (not the leader yet, or the lease is gone).
    pub fn keep_alive(&self, id: LeaseId, store: &SharedStore) -> Option<Duration> {
        let mut deadlines = self.lock();
        if let Some(entry) = deadlines.get_mut(&id) {
            entry.1 = Instant::now() + entry.0;
            return Some(entry.0);
        }
        // Granted since the last tick: start tracking it now.
        let lease = store
            .current()
            .leases()
            .ok()?
            .into_iter()
            .find(|l| l.id == id)?;
        let ttl = Duration::from_secs(lease.ttl_seconds.max(1) as u64);
        deadlines.insert(id, (ttl, Instant::now() + ttl));
        Some(ttl)
    }

    /// Tracks the store's leases: new ones start a full TTL, revoked ones
    /// are dropped. Returns the leases past their deadline.
    fn sync(&self, store: &SharedStore, fresh_start: bool) -> Vec<LeaseId> {
        let leases = match store.current().leases() {
            Ok(leases) => leases,
            Err(error) => {
                tracing::warn!(%error, "reading leases");
                return Vec::new();
            }
        };
        let now = Instant::now();
        let mut deadlines = self.lock();
        if fresh_start {
            deadlines.clear();
        }
        let live: HashMap<LeaseId, Duration> = leases
            .iter()
            .map(|l| (l.id, Duration::from_secs(l.ttl_seconds.max(1) as u64)))
            .collect();
        deadlines.retain(|id, _| live.contains_key(id));
        for (id, ttl) in &live {
            deadlines.entry(*id).or_insert((*ttl, now + *ttl));
        }
        deadlines
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Runs while the replica runs: on the leader, revokes expired leases.
pub async fn run(lessor: Arc<Lessor>, raft: Raft<TypeConfig>, id: NodeId, store: SharedStore) {
    let mut leading = false;
    loop {
        tokio::time::sleep(TICK).await;
        let leader = raft.metrics().borrow().current_leader;
        let now_leading = leader == Some(id);
        if !now_leading {
            if leading {
                lessor.lock().clear();
            }
            leading = false;
            continue;
        }
        let expired = lessor.sync(&store, !leading);
        leading = true;
        for lease in expired {
            let request = Request {
                id: RequestId::unique(),
                command: Command::LeaseRevoke { id: lease },
            };
            match raft.client_write(vec![request]).await {
                Ok(_) => {
                    tracing::info!(lease, "lease expired: revoked");
                    lessor.lock().remove(&lease);
                }
                Err(error) => tracing::warn!(lease, %error, "revoking an expired lease"),
            }
        }
    }
}
