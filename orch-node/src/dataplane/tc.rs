//! Attaching tc classifiers with tcx links pinned under the node's
//! directory: the programs stay attached while the agent is down, and a
//! new program is swapped into an existing link atomically.

use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};

use super::{DataplaneError, PinLayout, remove_pin};

/// Pins the newest instance of a program so `bpftool prog show pinned` finds
/// it; an older instance stays alive for as long as a link still uses it.
pub(crate) fn pin_program(
    layout: &PinLayout,
    name: &'static str,
    program: &mut SchedClassifier,
) -> Result<(), DataplaneError> {
    let path = layout.program(name);
    remove_pin(&path)?;
    program
        .pin(&path)
        .map_err(|source| DataplaneError::Pin { path, source })
}

pub(crate) fn attach_tcx(
    layout: &PinLayout,
    name: &'static str,
    program: &mut SchedClassifier,
    interface: &str,
    attach_type: TcAttachType,
) -> Result<(), DataplaneError> {
    let path = layout.link(name, interface);
    if let Some(pinned) = open_pinned_link(&path)? {
        // Already attached: swap the program inside the existing link, so
        // no packet passes between the old program and the new one. The
        // pin stays in place throughout: whatever fails, the link (and the
        // old program) remain attached.
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| {
            DataplaneError::Link {
                path: path.clone(),
                source,
            }
        })?;
        let link_id = program
            .attach_to_link(link)
            .map_err(|source| DataplaneError::Program { name, source })?;
        // Dropping our descriptor leaves the pinned link attached.
        drop(program.take_link(link_id));
        return Ok(());
    }
    let link_id = program
        .attach_with_options(
            interface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|source| DataplaneError::Program { name, source })?;
    let link = program
        .take_link(link_id)
        .map_err(|source| DataplaneError::Program { name, source })?;
    let fd_link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
        path: path.clone(),
        source,
    })?;
    fd_link
        .pin(&path)
        .map_err(|source| DataplaneError::Pin { path, source })?;
    Ok(())
}

/// Detaches the tcx link pinned at `path`; returns whether there was one.
pub(crate) fn detach_tcx(path: &std::path::Path) -> Result<bool, DataplaneError> {
    let Some(pinned) = open_pinned_link(path)? else {
        return Ok(false);
    };
    // Removing the pin drops the last reference: the kernel detaches the link.
    let fd_link = pinned.unpin().map_err(|source| DataplaneError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    drop(fd_link);
    Ok(true)
}

fn open_pinned_link(path: &std::path::Path) -> Result<Option<PinnedLink>, DataplaneError> {
    if !path.exists() {
        return Ok(None);
    }
    PinnedLink::from_pin(path)
        .map(Some)
        .map_err(|source| DataplaneError::Link {
            path: path.to_path_buf(),
            source,
        })
}
