//! Image garbage collection under disk pressure, as the kubelet does it:
//! when the image filesystem is fuller than the high threshold, images no
//! pod of the node uses are deleted, least recently used first, until it
//! is below the low threshold; an image unused for less than the minimum
//! age (`--minimum-image-ttl-duration`, 2 minutes) stays, so an image just
//! pulled or imported for a pod about to start is not taken away.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::machine;
use crate::image::{Digest, ImageStore, Reference, StoreError};

#[derive(Debug, Error)]
pub enum ImageGcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Machine(#[from] machine::MachineError),
}

/// The kubelet's `--image-gc-high-threshold` and `--image-gc-low-threshold`
/// (percent of the filesystem used); a high threshold of 100 turns
/// collection off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageGcPolicy {
    pub high_percent: u8,
    pub low_percent: u8,
    /// How long an image must have gone unused (or, never used, known to
    /// the agent) before it may be collected.
    pub min_age: Duration,
}

impl Default for ImageGcPolicy {
    fn default() -> Self {
        Self {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

impl ImageGcPolicy {
    pub fn new(high_percent: u8, low_percent: u8, min_age: Duration) -> Result<Self, String> {
        if high_percent > 100 {
            return Err("--image-gc-high-threshold: a percent, 0 to 100".into());
        }
        if low_percent >= high_percent && high_percent != 100 {
            return Err(
                "--image-gc-low-threshold must be lower than --image-gc-high-threshold".into(),
            );
        }
        Ok(Self {
            high_percent,
            low_percent,
            min_age,
        })
    }
}

/// When each image (manifest digest) was last used by a container, and
/// when the collector first saw each one.
#[derive(Default)]
pub struct LastUsed {
    used: std::sync::Mutex<HashMap<String, Instant>>,
    seen: std::sync::Mutex<HashMap<String, Instant>>,
}

impl LastUsed {
    pub fn touch(&self, manifest: &str) {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(manifest.to_string(), Instant::now());
    }

    fn get(&self, manifest: &str) -> Option<Instant> {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(manifest)
            .copied()
    }

    /// Since when the image has gone unused: its last use, else when the
    /// collector first saw it (now, the first time it asks).
    fn unused_since(&self, manifest: &str) -> Instant {
        self.get(manifest).unwrap_or_else(|| {
            *self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(manifest.to_string())
                .or_insert_with(Instant::now)
        })
    }
}

fn used_percent(store: &ImageStore) -> Result<f64, ImageGcError> {
    let disk = machine::disk(store.root())?;
    if disk.total == 0 {
        return Ok(0.0);
    }
    Ok((disk.total - disk.available) as f64 * 100.0 / disk.total as f64)
}

/// The layers (diff ids) some mounted root filesystem stacks: whatever
/// image a container was started from, its layers stay while it runs
/// (a tag may since name another image).
fn mounted_layers(store: &ImageStore) -> BTreeSet<Digest> {
    let layers_root = store.layers_root();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter(|line| line.contains(" - overlay "))
        .filter_map(|line| line.rsplit(' ').next())
        .flat_map(|options| options.split(','))
        .filter_map(|option| option.strip_prefix("lowerdir="))
        .flat_map(|lower| lower.split(':'))
        .filter_map(|dir| {
            let hex = Path::new(dir).strip_prefix(layers_root).ok()?.to_str()?;
            Digest::parse(&format!("sha256:{hex}")).ok()
        })
        .collect()
}

/// Collects when the filesystem is over the policy's high threshold.
/// `wanted` are the images the node's pods name. Returns the names
/// deleted. Blocking.
pub fn collect_under_pressure(
    store: &ImageStore,
    policy: ImageGcPolicy,
    wanted: &[String],
    last_used: &LastUsed,
) -> Result<Vec<String>, ImageGcError> {
    if policy.high_percent >= 100 || used_percent(store)? < f64::from(policy.high_percent) {
        return Ok(Vec::new());
    }
    // Nothing is untagged while a pull or an import runs (collecting
    // would fail then, leaving images unnamed and no space freed).
    let mut kept_layers = mounted_layers(store);
    match store.collect(&kept_layers) {
        Err(StoreError::Busy(why)) => {
            tracing::debug!(%why, "image garbage collection waits");
            return Ok(Vec::new());
        }
        other => {
            other?;
        }
    }
    let names = store.names()?;
    // What the pods name stays, under every name it has, with its layers.
    let mut kept_manifests = BTreeSet::new();
    for image in wanted {
        let Ok(reference) = Reference::parse(image) else {
            continue;
        };
        if let Some(descriptor) = store.resolve(&reference)? {
            if let Ok(held) = store.image(&descriptor) {
                kept_layers.extend(
                    held.config
                        .rootfs
                        .diff_ids
                        .iter()
                        .filter_map(|d| Digest::parse(d).ok()),
                );
            }
            kept_manifests.insert(descriptor.digest);
        }
    }
    let mut unused: Vec<(Option<Instant>, String)> = names
        .iter()
        .map(|(_, d)| d.digest.clone())
        .filter(|digest| !kept_manifests.contains(digest))
        .filter(|digest| last_used.unused_since(digest).elapsed() >= policy.min_age)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|digest| (last_used.get(&digest), digest))
        .collect();
    // Never used since the agent started sorts first (None < Some).
    unused.sort();
    let mut deleted = Vec::new();
    for (_, digest) in unused {
        if used_percent(store)? < f64::from(policy.low_percent) {
            break;
        }
        for (name, _) in names.iter().filter(|(_, d)| d.digest == digest) {
            if store.untag(name)? {
                deleted.push(name.to_string());
            }
        }
        let freed = store.collect(&kept_layers)?;
        tracing::info!(image = %digest, freed, "image collected under disk pressure");
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_unused_since_its_last_use_or_since_first_seen() {
        let last_used = LastUsed::default();
        let first = last_used.unused_since("sha256:a");
        std::thread::sleep(Duration::from_millis(20));
        // Seen once, it keeps that time: its age grows.
        assert_eq!(last_used.unused_since("sha256:a"), first);
        assert!(first.elapsed() >= Duration::from_millis(20));
        // A use starts it over.
        last_used.touch("sha256:a");
        assert!(last_used.unused_since("sha256:a") > first);
        assert!(last_used.unused_since("sha256:a").elapsed() < Duration::from_millis(20));
    }
}
