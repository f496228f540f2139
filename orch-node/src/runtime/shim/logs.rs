//! Container logs in the CRI format the kubelet writes:
//! `<RFC 3339 time> <stdout|stderr> <F|P> <text>`, one line each (P: a
//! partial line, continued by the next record), rotated by size.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::protocol::LogRotation;

/// Longest record; a longer line is split into partial ones.
const MAX_RECORD: usize = 16 * 1024;

/// A container's log file, shared by its stdout and stderr copiers.
#[derive(Clone)]
pub struct LogWriter {
    file: Arc<Mutex<LogFile>>,
}

struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    rotation: Option<LogRotation>,
}

impl LogFile {
    /// Like the kubelet's rotation: the live file becomes `<path>.1`, the
    /// older ones move up to `<path>.<max_files - 1>` (the oldest beyond
    /// is overwritten), and writing goes on in a new live file.
    fn rotate(&mut self, rotation: LogRotation) {
        let numbered = |k: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{k}"));
            PathBuf::from(name)
        };
        for k in (1..rotation.max_files.saturating_sub(1)).rev() {
            let _ = std::fs::rename(numbered(k), numbered(k + 1));
        }
        if std::fs::rename(&self.path, numbered(1)).is_err() {
            return;
        }
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(file) => {
                self.file = file;
                self.size = 0;
            }
            // The renamed file is still open: writing goes on there.
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "reopening a rotated log")
            }
        }
    }
}

impl LogWriter {
    pub fn open(path: &Path, rotation: Option<LogRotation>) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file: Arc::new(Mutex::new(LogFile {
                path: path.to_path_buf(),
                file,
                size,
                rotation: rotation.filter(|r| r.max_bytes > 0 && r.max_files >= 2),
            })),
        })
    }

    fn record(&self, stream: &str, text: &[u8], full: bool) {
        let time = format!("{:.9}", orch_core::time::now());
        let mut line = format!("{time} {stream} {} ", if full { 'F' } else { 'P' }).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        let mut log = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if log.file.write_all(&line).is_ok() {
            log.size += line.len() as u64;
        }
        if let Some(rotation) = log.rotation
            && log.size >= rotation.max_bytes
        {
            log.rotate(rotation);
        }
    }
}

/// Copies what the container writes to `pipe` into the log, until it
/// closes the pipe (it exited).
pub fn copy_stream(pipe: OwnedFd, stream: &'static str, log: LogWriter) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(std::fs::File::from(pipe));
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            let read =
                std::io::Read::take(&mut reader, MAX_RECORD as u64).read_until(b'\n', &mut buffer);
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let full = buffer.last() == Some(&b'\n');
                    if full {
                        buffer.pop();
                    }
                    log.record(stream, &buffer, full);
                }
            }
        }
    });
}
