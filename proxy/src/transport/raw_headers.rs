//! Headers as they were read: where httparse found each name and value in a head, kept
//! with the head's bytes, so that a header becomes a `HeaderName`/`HeaderValue` (or is
//! written on) without being copied or checked twice.
//!
//! This is the one place of the sidecar with `unsafe`: a value httparse accepted becomes
//! a `HeaderValue` without `HeaderValue`'s own byte-by-byte check, which repeated
//! httparse's and cost a tenth of a request's parse. What makes that sound — httparse
//! accepts in a header value exactly the bytes `HeaderValue` does — is pinned by a test
//! over all 256 byte values below.

use bytes::{Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// As many as hyper's server accepts by default.
pub const MAX_HEADERS: usize = 100;

/// The app's response headers as they came, hop-by-hop ones left out. The HTTP/1.1
/// server writes them to its client straight from the bytes read; they become a map only
/// where one is needed (hyper's server, for HTTP/2 clients), with [`RawHeaders::into_map`].
#[derive(Debug, Clone, Default)]
pub struct RawHeaders {
    bytes: Bytes,
    /// Each within `bytes`, where httparse found it (see [`RawHead::headers`]); neither
    /// hop-by-hop headers nor `Content-Length`.
    spans: Vec<Span>,
    /// The `Content-Length` the app declared.
    pub length: Option<u64>,
    /// Whether the app sent a `Date`.
    pub dated: bool,
}

impl RawHeaders {
    /// Name (as the app spelled it) and value of each header, in order; not
    /// `Content-Length` (see `length`).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .map(|span| (span_name(&self.bytes, span), span_value(&self.bytes, span)))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Drops every header called `name` (lowercase, as a [`HeaderName`] is).
    pub fn remove(&mut self, name: &HeaderName) {
        let name = name.as_str().as_bytes();
        let bytes = &self.bytes;
        self.spans
            .retain(|span| !span_name(bytes, span).eq_ignore_ascii_case(name));
    }

    /// Whether a header called `name` (lowercase) is among them.
    pub fn contains(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        self.spans
            .iter()
            .any(|span| span_name(&self.bytes, span).eq_ignore_ascii_case(name))
    }

    /// Puts the headers into `map`, ahead of those it holds.
    pub fn into_map(self, map: &mut HeaderMap) {
        let mut all = HeaderMap::with_capacity(self.spans.len() + map.len());
        // httparse checked each name is a token, which is what a header name is.
        for (name, value) in self.spans.iter().filter_map(|span| span_header(&self.bytes, span)) {
            all.append(name, value);
        }
        if let Some(length) = self.length {
            all.append(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        let mut last = None;
        for (name, value) in std::mem::take(map) {
            // `None`: another value of the header before.
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                all.append(name.clone(), value);
            }
        }
        *map = all;
    }
}

/// The header at `span` of `bytes`, its value a slice of them. `None` for a name that is
/// not a header name, or a span outside `bytes`.
///
/// Spans are only made by [`HeaderSpans::of`], from where httparse found each header in a
/// head, and are kept only with the bytes taken from that head ([`HeaderSpans::split`]
/// checks the buffer by address and length; `of` refuses a part outside the head).
#[allow(unsafe_code)]
fn span_header(bytes: &Bytes, span: &Span) -> Option<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(bytes.get(span_range(span.name_at, span.name_len))?).ok()?;
    let range = span_range(span.value_at, span.value_len);
    if range.end > bytes.len() {
        return None;
    }
    // SAFETY: as above, the bytes are a value httparse accepted, and httparse accepts in a
    // value exactly the bytes `HeaderValue` does (HTAB, SP to `~`, 0x80 to 0xFF). Checking
    // them again, byte by byte, cost a tenth of the request's parse (a bearer token is long).
    let value = unsafe { HeaderValue::from_maybe_shared_unchecked(bytes.slice(range)) };
    Some((name, value))
}

fn span_range(at: u32, len: u32) -> std::ops::Range<usize> {
    at as usize..at as usize + len as usize
}

fn span_name<'a>(bytes: &'a [u8], span: &Span) -> &'a [u8] {
    bytes.get(span_range(span.name_at, span.name_len)).unwrap_or_default()
}

fn span_value<'a>(bytes: &'a [u8], span: &Span) -> &'a [u8] {
    bytes.get(span_range(span.value_at, span.value_len)).unwrap_or_default()
}

/// Where each header httparse found lies in the head it parsed (in storage of the
/// caller's: [`HeaderSpans::STORAGE`]).
pub struct HeaderSpans<'s> {
    spans: &'s [Span],
    /// Some span was not inside the head: no header is believed (see [`RawHead::headers`]).
    broken: bool,
    head_at: usize,
    head_len: usize,
}

/// A head taken off the read buffer, and where each of its headers lies in it: its values
/// are slices of the head's bytes rather than copies.
pub struct RawHead<'s> {
    pub bytes: Bytes,
    spans: HeaderSpans<'s>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    name_at: u32,
    name_len: u32,
    value_at: u32,
    value_len: u32,
}

impl<'s> HeaderSpans<'s> {
    pub const STORAGE: [Span; MAX_HEADERS] = [Span {
        name_at: 0,
        name_len: 0,
        value_at: 0,
        value_len: 0,
    }; MAX_HEADERS];

    /// `parsed` (at most [`MAX_HEADERS`]) as httparse found them in the first `head_len`
    /// bytes of `head`.
    pub fn of(
        parsed: &[httparse::Header<'_>],
        head: &[u8],
        head_len: usize,
        storage: &'s mut [Span; MAX_HEADERS],
    ) -> HeaderSpans<'s> {
        let base = head.as_ptr() as usize;
        let head_len = head_len.min(head.len());
        // Where `part` starts in the head, if it is in it (an empty part may point anywhere).
        let at = |part: &[u8]| {
            let at = (part.as_ptr() as usize).wrapping_sub(base);
            match part.is_empty() {
                true => Some(0),
                false => (at < head_len && part.len() <= head_len - at).then_some(at),
            }
        };
        let mut count = 0;
        let mut broken = false;
        for (span, h) in storage.iter_mut().zip(parsed) {
            let (Some(name_at), Some(value_at)) = (at(h.name.as_bytes()), at(h.value)) else {
                broken = true;
                break;
            };
            // Offsets fit: a head is far shorter than 4 GiB.
            *span = Span {
                name_at: name_at as u32,
                name_len: h.name.len() as u32,
                value_at: value_at as u32,
                value_len: h.value.len() as u32,
            };
            count += 1;
        }
        HeaderSpans {
            spans: &storage[..count],
            broken,
            head_at: base,
            head_len,
        }
    }

    /// Takes the head off `buf`, the buffer the spans were taken in.
    pub fn split(mut self, buf: &mut BytesMut) -> RawHead<'s> {
        if buf.as_ptr() as usize != self.head_at || buf.len() < self.head_len {
            // Not the bytes that were parsed.
            self.broken = true;
            return RawHead {
                bytes: Bytes::new(),
                spans: self,
            };
        }
        RawHead {
            bytes: buf.split_to(self.head_len).freeze(),
            spans: self,
        }
    }
}

impl RawHead<'_> {
    pub fn name(&self, span: &Span) -> &[u8] {
        span_name(&self.bytes, span)
    }

    pub fn value(&self, span: &Span) -> &[u8] {
        span_value(&self.bytes, span)
    }

    /// Where each header lies; `None` when some header was not inside the head (then
    /// none is believed).
    pub fn spans(&self) -> Option<&[Span]> {
        (!self.spans.broken).then_some(self.spans.spans)
    }

    /// The headers at `kept` (spans of this head) as the app's headers of a response.
    pub fn into_headers(self, kept: Vec<Span>, length: Option<u64>, dated: bool) -> RawHeaders {
        RawHeaders {
            bytes: self.bytes,
            spans: kept,
            length,
            dated,
        }
    }

    /// The headers in order; `None` for a name that is not a valid header name.
    pub fn headers(&self) -> impl Iterator<Item = Option<(HeaderName, HeaderValue)>> + '_ {
        let (spans, broken) = match self.spans.broken {
            false => (self.spans.spans, None),
            true => (&[][..], Some(None)),
        };
        broken
            .into_iter()
            .chain(spans.iter().map(|span| span_header(&self.bytes, span)))
    }

    /// How many headers the head has.
    pub fn header_count(&self) -> usize {
        self.spans.spans.len()
    }
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use super::*;

    /// The bytes httparse accepts in a header value, one byte at a time between two
    /// visible characters: each is what `HeaderValue` accepts, or the unchecked
    /// construction above would make a `HeaderValue` that `HeaderValue` itself would refuse.
    #[test]
    fn httparse_and_header_value_accept_the_same_value_bytes() {
        let mut accepted = 0;
        for byte in 0..=255u8 {
            let mut head = b"HTTP/1.1 200 OK\r\nx: a".to_vec();
            head.push(byte);
            head.extend_from_slice(b"b\r\n\r\n");
            let mut buf = BytesMut::from(&head[..]);
            let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 4];
            let mut parsed = httparse::Response::new(&mut []);
            let by_httparse = matches!(
                httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, &buf, &mut slots),
                Ok(httparse::Status::Complete(_))
            );
            let value = [b'a', byte, b'b'];
            let by_header_value = HeaderValue::from_bytes(&value).is_ok();
            assert_eq!(by_httparse, by_header_value, "byte {byte:#04x}");
            if by_httparse {
                assert_eq!(parsed.headers[0].value, value, "byte {byte:#04x} read as sent");
                // And the spans made from where httparse found it give the same value.
                let mut storage = HeaderSpans::STORAGE;
                let len = buf.len();
                let raw = HeaderSpans::of(parsed.headers, &buf, len, &mut storage).split(&mut buf);
                let (name, read) = raw.headers().next().flatten().expect("one header");
                assert_eq!((name.as_str(), read.as_bytes()), ("x", &value[..]));
                accepted += 1;
            }
        }
        // HTAB, SP to `~`, and 0x80 to 0xFF.
        assert_eq!(accepted, 1 + 95 + 128);
    }
}
