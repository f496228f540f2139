//! A container's log as `orchctl logs` shows it, read from the CRI-format
//! files the pod's shim writes (`<pod>/logs/<container>/<restart>.log`,
//! rotated ones beside it as `<restart>.log.<n>`): the text only, or with
//! each line's time; the last N lines, those of the last N seconds, a byte
//! limit; and, following, what the container writes until it exits.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use orch_core::api::ApiError;
use orch_core::api::proto::{LogChunk, PodLogsRequest};
use tokio::sync::mpsc;
use tonic::Status;

use crate::runtime::shim::client::ShimClient;
use crate::runtime::shim::protocol::Status as ContainerStatus;

/// How often a followed log is checked for more.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

pub(super) fn invalid(message: String) -> Status {
    ApiError::Invalid(message).to_status()
}

/// One record of a CRI log line (the text is the container's bytes, not
/// necessarily UTF-8).
struct Record<'a> {
    time: &'a str,
    text: &'a [u8],
    /// The end of a line (F), not a part of one (P).
    full: bool,
}

fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(Record {
        time,
        text,
        full: tag != b"P",
    })
}

/// The pod's directory under `pods_dir`, from a uid the API server sent.
pub fn pod_dir(pods_dir: &Path, uid: &str) -> Result<PathBuf, Status> {
    if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(invalid(format!("pod uid {uid:?} is not a uid")));
    }
    let dir = pods_dir.join(uid);
    if !dir.is_dir() {
        return Err(ApiError::NotFound(format!("pod {uid} has no state on this node")).to_status());
    }
    Ok(dir)
}

/// A container name as a path component.
pub fn container_name(name: &str) -> Result<&str, Status> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(invalid(format!(
            "container {name:?} is not a container name"
        )));
    }
    Ok(name)
}

/// The restart numbers of a container's log files, ascending.
fn instances(dir: &Path) -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    found.sort_unstable();
    found
}

/// The files of one instance's log, oldest first: rotated ones
/// (`<n>.log.<k>`, a higher k older), then the live one.
fn instance_files(dir: &Path, instance: u32) -> Vec<PathBuf> {
    let live = dir.join(format!("{instance}.log"));
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let k = name
                .to_str()?
                .strip_prefix(&format!("{instance}.log."))?
                .parse()
                .ok()?;
            Some((k, entry.path()))
        })
        .collect();
    rotated.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
    rotated.into_iter().map(|(_, p)| p).chain([live]).collect()
}

/// Turns records into what the caller sees, with its options applied.
struct Renderer {
    timestamps: bool,
    since: Option<Timestamp>,
    remaining_bytes: Option<u64>,
    /// Whether the next record starts a line (for timestamps).
    at_line_start: bool,
}

impl Renderer {
    fn new(request: &PodLogsRequest) -> Self {
        let since = request.since_seconds.filter(|s| *s > 0).and_then(|s| {
            let now = orch_core::time::now();
            Timestamp::new(now.as_second() - s, now.subsec_nanosecond()).ok()
        });
        Self {
            timestamps: request.timestamps,
            since,
            remaining_bytes: request.limit_bytes.filter(|l| *l > 0).map(|l| l as u64),
            at_line_start: true,
        }
    }

    fn exhausted(&self) -> bool {
        self.remaining_bytes == Some(0)
    }

    /// The bytes of one record (empty when filtered out).
    fn render(&mut self, record: &Record<'_>) -> Vec<u8> {
        if let Some(since) = self.since
            && record.time.parse::<Timestamp>().is_ok_and(|t| t < since)
        {
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.timestamps && self.at_line_start {
            out.extend_from_slice(record.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(record.text);
        if record.full {
            out.push(b'\n');
        }
        self.at_line_start = record.full;
        if let Some(remaining) = &mut self.remaining_bytes {
            out.truncate(*remaining as usize);
            *remaining -= out.len() as u64;
        }
        out
    }
}

/// Starts streaming the log `request` asks for, from the pod in
/// `pod_dir`, into a channel.
pub fn stream(
    pod_dir: PathBuf,
    request: PodLogsRequest,
) -> Result<mpsc::Receiver<Result<LogChunk, Status>>, Status> {
    let container = container_name(&request.container)?.to_string();
    let dir = pod_dir.join("logs").join(&container);
    let known = instances(&dir);
    let Some(current) = known.last().copied() else {
        return Err(invalid(format!(
            "container {container:?} in pod {:?} is waiting to start",
            request.name
        )));
    };
    // The previous instance is the last one that terminated: the one
    // before the current when that runs, the latest when the container
    // waits to be restarted (as the kubelet reads lastState).
    let latest_runs = running(&pod_dir, &container, current);
    let instance = if request.previous {
        let before = if latest_runs {
            known.iter().rev().copied().find(|n| *n < current)
        } else {
            Some(current)
        };
        before.ok_or_else(|| {
            invalid(format!(
                "previous terminated container {container:?} in pod {:?} not found",
                request.name
            ))
        })?
    } else {
        current
    };
    let (sender, receiver) = mpsc::channel(16);
    let follow = request.follow && !request.previous;
    std::thread::spawn(move || {
        let send =
            |data: Vec<u8>| data.is_empty() || sender.blocking_send(Ok(LogChunk { data })).is_ok();
        let gone = || sender.is_closed();
        if let Err(error) = copy(
            &pod_dir, &dir, &container, instance, &request, follow, send, gone,
        ) {
            let _ = sender.blocking_send(Err(Status::internal(error)));
        }
    });
    Ok(receiver)
}

/// Whether instance `instance` of `container` has not exited.
fn running(pod_dir: &Path, container: &str, instance: u32) -> bool {
    let id = format!("{container}-{instance}");
    ShimClient::new(pod_dir)
        .state()
        .ok()
        .is_some_and(|containers| {
            containers
                .iter()
                .any(|c| c.id == id && c.status != ContainerStatus::Exited)
        })
}

/// Reads one complete record (without its newline) into `line`; false at
/// the end of what is written so far (a record being written is left for
/// the next read).
fn next_record(
    reader: &mut BufReader<std::fs::File>,
    line: &mut Vec<u8>,
    path: &Path,
) -> Result<bool, String> {
    line.clear();
    match reader.read_until(b'\n', line) {
        Ok(0) => Ok(false),
        Ok(read) if line.last() != Some(&b'\n') => {
            let _ = reader.seek_relative(-(read as i64));
            Ok(false)
        }
        Ok(_) => {
            line.pop();
            Ok(true)
        }
        Err(error) => Err(format!("{}: {error}", path.display())),
    }
}

/// Sends the instance's log through `send` (false: the caller is gone);
/// `gone` says the caller left while nothing was being sent.
#[allow(clippy::too_many_arguments)]
fn copy(
    pod_dir: &Path,
    dir: &Path,
    container: &str,
    instance: u32,
    request: &PodLogsRequest,
    follow: bool,
    mut send: impl FnMut(Vec<u8>) -> bool,
    gone: impl Fn() -> bool,
) -> Result<(), String> {
    let mut renderer = Renderer::new(request);
    let files = instance_files(dir, instance);
    let tail = request.tail_lines.filter(|t| *t >= 0).map(|t| t as usize);
    // With --tail, only the last lines are kept (a partial record goes
    // with the line its full record ends); without, records go out as
    // they are read.
    let mut kept: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut kept_lines = 0usize;
    let mut live = None;
    let mut line = Vec::new();
    for (index, path) in files.iter().enumerate() {
        let Ok(file) = std::fs::File::open(path) else {
            continue;
        };
        let mut reader = BufReader::new(file);
        while next_record(&mut reader, &mut line, path)? {
            match tail {
                Some(lines) => {
                    if parse(&line).is_some_and(|r| r.full) {
                        kept_lines += 1;
                    }
                    kept.push_back(line.clone());
                    while kept_lines > lines {
                        let dropped = kept.pop_front().unwrap_or_default();
                        if parse(&dropped).is_some_and(|r| r.full) {
                            kept_lines -= 1;
                        }
                    }
                }
                None => {
                    if renderer.exhausted() {
                        return Ok(());
                    }
                    if let Some(record) = parse(&line)
                        && !send(renderer.render(&record))
                    {
                        return Ok(());
                    }
                }
            }
        }
        if index == files.len() - 1 {
            live = Some(reader);
        }
    }
    for record in &kept {
        if renderer.exhausted() {
            return Ok(());
        }
        if let Some(record) = parse(record)
            && !send(renderer.render(&record))
        {
            return Ok(());
        }
    }
    if !follow || renderer.exhausted() {
        return Ok(());
    }
    drop(kept);
    follow_live(
        pod_dir,
        dir,
        container,
        instance,
        live,
        &mut renderer,
        &mut send,
        &gone,
    )
}

/// Keeps sending what is appended to the live file (`reader`, positioned
/// after what was sent; following it when it is rotated) until the
/// container instance is no longer running or the caller is gone.
#[allow(clippy::too_many_arguments)]
fn follow_live(
    pod_dir: &Path,
    dir: &Path,
    container: &str,
    instance: u32,
    mut reader: Option<BufReader<std::fs::File>>,
    renderer: &mut Renderer,
    send: &mut impl FnMut(Vec<u8>) -> bool,
    gone: &impl Fn() -> bool,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let path = dir.join(format!("{instance}.log"));
    let inode_of =
        |reader: &BufReader<std::fs::File>| reader.get_ref().metadata().map(|m| m.ino()).ok();
    let mut line = Vec::new();
    loop {
        // Everything complete that is there now.
        if let Some(reader) = &mut reader {
            while next_record(reader, &mut line, &path)? {
                if let Some(record) = parse(&line)
                    && !send(renderer.render(&record))
                {
                    return Ok(());
                }
                if renderer.exhausted() {
                    return Ok(());
                }
            }
        }
        // Rotated: the old file was read to its end just above (its last
        // lines included); go on from the start of the new one.
        let now = std::fs::metadata(&path).map(|m| m.ino()).ok();
        let rotated = match (&reader, now) {
            (Some(open), Some(inode)) => inode_of(open) != Some(inode),
            (None, Some(_)) => true,
            _ => false,
        };
        if rotated {
            if let Some(open) = &mut reader {
                // Lines written between the read above and the rename.
                while next_record(open, &mut line, &path)? {
                    if let Some(record) = parse(&line)
                        && !send(renderer.render(&record))
                    {
                        return Ok(());
                    }
                }
            }
            reader = std::fs::File::open(&path).ok().map(BufReader::new);
            continue;
        }
        if gone() || !running(pod_dir, container, instance) {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(options: &str) -> PodLogsRequest {
        let mut request = PodLogsRequest {
            name: "p".into(),
            container: "c".into(),
            ..Default::default()
        };
        for option in options.split_whitespace() {
            match option.split_once('=') {
                Some(("tail", n)) => request.tail_lines = n.parse().ok(),
                Some(("limit", n)) => request.limit_bytes = n.parse().ok(),
                Some(("since", n)) => request.since_seconds = n.parse().ok(),
                _ if option == "timestamps" => request.timestamps = true,
                _ if option == "previous" => request.previous = true,
                _ => panic!("{option}"),
            }
        }
        request
    }

    fn read(pod: &Path, options: &str) -> Result<String, String> {
        let mut out = Vec::new();
        let receiver =
            stream(pod.to_path_buf(), request(options)).map_err(|s| s.message().to_string())?;
        let mut receiver = receiver;
        while let Some(chunk) = receiver.blocking_recv() {
            out.extend(chunk.map_err(|s| s.message().to_string())?.data);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn logs_are_rendered_as_kubectl_shows_them() {
        let pod = tempfile::tempdir().expect("temp dir");
        let dir = pod.path().join("logs/c");
        std::fs::create_dir_all(&dir).expect("dir");
        let old = "2020-01-01T00:00:00.000000001Z";
        std::fs::write(dir.join("0.log"), format!("{old} stdout F first run\n")).expect("write");
        let now = format!("{:.9}", orch_core::time::now());
        std::fs::write(
            dir.join("1.log.1"),
            format!("{old} stdout F one\n{old} stderr F two\n"),
        )
        .expect("write");
        std::fs::write(
            dir.join("1.log"),
            format!(
                "{now} stdout P thr\n{now} stdout F ee\n{now} stdout F four\n{now} stdout F fi"
            ),
        )
        .expect("write");

        // Rotated files first; a partial record joins its line; an
        // unfinished last line is not shown yet.
        assert_eq!(
            read(pod.path(), "").expect("all"),
            "one\ntwo\nthree\nfour\n"
        );
        assert_eq!(read(pod.path(), "tail=2").expect("tail"), "three\nfour\n");
        assert_eq!(read(pod.path(), "tail=0").expect("tail 0"), "");
        assert_eq!(
            read(pod.path(), "since=60").expect("since"),
            "three\nfour\n"
        );
        assert_eq!(read(pod.path(), "limit=6").expect("limit"), "one\ntw");
        assert_eq!(
            read(pod.path(), "timestamps tail=1").expect("timestamps"),
            format!("{now} four\n")
        );
        // No shim runs instance 1: it has terminated, so it is also the
        // previous instance (a container waiting to be restarted).
        assert_eq!(
            read(pod.path(), "previous").expect("previous"),
            "one\ntwo\nthree\nfour\n"
        );
        // Bytes that are not UTF-8 come through as they were written.
        let binary = tempfile::tempdir().expect("temp dir");
        let binary_logs = binary.path().join("logs/c");
        std::fs::create_dir_all(&binary_logs).expect("dir");
        let mut record = format!("{old} stdout F ").into_bytes();
        record.extend_from_slice(&[0xff, 0xfe, b'\n']);
        std::fs::write(binary_logs.join("0.log"), record).expect("write");
        assert_eq!(
            read(binary.path(), "").expect("binary"),
            "\u{fffd}\u{fffd}\n"
        );
        let empty = tempfile::tempdir().expect("temp dir");
        let error = read(empty.path(), "").expect_err("never started");
        assert!(error.contains("waiting to start"), "{error}");
    }
}
