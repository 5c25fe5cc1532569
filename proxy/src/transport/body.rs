//! The one request body type: read whole with its head by the HTTP/1.1 server, or
//! streamed from hyper with the size limit applied as it streams. An enum rather than a
//! boxed body: the common request (no body, or a small one) costs no allocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Limited;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::BoxError;

#[derive(Debug)]
pub enum RequestBody {
    /// Read with the head; `None` once taken.
    Buffered(Option<Bytes>),
    /// From hyper, cut off (an error) past the request body limit.
    Streaming(Limited<Incoming>),
}

impl RequestBody {
    pub fn buffered(bytes: Bytes) -> RequestBody {
        RequestBody::Buffered(Some(bytes))
    }

    pub fn streaming(body: Incoming, limit: u64) -> RequestBody {
        RequestBody::Streaming(Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)))
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Buffered(bytes) => {
                Poll::Ready(bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b))))
            }
            RequestBody::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Buffered(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            RequestBody::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Buffered(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Streaming(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_buffered_body_is_its_bytes_once() {
        let body = RequestBody::buffered(Bytes::from_static(b"hello"));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        let empty = RequestBody::buffered(Bytes::new());
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        assert!(empty.collect().await.unwrap().to_bytes().is_empty());
    }
}
