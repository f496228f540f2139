//! Snapshot files: a restored store equals its source; corrupt, truncated or
//! foreign files are refused and overwrite nothing.

use orch_control::store::MvccStore;
use orch_control::store::snapshot::SnapshotError;
use orch_control::store::types::{Command, Op, Request, RequestId, Txn};

fn filled_store(dir: &std::path::Path) -> MvccStore {
    let store = MvccStore::open(&dir.join("source.redb")).expect("open");
    let mut requests = vec![Request {
        id: RequestId(1),
        command: Command::LeaseGrant {
            id: 3,
            ttl_seconds: 30,
        },
    }];
    for i in 0..200u32 {
        requests.push(Request {
            id: RequestId(100 + u128::from(i)),
            command: Command::Txn(Txn {
                success: vec![Op::Put {
                    key: format!("/registry/configmaps/default/cm-{i}").into_bytes(),
                    value: vec![i as u8; 300],
                    lease: (i % 10 == 0).then_some(3),
                }],
                ..Txn::default()
            }),
        });
    }
    store.apply(&requests, Some(b"raft-state")).expect("apply");
    store
}

fn dump(store: &MvccStore) -> (u64, Vec<orch_control::store::types::KeyValue>, usize, usize) {
    (
        store.revision().expect("revision"),
        store.range(b"", None, 0).expect("range").kvs,
        store.events_since(b"", 0).expect("events").len(),
        store.leases().expect("leases").len(),
    )
}

#[test]
fn restored_snapshot_equals_source() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = filled_store(dir.path());
    let snapshot = dir.path().join("backup.snap");
    let raft_state = source.save_snapshot(&snapshot).expect("save");
    assert_eq!(raft_state.as_deref(), Some(&b"raft-state"[..]));
    let restored =
        MvccStore::restore_snapshot(&snapshot, &dir.path().join("restored.redb")).expect("restore");
    assert_eq!(dump(&restored), dump(&source));
    assert_eq!(
        restored.raft_state().expect("raft state"),
        Some(b"raft-state".to_vec())
    );
    // De-duplication records travel too: a retry is still answered, not re-applied.
    let retry = Request {
        id: RequestId(150),
        command: Command::Txn(Txn {
            success: vec![Op::Delete {
                key: b"/registry/configmaps/default/cm-0".to_vec(),
            }],
            ..Txn::default()
        }),
    };
    restored.apply(&[retry], None).expect("apply");
    assert_eq!(restored.revision().expect("revision"), 200);
}

#[test]
fn damaged_snapshots_are_refused_and_overwrite_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = filled_store(dir.path());
    let snapshot = dir.path().join("backup.snap");
    source.save_snapshot(&snapshot).expect("save");
    let good = std::fs::read(&snapshot).expect("read snapshot");

    // An existing store at the target must survive every failed restore.
    let target = dir.path().join("target.redb");
    drop(MvccStore::open(&target).expect("create target"));
    let before = std::fs::read(&target).expect("read target");

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let truncated = good[..good.len() - 100].to_vec();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("flipped.snap", flipped, "checksum mismatch"),
        ("truncated.snap", truncated, ""),
        (
            "foreign.snap",
            b"SQLite format 3\0 and then some more bytes of a different file".to_vec(),
            "not an orch snapshot (bad magic)",
        ),
        ("empty.snap", Vec::new(), "not an orch snapshot (too short)"),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).expect("write case");
        let error = match MvccStore::restore_snapshot(&path, &target) {
            Ok(_) => panic!("{name}: restored a damaged snapshot"),
            Err(error) => error,
        };
        let text = error.to_string();
        assert!(
            text.contains(name),
            "{name}: error does not name the file: {text}"
        );
        assert!(
            text.contains(expected),
            "{name}: `{expected}` not in `{text}`"
        );
        if name == "flipped.snap" {
            assert!(matches!(error, SnapshotError::Checksum { .. }));
        }
        assert_eq!(
            std::fs::read(&target).expect("read target"),
            before,
            "{name}: target changed"
        );
        assert!(
            !target.with_extension("restoring").exists(),
            "{name}: partial file left"
        );
    }
}
