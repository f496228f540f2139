//! The store's state machine on a real redb file: revisions, compare-and-swap,
//! ranges, history replay, compaction, leases, de-duplication, durability and
//! refusal of corrupt files.

use std::collections::BTreeMap;

use orch_control::store::types::{
    Command, Compare, CompareOp, Event, EventKind, MAX_VALUE_BYTES, Op, Outcome, Request,
    RequestId, Response, Txn,
};
use orch_control::store::{MvccStore, StoreError};
use proptest::prelude::*;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: MvccStore,
    next_id: u128,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let store = MvccStore::open(&path).expect("open store");
        Self {
            _dir: dir,
            path,
            store,
            next_id: 1,
        }
    }

    fn apply(&mut self, command: Command) -> Response {
        let request = self.request(command);
        self.apply_request(&request)
    }

    /// `command` with a new id.
    fn request(&mut self, command: Command) -> Request {
        self.next_id += 1;
        Request {
            id: RequestId(self.next_id),
            command,
        }
    }

    fn apply_request(&self, request: &Request) -> Response {
        self.store
            .apply(std::slice::from_ref(request), None)
            .expect("apply")
            .pop()
            .expect("one response")
    }

    fn txn(&mut self, compares: Vec<Compare>, success: Vec<Op>) -> Response {
        self.apply(Command::Txn(Txn {
            compares,
            success,
            failure: Vec::new(),
        }))
    }

    fn put(&mut self, key: &str, value: &str) -> Response {
        self.txn(Vec::new(), vec![put(key, value)])
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        lease: None,
    }
}

fn delete(key: &str) -> Op {
    Op::Delete { key: key.into() }
}

fn mod_rev(key: &str, op: CompareOp, revision: u64) -> Compare {
    Compare {
        key: key.into(),
        op,
        mod_revision: revision,
    }
}

fn rejected(response: &Response) -> Option<&str> {
    match &response.outcome {
        Outcome::Rejected { reason } => Some(reason),
        _ => None,
    }
}

#[test]
fn revisions_and_key_versions_follow_etcd() {
    let mut f = Fixture::new();
    assert_eq!(f.store.revision().expect("revision"), 0);
    assert_eq!(f.put("/registry/pods/default/a", "1").revision, 1);
    assert_eq!(f.put("/registry/pods/default/a", "2").revision, 2);
    let a = f
        .store
        .get(b"/registry/pods/default/a")
        .expect("get")
        .expect("exists");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 2, 2));
    assert_eq!(a.value, b"2");

    // Several writes in one transaction share one revision.
    let r = f.txn(
        Vec::new(),
        vec![
            put("/x/1", "a"),
            put("/x/2", "b"),
            delete("/registry/pods/default/a"),
        ],
    );
    assert_eq!(r.revision, 3);
    for key in ["/x/1", "/x/2"] {
        assert_eq!(
            f.store
                .get(key.as_bytes())
                .expect("get")
                .expect("exists")
                .mod_revision,
            3
        );
    }
    assert_eq!(f.store.get(b"/registry/pods/default/a").expect("get"), None);

    // Deleting nothing changes nothing and takes no revision.
    assert_eq!(f.txn(Vec::new(), vec![delete("/nothing")]).revision, 3);

    // Re-created keys start a new life.
    assert_eq!(f.put("/registry/pods/default/a", "again").revision, 4);
    let a = f
        .store
        .get(b"/registry/pods/default/a")
        .expect("get")
        .expect("exists");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (4, 4, 1));
}

#[test]
fn compare_and_swap_on_mod_revision() {
    let mut f = Fixture::new();
    // Create only if absent.
    let created = f.txn(
        vec![mod_rev("/k", CompareOp::Equal, 0)],
        vec![put("/k", "v1")],
    );
    assert!(matches!(
        created.outcome,
        Outcome::Txn {
            succeeded: true,
            ..
        }
    ));
    let again = f.txn(
        vec![mod_rev("/k", CompareOp::Equal, 0)],
        vec![put("/k", "other")],
    );
    assert!(matches!(
        again.outcome,
        Outcome::Txn {
            succeeded: false,
            ..
        }
    ));
    assert_eq!(again.revision, 1, "a failed compare writes nothing");

    // Update with a stale resourceVersion fails, with the current one succeeds.
    let stale = f.txn(
        vec![mod_rev("/k", CompareOp::Equal, 7)],
        vec![put("/k", "v2")],
    );
    assert!(matches!(
        stale.outcome,
        Outcome::Txn {
            succeeded: false,
            ..
        }
    ));
    let fresh = f.txn(
        vec![mod_rev("/k", CompareOp::Equal, 1)],
        vec![put("/k", "v2")],
    );
    match &fresh.outcome {
        Outcome::Txn {
            succeeded: true,
            prev_kvs,
        } => assert_eq!(prev_kvs[0][0].value, b"v1"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        f.store.get(b"/k").expect("get").expect("exists").value,
        b"v2"
    );

    // The failure branch runs when a compare fails.
    let branch = f.apply(Command::Txn(Txn {
        compares: vec![mod_rev("/k", CompareOp::Less, 1)],
        success: vec![put("/k", "never")],
        failure: vec![put("/fallback", "yes")],
    }));
    assert!(matches!(
        branch.outcome,
        Outcome::Txn {
            succeeded: false,
            ..
        }
    ));
    assert!(f.store.get(b"/fallback").expect("get").is_some());
}

#[test]
fn refused_transactions_write_nothing() {
    let mut f = Fixture::new();
    f.put("/a", "1");
    let duplicate = f.txn(Vec::new(), vec![put("/b", "1"), put("/b", "2")]);
    assert_eq!(
        rejected(&duplicate),
        Some("duplicate key given in txn request: /b")
    );
    let big = "x".repeat(MAX_VALUE_BYTES + 1);
    let oversized = f.txn(Vec::new(), vec![put("/c", "1"), put("/d", &big)]);
    assert!(rejected(&oversized).is_some_and(|r| r.contains("exceeds the limit")));
    let no_lease = f.txn(
        Vec::new(),
        vec![Op::Put {
            key: b"/e".to_vec(),
            value: b"1".to_vec(),
            lease: Some(42),
        }],
    );
    assert_eq!(rejected(&no_lease), Some("lease 42 not found"));
    assert_eq!(f.store.revision().expect("revision"), 1);
    for key in ["/b", "/c", "/d", "/e"] {
        assert_eq!(f.store.get(key.as_bytes()).expect("get"), None, "{key}");
    }
}

#[test]
fn range_pages_through_a_prefix() {
    let mut f = Fixture::new();
    for name in ["a", "b", "c", "d", "e"] {
        f.put(&format!("/registry/pods/default/{name}"), name);
    }
    f.put("/registry/pods/other/z", "z");
    f.put("/registry/services/default/a", "s");
    let prefix = b"/registry/pods/default/";
    let mut seen = Vec::new();
    let mut start: Option<Vec<u8>> = None;
    loop {
        let page = f.store.range(prefix, start.as_deref(), 2).expect("range");
        assert_eq!(page.revision, 7);
        seen.extend(
            page.kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        );
        if !page.more {
            break;
        }
        start = page.next_key;
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    assert_eq!(
        f.store
            .range(b"/registry/pods/", None, 0)
            .expect("range")
            .kvs
            .len(),
        6
    );
}

#[test]
fn history_replays_and_compaction_refuses_older_watches() {
    let mut f = Fixture::new();
    f.put("/w/a", "1");
    f.put("/other", "x");
    f.put("/w/a", "2");
    f.txn(Vec::new(), vec![delete("/w/a")]);
    let events = f.store.events_since(b"/w/", 1).expect("events");
    let summary: Vec<(EventKind, u64, Option<Vec<u8>>)> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.mod_revision,
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (EventKind::Put, 1, None),
            (EventKind::Put, 3, Some(b"1".to_vec())),
            (EventKind::Delete, 4, Some(b"2".to_vec())),
        ]
    );
    assert_eq!(f.store.events_since(b"/w/", 4).expect("events").len(), 1);

    assert!(
        rejected(&f.apply(Command::Compact { revision: 9 }))
            .is_some_and(|r| r.contains("future revision"))
    );
    assert_eq!(
        f.apply(Command::Compact { revision: 3 }).outcome,
        Outcome::Compacted
    );
    assert_eq!(f.store.compact_revision().expect("compact revision"), 3);
    match f.store.events_since(b"/w/", 2) {
        Err(StoreError::Compacted {
            requested: 2,
            compacted: 3,
        }) => {}
        other => panic!("expected a compacted error, got {other:?}"),
    }
    assert_eq!(f.store.events_since(b"/w/", 3).expect("events").len(), 2);
    assert!(
        rejected(&f.apply(Command::Compact { revision: 2 }))
            .is_some_and(|r| r.contains("has been compacted"))
    );
}

#[test]
fn revoking_a_lease_deletes_its_keys() {
    let mut f = Fixture::new();
    assert_eq!(
        f.apply(Command::LeaseGrant {
            id: 7,
            ttl_seconds: 10
        })
        .outcome,
        Outcome::LeaseGranted
    );
    assert!(
        rejected(&f.apply(Command::LeaseGrant {
            id: 7,
            ttl_seconds: 10
        }))
        .is_some()
    );
    assert!(
        rejected(&f.apply(Command::LeaseGrant {
            id: 8,
            ttl_seconds: 0
        }))
        .is_some()
    );
    let with_lease = |key: &str| Op::Put {
        key: key.into(),
        value: b"up".to_vec(),
        lease: Some(7),
    };
    f.txn(
        Vec::new(),
        vec![
            with_lease("/leases/node-1"),
            with_lease("/leases/node-2"),
            put("/kept", "1"),
        ],
    );
    // Re-putting a key without the lease detaches it.
    f.txn(Vec::new(), vec![put("/leases/node-2", "detached")]);
    assert_eq!(f.store.leases().expect("leases").len(), 1);
    let revoked = f.apply(Command::LeaseRevoke { id: 7 });
    assert_eq!(revoked.outcome, Outcome::LeaseRevoked { deleted: 1 });
    assert_eq!(revoked.revision, 3);
    assert_eq!(f.store.get(b"/leases/node-1").expect("get"), None);
    assert!(f.store.get(b"/leases/node-2").expect("get").is_some());
    assert!(f.store.get(b"/kept").expect("get").is_some());
    assert!(f.store.leases().expect("leases").is_empty());
    assert!(rejected(&f.apply(Command::LeaseRevoke { id: 7 })).is_some());
}

#[test]
fn retried_requests_are_applied_once() {
    let f = Fixture::new();
    let request = Request {
        id: RequestId(99),
        command: Command::Txn(Txn {
            success: vec![put("/counter", "1")],
            ..Txn::default()
        }),
    };
    let first = f
        .store
        .apply(std::slice::from_ref(&request), None)
        .expect("apply");
    // Same id again, also twice inside one batch: the recorded answer.
    let retried = f
        .store
        .apply(&[request.clone(), request], None)
        .expect("apply");
    assert_eq!(retried, [first[0].clone(), first[0].clone()]);
    assert_eq!(f.store.revision().expect("revision"), 1);
    assert_eq!(
        f.store
            .get(b"/counter")
            .expect("get")
            .expect("exists")
            .version,
        1
    );
}

#[test]
fn a_batch_takes_one_revision_per_change_and_records_the_last() {
    let mut f = Fixture::new();
    f.put("/seen", "0");
    let request = |id: u128, ops: Vec<Op>| Request {
        id: RequestId(id),
        command: Command::Txn(Txn {
            success: ops,
            ..Txn::default()
        }),
    };
    let responses = f
        .store
        .apply(
            &[
                request(1001, vec![put("/a", "1")]),
                // Changes nothing: no revision of its own.
                request(1002, vec![delete("/missing")]),
                // Refused: no revision either.
                request(1003, vec![put("/b", "1"), put("/b", "2")]),
                request(1004, vec![put("/a", "2"), put("/c", "1")]),
                request(1005, vec![delete("/seen")]),
                // A retry inside the batch: the first answer again.
                request(1001, vec![put("/a", "1")]),
                // Compacting to the revision just made is not "future".
                Request {
                    id: RequestId(1006),
                    command: Command::Compact { revision: 4 },
                },
            ],
            None,
        )
        .expect("apply");
    let revisions: Vec<u64> = responses.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, [2, 2, 2, 3, 4, 2, 4]);
    assert_eq!(responses[5], responses[0]);
    assert_eq!(
        responses[6].outcome,
        Outcome::Compacted,
        "{:?}",
        responses[6]
    );
    assert_eq!(f.store.compact_revision().expect("compact revision"), 4);
    assert!(rejected(&responses[2]).is_some(), "{:?}", responses[2]);
    assert_eq!(f.store.revision().expect("revision"), 4);
    let a = f.store.get(b"/a").expect("get").expect("exists");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    // The next batch goes on from the recorded revision, also after a
    // reopen.
    assert_eq!(f.put("/d", "1").revision, 5);
    let Fixture { path, store, .. } = f;
    drop(store);
    let reopened = MvccStore::open(&path).expect("reopen");
    assert_eq!(reopened.revision().expect("revision"), 5);
    let next = reopened
        .apply(&[request(2001, vec![put("/e", "1")])], None)
        .expect("apply");
    assert_eq!(next[0].revision, 6);
}

#[test]
fn state_survives_reopening_and_corrupt_files_are_refused() {
    let mut f = Fixture::new();
    f.put("/a", "1");
    f.store
        .apply(
            &[Request {
                id: RequestId(5000),
                command: Command::Txn(Txn {
                    success: vec![put("/b", "2")],
                    ..Txn::default()
                }),
            }],
            Some(b"applied=7"),
        )
        .expect("apply");
    let Fixture {
        _dir: dir,
        path,
        store,
        ..
    } = f;
    drop(store);
    let reopened = MvccStore::open(&path).expect("reopen");
    assert_eq!(reopened.revision().expect("revision"), 2);
    assert_eq!(
        reopened.raft_state().expect("raft state"),
        Some(b"applied=7".to_vec())
    );
    assert_eq!(
        reopened.get(b"/b").expect("get").expect("exists").value,
        b"2"
    );
    drop(reopened);

    let garbage = dir.path().join("garbage.redb");
    let bytes: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&garbage, &bytes).expect("write garbage");
    let error = MvccStore::open(&garbage)
        .err()
        .expect("garbage must be refused");
    assert!(error.to_string().contains("garbage.redb"), "{error}");
    assert_eq!(
        std::fs::read(&garbage).expect("read back"),
        bytes,
        "refused file was modified"
    );

    // A state file of the layout before rows (a key table and a history).
    let former = dir.path().join("former.redb");
    {
        let db = redb::Database::create(&former).expect("create");
        let txn = db.begin_write().expect("write");
        txn.open_table(redb::TableDefinition::<&[u8], &[u8]>::new("kv"))
            .expect("kv table")
            .insert(&b"/registry/pods/default/a"[..], &b"{}"[..])
            .expect("insert");
        txn.commit().expect("commit");
    }
    let bytes = std::fs::read(&former).expect("read");
    let error = MvccStore::open(&former)
        .err()
        .expect("the former layout must be refused");
    assert!(
        error.to_string().contains("former.redb") && error.to_string().contains("layout"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&former).expect("read back"),
        bytes,
        "refused file was modified"
    );
}

/// A random write against a model map.
#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    CasPut(u8, u8, u64),
    DeletePrefix,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..6, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..6).prop_map(Step::Delete),
        2 => (0u8..6, any::<u8>(), 0u64..12).prop_map(|(k, v, r)| Step::CasPut(k, v, r)),
        1 => Just(Step::DeletePrefix),
    ]
}

fn key(k: u8) -> String {
    format!("/p/{}/{k}", k % 2)
}

/// Each key's value and mod revision.
type Model = BTreeMap<String, (Vec<u8>, u64)>;

fn stored(store: &MvccStore) -> Model {
    store
        .range(b"/p/", None, 0)
        .expect("range")
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                (kv.value, kv.mod_revision),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Revisions strictly increase and CAS behaves like the model; every
    /// kept event shows its key as the model had it just before and just
    /// after its revision, across any number of compactions; retries are
    /// answered as first applied (previous values included); and a reopened
    /// store, its key index rebuilt from the rows, holds the same state and
    /// history.
    #[test]
    fn state_matches_model_and_history_replays_it(
        steps in prop::collection::vec(step(), 1..40),
        compactions in prop::collection::btree_map(0usize..40, any::<u64>(), 0..4),
    ) {
        let mut f = Fixture::new();
        let mut model = Model::new();
        // The model after each revision, from revision 0.
        let mut states = vec![Model::new()];
        // Requests applied since the last compaction, to retry.
        let mut applied: Vec<(Request, Response)> = Vec::new();
        let mut last_revision = 0;
        for (i, step) in steps.iter().enumerate() {
            let txn = match step {
                Step::Put(k, v) => Txn { success: vec![put(&key(*k), &v.to_string())], ..Txn::default() },
                Step::Delete(k) => Txn { success: vec![delete(&key(*k))], ..Txn::default() },
                Step::CasPut(k, v, r) => Txn {
                    compares: vec![mod_rev(&key(*k), CompareOp::Equal, *r)],
                    success: vec![put(&key(*k), &v.to_string())],
                    ..Txn::default()
                },
                Step::DeletePrefix => Txn { success: vec![Op::DeletePrefix { prefix: b"/p/1/".to_vec() }], ..Txn::default() },
            };
            let request = f.request(Command::Txn(txn));
            let response = f.apply_request(&request);
            let changed = match step {
                Step::Put(k, v) => { model.insert(key(*k), (v.to_string().into_bytes(), last_revision + 1)); true }
                Step::Delete(k) => model.remove(&key(*k)).is_some(),
                Step::CasPut(k, v, r) => {
                    let current = model.get(&key(*k)).map_or(0, |(_, rev)| *rev);
                    if current == *r { model.insert(key(*k), (v.to_string().into_bytes(), last_revision + 1)); true } else { false }
                }
                Step::DeletePrefix => {
                    let before = model.len();
                    model.retain(|k, _| !k.starts_with("/p/1/"));
                    model.len() != before
                }
            };
            let expected_revision = if changed { last_revision + 1 } else { last_revision };
            prop_assert_eq!(response.revision, expected_revision, "step {} {:?}", i, step);
            if changed {
                states.push(model.clone());
            }
            last_revision = response.revision;
            applied.push((request, response));
            let compacted = f.store.compact_revision().expect("compact revision");
            if let Some(pick) = compactions.get(&i)
                && last_revision > compacted
            {
                // Anywhere in (compacted, current].
                let target = compacted + 1 + pick % (last_revision - compacted);
                prop_assert_eq!(f.apply(Command::Compact { revision: target }).outcome, Outcome::Compacted);
                // Records of requests before the compaction are forgotten.
                applied.retain(|(_, response)| response.revision >= target);
            }
        }
        prop_assert_eq!(&stored(&f.store), &model);

        let from = f.store.compact_revision().expect("compact revision").max(1);
        let events: Vec<Event> = f.store.events_since(b"/p/", from).expect("replay");
        let revisions: Vec<u64> = events.iter().map(|e| e.kv.mod_revision).collect();
        prop_assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "history out of order: {:?}", revisions);
        prop_assert_eq!(revisions.first().copied(), (from <= last_revision).then_some(from));
        prop_assert_eq!(revisions.last().copied(), (from <= last_revision).then_some(last_revision));
        for event in &events {
            let k = String::from_utf8_lossy(&event.kv.key).into_owned();
            let revision = event.kv.mod_revision as usize;
            let before = event.prev_kv.as_ref().map(|kv| (kv.value.clone(), kv.mod_revision));
            prop_assert_eq!(before.as_ref(), states[revision - 1].get(&k), "prev_kv of {} at {}", k, revision);
            let after = match event.kind {
                EventKind::Put => Some((event.kv.value.clone(), event.kv.mod_revision)),
                EventKind::Delete => None,
            };
            prop_assert_eq!(after.as_ref(), states[revision].get(&k), "{} at {}", k, revision);
        }

        for (request, response) in &applied {
            prop_assert_eq!(&f.apply_request(request), response, "retry of {:?}", request);
        }
        prop_assert_eq!(f.store.revision().expect("revision"), last_revision);

        let Fixture { _dir, path, store, .. } = f;
        let compacted = store.compact_revision().expect("compact revision");
        drop(store);
        let reopened = MvccStore::open(&path).expect("reopen");
        prop_assert_eq!(&stored(&reopened), &model);
        prop_assert_eq!(reopened.revision().expect("revision"), last_revision);
        prop_assert_eq!(reopened.compact_revision().expect("compact revision"), compacted);
        prop_assert_eq!(reopened.events_since(b"/p/", from).expect("replay"), events);
    }
}
