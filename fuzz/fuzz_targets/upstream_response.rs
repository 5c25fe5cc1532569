//! The app's responses as the upstream client reads them: the head parser (with every
//! request method that changes framing) and the chunked body decoder after it.
#![no_main]

use bytes::BytesMut;
use hyper::Method;
use libfuzzer_sys::fuzz_target;
use portcullis_proxy::transport::h1_codec::{Chunk, ChunkedDecoder, parse_response_head};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let method = match selector % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::POST,
        _ => Method::CONNECT,
    };
    let mut buf = BytesMut::from(bytes);
    if let Ok(Some(_head)) = parse_response_head(&mut buf, &method, selector & 0x80 != 0) {
        let mut decoder = ChunkedDecoder::default();
        while let Ok(Some(Chunk::Data(_))) = decoder.decode(&mut buf) {}
    }
});
