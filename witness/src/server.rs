//! The witness plugs its node into the shared request server.

use crate::node::Node;
use chainiac_cosi::PublicKey;
use chainiac_proto::frame::FrameClass;
use chainiac_proto::server::Handler;
use chainiac_proto::{Request, Response};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Witnesses take queries, submissions, peer messages and release submissions.
pub const ALLOWED: &[FrameClass] = &[FrameClass::Query, FrameClass::Submit, FrameClass::Peer, FrameClass::Build];

impl Handler for Node {
    async fn handle(self: Arc<Self>, caller: PublicKey, from: SocketAddr, request: Request) -> Response {
        Node::handle(&self, caller, from, request).await
    }

    fn refused(&self, _reason: &str) {
        self.metrics.refused_frames.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves `endpoint` until it is closed.
pub async fn serve(node: Arc<Node>, endpoint: quinn::Endpoint) {
    chainiac_proto::server::serve(node, endpoint, ALLOWED).await
}
