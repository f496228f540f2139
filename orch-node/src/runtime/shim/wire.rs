//! Framing on a shim's socket: one JSON document per line, and file
//! descriptors (an exec's stdio) riding along with a line as SCM_RIGHTS.

use std::io::IoSlice;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The most descriptors one line carries (stdin, stdout, stderr).
pub const MAX_FDS: usize = 3;

/// A line longer than this is refused (requests and answers are small).
const MAX_LINE: usize = 1 << 20;

/// Sends `line` (a newline is added) with `fds` attached to its first byte.
pub fn send_line(stream: &UnixStream, line: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let mut bytes = line.as_bytes().to_vec();
    bytes.push(b'\n');
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut sent = 0;
    while sent < bytes.len() {
        let iov = [IoSlice::new(&bytes[sent..])];
        let rights = [ControlMessage::ScmRights(&raw)];
        let control: &[ControlMessage<'_>] = if sent == 0 && !raw.is_empty() {
            &rights
        } else {
            &[]
        };
        sent += sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            control,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Where the answer to one request goes: the connection it came on (one
/// request per connection). Written by the shim's main loop itself, at
/// once or, for a wait, when the container or process exits. Dropped
/// unanswered (the shim stopping), it answers that.
pub struct Reply {
    stream: Option<UnixStream>,
}

impl Reply {
    /// A client that stops reading must not hold up the shim: answers are
    /// a line, which a socket buffers whole, and a write gives up after
    /// this.
    const WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new(stream: UnixStream) -> Self {
        let _ = stream.set_write_timeout(Some(Self::WRITE_LIMIT));
        Self {
            stream: Some(stream),
        }
    }

    /// Answers; a client that has gone away is no error of the shim's.
    pub fn send(mut self, response: &super::protocol::Response) {
        if let Some(stream) = self.stream.take() {
            write_response(&stream, response);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            write_response(
                &stream,
                &super::protocol::Response::Error {
                    message: "the shim is stopping".into(),
                },
            );
        }
    }
}

fn write_response(stream: &UnixStream, response: &super::protocol::Response) {
    if let Ok(line) = serde_json::to_string(response) {
        let _ = send_line(stream, &line, &[]);
    }
}

/// Reads lines and the descriptors that came with them.
pub struct LineReader {
    pending: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new()
    }
}

impl LineReader {
    pub fn new() -> Self {
        Self {
            pending: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// The next line (without its newline) and every descriptor received
    /// since the previous one; None at the end of the stream.
    pub fn next(&mut self, stream: &UnixStream) -> std::io::Result<Option<(String, Vec<OwnedFd>)>> {
        self.next_before(stream, None)
    }

    /// As `next`, but a line not complete by `deadline` is a `TimedOut`
    /// error, however the peer spreads its bytes. A read with a timeout is
    /// never restarted after a signal (the shim's SIGCHLD), so an
    /// interrupted one goes on with the time left.
    pub fn next_within(
        &mut self,
        stream: &UnixStream,
        deadline: std::time::Instant,
    ) -> std::io::Result<Option<(String, Vec<OwnedFd>)>> {
        loop {
            match self.next_before(stream, Some(deadline)) {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                other => return other,
            }
        }
    }

    fn next_before(
        &mut self,
        stream: &UnixStream,
        deadline: Option<std::time::Instant>,
    ) -> std::io::Result<Option<(String, Vec<OwnedFd>)>> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..end]).into_owned();
                return Ok(Some((text, std::mem::take(&mut self.fds))));
            }
            if self.pending.len() > MAX_LINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a line over 1 MiB",
                ));
            }
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                // Setting a timeout fails only for a zero one: time is up.
                if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
            }
            let mut buffer = [0u8; 8192];
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
            let message = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let read = message.bytes;
            for control in message.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(received) = control {
                    // SAFETY: the kernel just installed these descriptors
                    // in this process for us; nothing else owns them.
                    self.fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            if read == 0 {
                return Ok(None);
            }
            self.pending.extend_from_slice(&buffer[..read]);
        }
    }
}

/// Receives one descriptor sent on `stream` (a terminal's master end, sent
/// by the container's process to its console socket).
pub fn receive_fd(stream: &UnixStream) -> std::io::Result<OwnedFd> {
    let mut buffer = [0u8; 256];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
    let message = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut received = Vec::new();
    for control in message.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            // SAFETY: installed in this process by the kernel just now.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    received.into_iter().next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no descriptor came with the message",
        )
    })
}
