//! Capture of a guest's stdout/stderr for the invocation log.
//!
//! Unlike an in-memory pipe with a hard capacity, writes past the cap are
//! accepted and dropped: a chatty guest must not fail (Rust's `println!`
//! panics when stdout errors), it just gets its log truncated.

use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Clone)]
pub struct LogPipe {
    inner: Arc<Mutex<Buf>>,
}

struct Buf {
    data: BytesMut,
    cap: usize,
    truncated: bool,
}

impl LogPipe {
    pub fn new(cap: usize) -> LogPipe {
        LogPipe {
            inner: Arc::new(Mutex::new(Buf {
                data: BytesMut::new(),
                cap,
                truncated: false,
            })),
        }
    }

    pub(crate) fn push(&self, bytes: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = buf.cap.saturating_sub(buf.data.len());
        if bytes.len() > room {
            buf.truncated = true;
        }
        buf.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The last lines captured (at most about `max` bytes), joined by " / ",
    /// without taking them: what a trapping guest said last.
    pub fn tail(&self, max: usize) -> String {
        let buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&buf.data);
        let mut lines: Vec<&str> = Vec::new();
        let mut len = 0;
        for line in text.lines().rev().map(str::trim).filter(|l| !l.is_empty()) {
            if len + line.len() > max && !lines.is_empty() {
                break;
            }
            len += line.len();
            lines.push(line);
        }
        lines.reverse();
        lines.join(" / ")
    }

    /// Takes what was captured so far, as text, and starts over.
    pub fn take(&self) -> String {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::from_utf8_lossy(&buf.data).into_owned();
        if buf.truncated {
            text.push_str("\n[output truncated]");
        }
        buf.data.clear();
        buf.truncated = false;
        text
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
