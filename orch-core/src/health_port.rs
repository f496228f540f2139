//! The plain-HTTP port every orch daemon serves for probes and scrapers
//! (/healthz, /readyz, /metrics): HTTP/1.1, GET only, one request per
//! connection. What probes and Prometheus need, nothing more.

use std::future::Future;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a caller has to send its request (an idle connection is
/// closed, not held).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An answer: status line text, content type, body.
pub struct Answer {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    pub fn text(status: &'static str, body: impl Into<String>) -> Self {
        Answer {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }

    /// Prometheus' text exposition format.
    pub fn metrics(body: String) -> Self {
        Answer {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4",
            body,
        }
    }

    pub fn not_found() -> Self {
        Answer::text("404 Not Found", "not found")
    }
}

/// Serves `listener` until the process ends: each GET's path goes to
/// `route`; other methods get 405.
pub async fn serve<F, Fut>(listener: TcpListener, route: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, route).await {
                tracing::debug!(%error, "health port request");
            }
        });
    }
}

async fn answer<F, Fut>(mut stream: TcpStream, route: F) -> std::io::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Answer>,
{
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buffer))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let answer = if method == "GET" {
        route(path.to_string()).await
    } else {
        Answer::text("405 Method Not Allowed", "GET only")
    };
    let response = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        answer.status,
        answer.content_type,
        answer.body.len(),
        answer.body
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
