//! Container logs in the CRI format the kubelet writes:
//! `<RFC 3339 time> <stdout|stderr> <F|P> <text>`, one line each (P: a
//! partial line, continued by the next record).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Longest record; a longer line is split into partial ones.
const MAX_RECORD: usize = 16 * 1024;

/// A container's log file, shared by its stdout and stderr copiers.
#[derive(Clone)]
pub struct LogWriter {
    file: Arc<Mutex<std::fs::File>>,
}

impl LogWriter {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
        })
    }

    fn record(&self, stream: &str, text: &[u8], full: bool) {
        let time = format!("{:.9}", orch_core::time::now());
        let mut line = format!("{time} {stream} {} ", if full { 'F' } else { 'P' }).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = file.write_all(&line);
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
