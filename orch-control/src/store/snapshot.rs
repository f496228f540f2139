//! Snapshot files of the state machine: a consistent dump of every table,
//! streamed from one redb read transaction to a file and back, with a
//! SHA-256 over the whole file.
//!
//! Format: `ORCHSNAP` | version (u32 LE) | records | end record | sha256.
//! A record is: table tag (u8, never 0) | key length (u32 LE) | key |
//! value length (u32 LE) | value, in redb's own byte encoding of the table's
//! types. The end record is a single 0 byte.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::mvcc::rows::{LEASE_KEYS, LEASES, META, META_BYTES, RAFT_STATE, REQUESTS, REVISIONS};
use super::{MvccStore, StoreError};

const MAGIC: &[u8; 8] = b"ORCHSNAP";
/// 2: rows keyed by revision (1 held a key table and a history).
const VERSION: u32 = 2;
const END: u8 = 0;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not an orch snapshot ({reason})", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{}: checksum mismatch: the file is corrupt or truncated", path.display())]
    Checksum { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}: not empty; refusing to overwrite a replica's data", path.display())]
    NotEmpty { path: PathBuf },
}

/// Writes through to a file while hashing.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads from a file while hashing.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn write_record(out: &mut impl Write, tag: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    out.write_all(&[tag])?;
    for part in [key, value] {
        let len = u32::try_from(part.len()).map_err(std::io::Error::other)?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(part)?;
    }
    Ok(())
}

fn dump<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
    tag: u8,
    out: &mut impl Write,
) -> Result<(), SnapshotError> {
    let table = txn.open_table(table).map_err(StoreError::from)?;
    for item in table.iter().map_err(StoreError::from)? {
        let (key, value) = item.map_err(StoreError::from)?;
        let key = key.value();
        let value = value.value();
        write_record(
            out,
            tag,
            K::as_bytes(&key).as_ref(),
            V::as_bytes(&value).as_ref(),
        )
        .map_err(|source| SnapshotError::Io {
            path: PathBuf::from("<snapshot>"),
            source,
        })?;
    }
    Ok(())
}

fn load<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &WriteTransaction,
    table: TableDefinition<K, V>,
    key: &[u8],
    value: &[u8],
) -> Result<(), StoreError> {
    txn.open_table(table)?
        .insert(K::from_bytes(key), V::from_bytes(value))?;
    Ok(())
}

/// The table tags of the format; adding a table means a new tag here and in
/// `load_record`.
fn dump_all(txn: &ReadTransaction, out: &mut impl Write) -> Result<(), SnapshotError> {
    dump(txn, REVISIONS, 1, out)?;
    dump(txn, META, 2, out)?;
    dump(txn, META_BYTES, 3, out)?;
    dump(txn, LEASES, 4, out)?;
    dump(txn, LEASE_KEYS, 5, out)?;
    dump(txn, REQUESTS, 6, out)?;
    Ok(())
}

fn load_record(
    txn: &WriteTransaction,
    tag: u8,
    key: &[u8],
    value: &[u8],
) -> Result<bool, StoreError> {
    match tag {
        1 => load(txn, REVISIONS, key, value)?,
        2 => load(txn, META, key, value)?,
        3 => load(txn, META_BYTES, key, value)?,
        4 => load(txn, LEASES, key, value)?,
        5 => load(txn, LEASE_KEYS, key, value)?,
        6 => load(txn, REQUESTS, key, value)?,
        _ => return Ok(false),
    }
    Ok(true)
}

impl MvccStore {
    /// Writes a consistent snapshot of the store to `path` (through a
    /// temporary file renamed into place). Returns the Raft state stored
    /// with the snapshotted data, which says what the snapshot contains.
    pub fn save_snapshot(&self, path: &Path) -> Result<Option<Vec<u8>>, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        let txn = self.db.begin_read().map_err(StoreError::from)?;
        let raft_state = txn
            .open_table(META_BYTES)
            .map_err(StoreError::from)?
            .get(RAFT_STATE)
            .map_err(StoreError::from)?
            .map(|v| v.value().to_vec());
        let partial = path.with_extension("partial");
        let file = File::create(&partial).map_err(io)?;
        let mut out = HashingWriter {
            inner: BufWriter::new(file),
            hash: Sha256::new(),
        };
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        dump_all(&txn, &mut out)?;
        out.write_all(&[END]).map_err(io)?;
        let digest = out.hash.finalize();
        let mut file = out.inner;
        file.write_all(&digest).map_err(io)?;
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&partial, path).map_err(io)?;
        Ok(raft_state)
    }

    /// Builds a new store at `target` from the snapshot file `source`. The
    /// checksum is verified before `target` is touched: a corrupt or
    /// truncated snapshot leaves whatever was at `target` as it was.
    pub fn restore_snapshot(source: &Path, target: &Path) -> Result<MvccStore, SnapshotError> {
        let io = |source_error| SnapshotError::Io {
            path: source.to_path_buf(),
            source: source_error,
        };
        let format = |reason: &str| SnapshotError::Format {
            path: source.to_path_buf(),
            reason: reason.to_string(),
        };
        // The whole file first: a damaged record must never reach the
        // loading below, whose decoding trusts the record lengths.
        verify_file(source)?;
        let SnapshotRecords { mut input, total } = SnapshotRecords::open(source)?;
        let building = target.with_extension("restoring");
        let _ = std::fs::remove_file(&building);
        let result = (|| {
            let db = Database::create(&building).map_err(|e| StoreError::Open {
                path: building.clone(),
                source: e,
            })?;
            let mut txn = db.begin_write().map_err(StoreError::from)?;
            txn.set_durability(Durability::Immediate)
                .map_err(StoreError::from)?;
            loop {
                let mut tag = [0u8; 1];
                input.read_exact(&mut tag).map_err(io)?;
                if tag[0] == END {
                    break;
                }
                let key = read_part(&mut input, total).map_err(io)?;
                let value = read_part(&mut input, total).map_err(io)?;
                if !load_record(&txn, tag[0], &key, &value)? {
                    return Err(format(&format!("unknown table tag {}", tag[0])));
                }
            }
            // Again: the file may have changed since it was verified.
            check_digest(input, source)?;
            txn.commit().map_err(StoreError::from)?;
            drop(db);
            Ok(())
        })();
        if let Err(error) = result {
            let _ = std::fs::remove_file(&building);
            return Err(error);
        }
        std::fs::rename(&building, target).map_err(|e| SnapshotError::Io {
            path: target.to_path_buf(),
            source: e,
        })?;
        Ok(MvccStore::open(target)?)
    }
}

fn unsupported(path: &Path, version: u32) -> SnapshotError {
    SnapshotError::Format {
        path: path.to_path_buf(),
        reason: format!(
            "format version {version}; this orch reads version {VERSION} (version 1 was written before the store's row layout and cannot be read)"
        ),
    }
}

/// Checks a snapshot file's header and checksum without loading it.
pub fn verify_file(path: &Path) -> Result<(), SnapshotError> {
    let SnapshotRecords { mut input, .. } = SnapshotRecords::open(path)?;
    std::io::copy(&mut input, &mut std::io::sink()).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    check_digest(input, path)
}

/// A snapshot file past its checked header: the records, read through a
/// hash, up to the trailing SHA-256.
struct SnapshotRecords {
    input: HashingReader<std::io::Take<BufReader<File>>>,
    /// The file's length.
    total: u64,
}

impl SnapshotRecords {
    fn open(path: &Path) -> Result<Self, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        let format = |reason: &str| SnapshotError::Format {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let file = File::open(path).map_err(io)?;
        let total = file.metadata().map_err(io)?.len();
        if total < (MAGIC.len() + 4 + 1 + 32) as u64 {
            return Err(format("too short"));
        }
        let mut input = HashingReader {
            inner: BufReader::new(file).take(total - 32),
            hash: Sha256::new(),
        };
        let mut header = [0u8; 12];
        input.read_exact(&mut header).map_err(io)?;
        if &header[..8] != MAGIC {
            return Err(format("bad magic"));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != VERSION {
            return Err(unsupported(path, version));
        }
        Ok(Self { input, total })
    }
}

/// Compares the hash of everything read from `input` (all of the records)
/// with the file's trailing SHA-256.
fn check_digest(
    input: HashingReader<std::io::Take<BufReader<File>>>,
    path: &Path,
) -> Result<(), SnapshotError> {
    let digest = input.hash.finalize();
    let mut expected = [0u8; 32];
    input
        .inner
        .into_inner()
        .read_exact(&mut expected)
        .map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if digest.as_slice() != expected {
        return Err(SnapshotError::Checksum {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn read_part(input: &mut impl Read, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u64::from(u32::from_le_bytes(len));
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "record longer than the file",
        ));
    }
    let mut part = vec![0u8; len as usize];
    input.read_exact(&mut part)?;
    Ok(part)
}
