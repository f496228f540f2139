//! Which cluster a data directory belongs to, and as which replica.
//!
//! Like etcd's cluster and member ids: `--init` draws a random cluster id,
//! a joining replica takes the id of the cluster it joins, and both are
//! written to `<data-dir>/identity` before the replica holds any data. A
//! replica refuses to start as another node id, to join a different
//! cluster, and to accept Raft traffic from one (every Raft RPC carries the
//! sender's cluster id), so a data directory put in the wrong place never
//! mixes two clusters' logs.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

use super::raft::NodeId;

/// The file, inside the data directory.
pub const FILE_NAME: &str = "identity";

/// A cluster's id: 128 random bits, written as 32 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u128);

impl ClusterId {
    /// A fresh random id, from the kernel's random source.
    pub fn random() -> std::io::Result<Self> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Self(u128::from_le_bytes(bytes)))
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for ClusterId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{text:?} is not a cluster id (32 hex digits)"));
        }
        u128::from_str_radix(text, 16)
            .map(Self)
            .map_err(|e| format!("{text:?}: {e}"))
    }
}

/// What `<data-dir>/identity` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster: ClusterId,
    pub node: NodeId,
}

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an orch identity file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path}: this data directory belongs to node {recorded}, not --node-id {requested}; start it with --node-id {recorded} or use another --data-dir"
    )]
    WrongNode {
        path: PathBuf,
        recorded: NodeId,
        requested: NodeId,
    },
    #[error(
        "{path}: this data directory belongs to cluster {recorded}, but the cluster at {seed} is {found}; refusing to mix them (use a new, empty --data-dir to join {found})"
    )]
    WrongCluster {
        path: PathBuf,
        recorded: ClusterId,
        seed: String,
        found: ClusterId,
    },
}

impl Identity {
    /// Reads the identity of `data_dir`; None when it has none yet.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, IdentityError> {
        let path = data_dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        Self::parse(&text)
            .map(Some)
            .map_err(|reason| IdentityError::Corrupt { path, reason })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut cluster = None;
        let mut node = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            match key.trim() {
                "cluster-id" => cluster = Some(value.trim().parse::<ClusterId>()?),
                "node-id" => {
                    node = Some(
                        value
                            .trim()
                            .parse::<NodeId>()
                            .map_err(|e| format!("node-id {value:?}: {e}"))?,
                    )
                }
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        Ok(Self {
            cluster: cluster.ok_or("cluster-id missing")?,
            node: node.ok_or("node-id missing")?,
        })
    }

    /// Writes the identity file whole or not at all (temp file, fsync,
    /// rename, fsync of the directory).
    pub fn store(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        let path = data_dir.join(FILE_NAME);
        let temp = data_dir.join(format!("{FILE_NAME}.tmp"));
        let mut file = std::fs::File::create(&temp).map_err(io(&temp))?;
        write!(file, "cluster-id={}\nnode-id={}\n", self.cluster, self.node)
            .and_then(|()| file.sync_all())
            .map_err(io(&temp))?;
        std::fs::rename(&temp, &path).map_err(io(&path))?;
        std::fs::File::open(data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(data_dir))
    }

    /// Refuses to run `data_dir` (with this identity) as another node.
    pub fn check_node(&self, data_dir: &Path, requested: NodeId) -> Result<(), IdentityError> {
        if self.node == requested {
            return Ok(());
        }
        Err(IdentityError::WrongNode {
            path: data_dir.to_path_buf(),
            recorded: self.node,
            requested,
        })
    }

    /// Refuses to join a cluster other than the recorded one.
    pub fn check_cluster(
        &self,
        data_dir: &Path,
        seed: &str,
        found: ClusterId,
    ) -> Result<(), IdentityError> {
        if self.cluster == found {
            return Ok(());
        }
        Err(IdentityError::WrongCluster {
            path: data_dir.to_path_buf(),
            recorded: self.cluster,
            seed: seed.to_string(),
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(Identity::load(dir.path()).expect("load"), None);
        let identity = Identity {
            cluster: ClusterId::random().expect("random"),
            node: 7,
        };
        identity.store(dir.path()).expect("store");
        assert_eq!(Identity::load(dir.path()).expect("load"), Some(identity));

        std::fs::write(dir.path().join(FILE_NAME), "cluster-id=xyz\nnode-id=7\n").expect("write");
        let error = Identity::load(dir.path()).expect_err("corrupt");
        assert!(error.to_string().contains("not a cluster id"), "{error}");
        std::fs::write(dir.path().join(FILE_NAME), "node-id=7\n").expect("write");
        let error = Identity::load(dir.path()).expect_err("incomplete");
        assert!(error.to_string().contains("cluster-id missing"), "{error}");
    }

    #[test]
    fn refuses_another_node_or_cluster() {
        let dir = Path::new("/data");
        let identity = Identity {
            cluster: ClusterId(1),
            node: 2,
        };
        assert!(identity.check_node(dir, 2).is_ok());
        let error = identity.check_node(dir, 3).expect_err("other node");
        assert!(error.to_string().contains("belongs to node 2"), "{error}");
        let error = identity
            .check_cluster(dir, "127.0.0.1:9", ClusterId(5))
            .expect_err("other cluster");
        assert!(
            error
                .to_string()
                .contains(&format!("belongs to cluster {}", ClusterId(1))),
            "{error}"
        );
        assert!(
            identity
                .check_cluster(dir, "127.0.0.1:9", ClusterId(1))
                .is_ok()
        );
    }
}
