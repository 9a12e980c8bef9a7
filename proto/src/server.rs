//! The serving side, shared by every node: accept QUIC connections and streams, read one
//! request frame per stream, hand it to the node's handler, write the answer. Bad frames
//! are answered with an error and reported to the node; the connection carries on.

use crate::endpoint::{peer_key, read_frame, write_frame, Endpoint};
use crate::frame::FrameClass;
use crate::message::{ErrorCode, ErrorReply, Request, Response};
use crate::CallError;
use chainiac_cosi::PublicKey;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// How long a stream may take to deliver its request (build jobs carry whole archives).
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What a node plugs into [`serve`].
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from the holder of `caller`, connected from `from`.
    fn handle(
        self: Arc<Self>,
        caller: PublicKey,
        from: SocketAddr,
        request: Request,
    ) -> impl Future<Output = Response> + Send;
    /// Called for every refused frame (for metrics).
    fn refused(&self, reason: &str);
}

/// Serves `endpoint` until it is closed, accepting request frames of the `allowed` classes.
pub async fn serve<H: Handler>(handler: Arc<H>, endpoint: Endpoint, allowed: &'static [FrameClass]) {
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(e) => {
                    debug!("handshake failed: {e}");
                    return;
                }
            };
            let Some(caller) = peer_key(&connection) else {
                warn!(remote = %connection.remote_address(), "connection without a usable key closed");
                connection.close(1u32.into(), b"no key");
                return;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                let handler = handler.clone();
                let remote = connection.remote_address();
                tokio::spawn(async move {
                    let read =
                        tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame::<Request>(&mut recv, allowed)).await;
                    let refuse = |handler: &H, message: String| {
                        warn!(%remote, "refused frame: {message}");
                        handler.refused(&message);
                        Response::Error(ErrorReply::new(ErrorCode::BadRequest, message))
                    };
                    let response = match read {
                        Ok(Ok((class, request))) if class == request.class() => {
                            handler.clone().handle(caller, remote, request).await
                        }
                        Ok(Ok((class, request))) => {
                            refuse(&handler, format!("{} sent in a {class:?} frame", request.name()))
                        }
                        Ok(Err(CallError::Frame(e))) => refuse(&handler, e.to_string()),
                        Ok(Err(e)) => {
                            debug!(%remote, "stream failed: {e}");
                            return;
                        }
                        Err(_) => refuse(&handler, "request not received in time".into()),
                    };
                    if let Err(e) = write_frame(&mut send, FrameClass::Response, &response).await {
                        debug!(%remote, "answer not delivered: {e}");
                    }
                });
            }
        });
    }
}
