//! aya-log records from the kernel programs, into this process's log (the
//! `log` facade, which the agent's tracing subscriber takes in): each
//! loaded object has its own log ring buffer, drained by a task.

use aya::Ebpf;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Forwards the kernel log records of `ebpf`'s programs until the runtime
/// ends. `what` names the programs in this process's own messages.
pub fn forward(ebpf: &mut Ebpf, what: &'static str) -> tokio::task::JoinHandle<()> {
    let logger = aya_log::EbpfLogger::init(ebpf);
    tokio::spawn(async move {
        let logger = match logger {
            Ok(logger) => logger,
            Err(error) => {
                tracing::warn!(programs = what, %error, "no kernel log for these programs");
                return;
            }
        };
        // SAFETY: the logger owns its ring buffer fd and keeps it open, with
        // the same fd number, for as long as the AsyncFd owns the logger.
        let logs = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
        let mut logs = match logs {
            Ok(logs) => logs,
            Err(error) => {
                tracing::warn!(programs = what, error = %std::io::Error::from(error), "polling the kernel log");
                return;
            }
        };
        loop {
            match logs.readable_mut().await {
                Ok(mut ready) => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                Err(error) => {
                    tracing::warn!(programs = what, %error, "reading the kernel log");
                    return;
                }
            }
        }
    })
}
