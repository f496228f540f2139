//! Automatic compaction, on the leader: keeps the last `retention`
//! revisions of history (what watchers can replay) and forgets the rest,
//! like etcd's `--auto-compaction-mode=revision`. The compaction itself is a
//! Raft command, so every replica forgets the same history at the same
//! point of the log.

use std::time::Duration;

use openraft::Raft;

use super::state_machine::SharedStore;
use super::{NodeId, TypeConfig};
use crate::store::types::{Command, Outcome, Request, RequestId, Revision};

/// How often the leader checks the window.
const TICK: Duration = Duration::from_secs(1);

/// The revision to compact to, if the history has outgrown the window by a
/// tenth of it: compacting in steps keeps compactions (each a Raft entry
/// and a sweep of the rows made since the last one) rare under steady writes.
pub fn compaction_target(
    current: Revision,
    compacted: Revision,
    retention: Revision,
) -> Option<Revision> {
    let target = current.checked_sub(retention)?;
    let step = (retention / 10).max(1);
    (target >= compacted.saturating_add(step)).then_some(target)
}

/// Runs while the replica runs; `retention` 0 turns compaction off.
pub async fn run(raft: Raft<TypeConfig>, id: NodeId, store: SharedStore, retention: Revision) {
    if retention == 0 {
        return;
    }
    loop {
        tokio::time::sleep(TICK).await;
        if raft.metrics().borrow().current_leader != Some(id) {
            continue;
        }
        let store = store.current();
        let (current, compacted) = match (store.revision(), store.compact_revision()) {
            (Ok(current), Ok(compacted)) => (current, compacted),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "reading revisions for compaction");
                continue;
            }
        };
        let Some(target) = compaction_target(current, compacted, retention) else {
            continue;
        };
        let request = Request {
            id: RequestId::unique(),
            command: Command::Compact { revision: target },
        };
        match raft.client_write(vec![request]).await {
            Ok(written) => match written.data.first().map(|r| &r.outcome) {
                Some(Outcome::Compacted) => {
                    tracing::info!(revision = target, retention, "compacted history")
                }
                other => tracing::warn!(?other, revision = target, "compaction refused"),
            },
            Err(error) => tracing::warn!(%error, revision = target, "compacting"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::compaction_target;

    #[test]
    fn compacts_in_steps_once_the_window_is_outgrown() {
        // Not enough history yet.
        assert_eq!(compaction_target(50, 0, 100), None);
        assert_eq!(compaction_target(109, 0, 100), None);
        // A tenth of the window beyond it: compact to current - retention.
        assert_eq!(compaction_target(110, 0, 100), Some(10));
        assert_eq!(compaction_target(119, 10, 100), None);
        assert_eq!(compaction_target(120, 10, 100), Some(20));
        // Tiny windows still advance one revision at a time.
        assert_eq!(compaction_target(5, 3, 1), Some(4));
        assert_eq!(compaction_target(5, 4, 1), None);
    }
}
