//! Upgrades (WebSocket and the like): the request asks, the app agrees with a 101, and
//! from then on the client's connection and the app's are spliced together.

use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::hop;
use super::reply::Reply;

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` + `Upgrade`).
pub fn requested<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let asks = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| hop::Connection::read(v.as_bytes()).upgrade);
    asks.then(|| request.headers().get(header::UPGRADE).cloned()).flatten()
}

/// Once the app answered 101, splices the client's connection to the app's.
pub fn splice(client: hyper::upgrade::OnUpgrade, app: &mut Reply) {
    if app.status != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let Some((mut app_side, early)) = app.upgraded.take() else {
        return;
    };
    tokio::spawn(async move {
        let Ok(client) = client.await else {
            return;
        };
        let mut client = TokioIo::new(client);
        // What the app sent right behind its 101 was read with the head.
        if !early.is_empty() && client.write_all(&early).await.is_err() {
            return;
        }
        // Ends when either side closes; errors are the peers' to see.
        let _ = tokio::io::copy_bidirectional(&mut client, &mut app_side).await;
    });
}
