//! Connection wrappers: idle timeout, and bytes read already given back (a handoff).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps a connection so that it fails with `TimedOut` once no byte has moved either
/// way for `idle` (to within a quarter of it). Reads and writes only raise a flag; a timer
/// that ticks four times per `idle` clears it and counts the quiet ticks, so moving bytes
/// costs no clock read.
pub struct IdleTimeout<T> {
    inner: T,
    tick: Duration,
    active: bool,
    quiet_ticks: u32,
    timer: Pin<Box<Sleep>>,
    on_timeout: Option<Box<dyn FnOnce() + Send + Sync>>,
}

const TICKS_PER_IDLE: u32 = 4;

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, idle: Duration, on_timeout: impl FnOnce() + Send + Sync + 'static) -> IdleTimeout<T> {
        let tick = (idle / TICKS_PER_IDLE).max(Duration::from_millis(1));
        IdleTimeout {
            inner,
            tick,
            active: false,
            quiet_ticks: 0,
            timer: Box::pin(tokio::time::sleep_until(Instant::now() + tick)),
            on_timeout: Some(Box::new(on_timeout)),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if std::mem::take(&mut self.active) {
                self.quiet_ticks = 0;
            } else {
                self.quiet_ticks += 1;
            }
            if self.quiet_ticks >= TICKS_PER_IDLE {
                if let Some(hook) = self.on_timeout.take() {
                    hook();
                }
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle"));
            }
            let next = self.timer.deadline() + self.tick;
            self.timer.as_mut().reset(next);
        }
    }

    fn touch<R>(&mut self, result: &Poll<io::Result<R>>) {
        if let Poll::Ready(Ok(_)) = result {
            self.active = true;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.touch(&result);
        if result.is_pending()
            && let Poll::Ready(err) = this.poll_idle(cx)
        {
            return Poll::Ready(Err(err));
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.touch(&result);
        if result.is_pending()
            && let Poll::Ready(err) = this.poll_idle(cx)
        {
            return Poll::Ready(Err(err));
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.touch(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection whose first bytes were read already: they are read again, then the rest.
/// Lets hyper take over a connection that [`super::h1_server`] started on.
pub struct Rewind<T> {
    read: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(inner: T, read: Bytes) -> Rewind<T> {
        Rewind { read, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_a_busy_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = fired.clone();
        let mut server = IdleTimeout::new(server, Duration::from_secs(5), move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        let mut client = client;
        let writer = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                client.write_all(b"x").await.unwrap();
            }
            client
        });
        let mut buf = [0u8; 1];
        for _ in 0..4 {
            server.read_exact(&mut buf).await.unwrap();
        }
        let last_byte = Instant::now();
        let _client = writer.await.unwrap();
        let err = server.read_exact(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Fifteen seconds of traffic did not time out; quiet does, within a quarter of idle.
        let quiet = last_byte.elapsed();
        assert!(
            quiet >= Duration::from_secs(5) && quiet <= Duration::from_millis(6250),
            "{quiet:?}"
        );
        assert!(fired.load(std::sync::atomic::Ordering::SeqCst));
    }
}
