//! Accepts QUIC connections and streams, reads one request frame per stream, hands it to
//! the node and writes the answer. Bad frames are answered with an error and counted; the
//! connection and the node carry on.

use crate::node::Node;
use chainiac_proto::endpoint::{peer_key, read_frame, write_frame};
use chainiac_proto::frame::FrameClass;
use chainiac_proto::message::{ErrorCode, ErrorReply, Request, Response};
use chainiac_proto::CallError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// How long a stream may take to deliver its request.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `endpoint` until it is closed.
pub async fn serve(node: Arc<Node>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let node = node.clone();
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
                let node = node.clone();
                let remote = connection.remote_address();
                tokio::spawn(async move {
                    let allowed = [FrameClass::Query, FrameClass::Submit, FrameClass::Peer];
                    let read =
                        tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame::<Request>(&mut recv, &allowed)).await;
                    let response = match read {
                        Ok(Ok((class, request))) if class == request.class() => {
                            node.handle(caller, remote, request).await
                        }
                        Ok(Ok((class, request))) => {
                            refuse(&node, format!("{} sent in a {class:?} frame", request.name()))
                        }
                        Ok(Err(CallError::Frame(e))) => {
                            warn!(%remote, "refused frame: {e}");
                            refuse(&node, e.to_string())
                        }
                        Ok(Err(e)) => {
                            debug!(%remote, "stream failed: {e}");
                            return;
                        }
                        Err(_) => refuse(&node, "request not received in time".into()),
                    };
                    if let Err(e) = write_frame(&mut send, FrameClass::Response, &response).await {
                        debug!(%remote, "answer not delivered: {e}");
                    }
                });
            }
        });
    }
}

fn refuse(node: &Node, message: String) -> Response {
    node.metrics.refused_frames.fetch_add(1, Ordering::Relaxed);
    Response::Error(ErrorReply::new(ErrorCode::BadRequest, message))
}
