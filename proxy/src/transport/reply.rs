//! The one response type of the transport: what goes back to the client, from the app or
//! from the sidecar, whichever server (ours for HTTP/1.1, hyper's for HTTP/2) writes it.
//!
//! The app's headers over HTTP/1.1 stay as they were read ([`RawHeaders`]) and are written
//! on as they came; the sidecar's own go in a map beside them. Policy edits ([`set`],
//! [`append`]) work on both without building a map: only hyper's server needs one.
//!
//! [`set`]: ReplyHeaders::set
//! [`append`]: ReplyHeaders::append

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::net::TcpStream;

use super::raw_headers::RawHeaders;
use crate::Body;
use crate::policy::answer::{Answer, ResponseEdits};
use crate::policy::headers::X_CORRELATION_ID;

/// A response on its way to the client.
pub struct Reply {
    pub status: StatusCode,
    pub headers: ReplyHeaders,
    pub body: Body,
    /// The app's connection once it switched protocols (101), and what it sent past its
    /// response head: the upgrade's splice takes them.
    pub upgraded: Option<(TcpStream, Bytes)>,
}

impl Reply {
    pub fn new(status: StatusCode, headers: ReplyHeaders, body: Body) -> Reply {
        Reply {
            status,
            headers,
            body,
            upgraded: None,
        }
    }

    /// What the sidecar answers itself.
    pub fn from_answer(answer: Answer) -> Reply {
        Reply::new(answer.status, ReplyHeaders::from_map(answer.headers), full(answer.body))
    }

    /// A response whose headers came as a map (the app over h2c).
    pub fn from_response(response: Response<Body>) -> Reply {
        let (parts, body) = response.into_parts();
        Reply::new(parts.status, ReplyHeaders::from_map(parts.headers), body)
    }

    /// As hyper's server wants it.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.into_map();
        response
    }

    /// The policy's edits: our correlation id, then CORS and deprecation headers.
    pub fn apply(&mut self, edits: &ResponseEdits) {
        self.headers.set(X_CORRELATION_ID, edits.correlation_id.clone());
        for (name, value, replace) in edits.iter() {
            if replace {
                self.headers.set(name.clone(), value.clone());
            } else {
                self.headers.append(name.clone(), value.clone());
            }
        }
    }
}

/// A body of these bytes.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A response's headers: the app's as read, then the sidecar's (or every header, when
/// they came as a map).
#[derive(Debug, Default)]
pub struct ReplyHeaders {
    raw: RawHeaders,
    map: HeaderMap,
}

impl ReplyHeaders {
    pub fn from_raw(raw: RawHeaders) -> ReplyHeaders {
        ReplyHeaders {
            raw,
            map: HeaderMap::new(),
        }
    }

    pub fn from_map(map: HeaderMap) -> ReplyHeaders {
        ReplyHeaders {
            raw: RawHeaders::default(),
            map,
        }
    }

    /// `name` becomes `value`, whoever set it before.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.raw.remove(&name);
        self.map.insert(name, value);
    }

    /// `value` goes beside the values `name` has.
    pub fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.map.append(name, value);
    }

    pub fn contains(&self, name: &HeaderName) -> bool {
        self.map.contains_key(name) || self.raw.contains(name)
    }

    /// The app's headers as read (no framing or hop-by-hop one among them).
    pub fn raw(&self) -> &RawHeaders {
        &self.raw
    }

    /// The headers in a map.
    pub fn map(&self) -> &HeaderMap {
        &self.map
    }

    /// Every header in one map, the app's first.
    pub fn into_map(self) -> HeaderMap {
        let mut map = self.map;
        if !self.raw.is_empty() || self.raw.length.is_some() {
            self.raw.into_map(&mut map);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use hyper::Method;
    use hyper::header;

    use super::*;
    use crate::transport::h1_codec::parse_response_head;

    fn app(head: &str) -> ReplyHeaders {
        let mut buf = BytesMut::from(head);
        let head = parse_response_head(&mut buf, &Method::GET, false).unwrap().unwrap();
        ReplyHeaders::from_raw(head.headers)
    }

    #[test]
    fn edits_replace_or_join_the_apps_headers_without_a_map_until_one_is_needed() {
        let mut headers = app(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Correlation-ID: app\r\nVary: Accept\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\n\r\n",
        );
        let mut edits = ResponseEdits::new(HeaderValue::from_static("ours"));
        edits.set(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://app.example.com"),
        );
        edits.append(header::VARY, HeaderValue::from_static("Origin"));
        let mut reply = Reply::new(StatusCode::OK, std::mem::take(&mut headers), full(Bytes::new()));
        reply.apply(&edits);
        let raw: Vec<_> = reply.headers.raw().iter().map(|(n, _)| n.to_vec()).collect();
        assert_eq!(
            raw,
            [b"Content-Type".to_vec(), b"Vary".to_vec()],
            "replaced ones left the app's"
        );
        assert!(reply.headers.contains(&header::CONTENT_TYPE) && reply.headers.contains(&X_CORRELATION_ID));
        let map = reply.headers.into_map();
        assert_eq!(map[X_CORRELATION_ID], "ours");
        assert_eq!(map[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        let vary: Vec<_> = map.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept", "Origin"], "the app's first, then ours");
        assert_eq!(
            map[header::CONTENT_LENGTH],
            "2",
            "the declared length survives into a map"
        );
    }

    #[test]
    fn answers_carry_their_headers() {
        let answer = Answer::error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "no",
            &HeaderValue::from_static("c1"),
        );
        let response = Reply::from_answer(answer).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[X_CORRELATION_ID], "c1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
