//! The serving side, shared by every node: accept QUIC connections and streams, read one
//! request frame per stream, hand it to the node's handler, write the answer. Bad frames
//! are answered with an error and reported to the node; the connection carries on.

use crate::endpoint::{peer_key, write_frame, Endpoint};
use crate::frame::{self, FrameClass, HEADER_LEN};
use crate::message::{ErrorCode, ErrorReply, Request, Response};
use crate::CallError;
use chainiac_cosi::PublicKey;
use quinn::RecvStream;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// How long a stream may take to deliver its request (build jobs carry whole archives).
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What peers may make a node hold at once (SPEC §10.6). Request bodies are admitted
/// against byte budgets before a byte of them is allocated, so a peer that announces large
/// frames and sends nothing holds nothing but a wait.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request bodies being read, over every connection.
    pub body_bytes: usize,
    /// Request bodies being read on one connection (at least the largest frame allowed).
    pub body_bytes_per_connection: usize,
    /// Open connections from one IP address (an IPv6 /64 counts as one address).
    pub connections_per_address: usize,
    /// How long a request of each class may be handled before it is answered
    /// `Unavailable` (queries, submissions, peer messages, builds).
    pub deadlines: [Duration; 4],
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes: 256 << 20,
            body_bytes_per_connection: 64 << 20,
            connections_per_address: 256,
            deadlines: [
                Duration::from_secs(30),
                Duration::from_secs(300),
                Duration::from_secs(120),
                Duration::from_secs(7200),
            ],
        }
    }
}

impl Limits {
    fn deadline(&self, class: FrameClass) -> Duration {
        match class {
            FrameClass::Query | FrameClass::Response => self.deadlines[0],
            FrameClass::Submit => self.deadlines[1],
            FrameClass::Peer => self.deadlines[2],
            FrameClass::Build => self.deadlines[3],
        }
    }
}

/// Budgets are counted in KiB, so that a 64 MiB frame fits a semaphore's permit count.
fn kib(bytes: usize) -> u32 {
    bytes.div_ceil(1024).max(1) as u32
}

/// The address a peer counts as (connection caps here, chain-creation quotas in the
/// witness): an IPv4 address, or an IPv6 /64 — one host usually holds a whole /64, so
/// counting single IPv6 addresses would let it open connections or create without end.
pub fn counted_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(std::net::Ipv6Addr::from(segments))
            }
        },
        v4 => v4,
    }
}

/// Reads one request frame, admitting its body against both budgets before allocating it.
async fn read_request(
    recv: &mut RecvStream,
    allowed: &[FrameClass],
    budgets: [&Arc<Semaphore>; 2],
) -> Result<(FrameClass, Request), CallError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(|e| CallError::Stream(e.to_string()))?;
    let (class, len) = frame::check_header(&header, allowed)?;
    let permits = kib(len);
    let _connection =
        budgets[0].clone().acquire_many_owned(permits).await.map_err(|e| CallError::Stream(e.to_string()))?;
    let _node = budgets[1].clone().acquire_many_owned(permits).await.map_err(|e| CallError::Stream(e.to_string()))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| CallError::Stream(e.to_string()))?;
    Ok((class, frame::decode_body(&body)?))
}

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

/// Serves `endpoint` until it is closed, accepting request frames of the `allowed` classes,
/// within the default [`Limits`].
pub async fn serve<H: Handler>(handler: Arc<H>, endpoint: Endpoint, allowed: &'static [FrameClass]) {
    serve_with(handler, endpoint, allowed, Limits::default()).await
}

/// [`serve`] within `limits`.
pub async fn serve_with<H: Handler>(
    handler: Arc<H>,
    endpoint: Endpoint,
    allowed: &'static [FrameClass],
    limits: Limits,
) {
    let node_budget = Arc::new(Semaphore::new(kib(limits.body_bytes) as usize));
    let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    while let Some(incoming) = endpoint.accept().await {
        let address = counted_address(incoming.remote_address().ip());
        {
            let mut counts = per_address.lock().expect("lock");
            let open = counts.entry(address).or_default();
            if *open >= limits.connections_per_address {
                drop(counts);
                warn!(%address, limit = limits.connections_per_address, "connection refused: too many from one address");
                handler.refused("too many connections from one address");
                incoming.refuse();
                continue;
            }
            *open += 1;
        }
        let handler = handler.clone();
        let node_budget = node_budget.clone();
        let per_address = per_address.clone();
        tokio::spawn(async move {
            // Counted until this task ends, however it ends.
            struct Counted(Arc<Mutex<HashMap<IpAddr, usize>>>, IpAddr);
            impl Drop for Counted {
                fn drop(&mut self) {
                    let mut counts = self.0.lock().expect("lock");
                    if let Some(open) = counts.get_mut(&self.1) {
                        *open -= 1;
                        if *open == 0 {
                            counts.remove(&self.1);
                        }
                    }
                }
            }
            let _counted = Counted(per_address, address);
            let connection_budget = Arc::new(Semaphore::new(kib(limits.body_bytes_per_connection) as usize));
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
                let budgets = [connection_budget.clone(), node_budget.clone()];
                tokio::spawn(async move {
                    let read = tokio::time::timeout(
                        REQUEST_READ_TIMEOUT,
                        read_request(&mut recv, allowed, [&budgets[0], &budgets[1]]),
                    )
                    .await;
                    let refuse = |handler: &H, message: String| {
                        warn!(%remote, "refused frame: {message}");
                        handler.refused(&message);
                        Response::Error(ErrorReply::new(ErrorCode::BadRequest, message))
                    };
                    let response = match read {
                        Ok(Ok((class, request))) if class == request.class() => {
                            let deadline = limits.deadline(class);
                            let name = request.name();
                            match tokio::time::timeout(deadline, handler.clone().handle(caller, remote, request)).await
                            {
                                Ok(response) => response,
                                Err(_) => {
                                    warn!(%remote, request = name, "abandoned after {deadline:?}");
                                    Response::Error(ErrorReply::new(
                                        ErrorCode::Unavailable,
                                        format!("{name} was not answered within {} s; try again", deadline.as_secs()),
                                    ))
                                }
                            }
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
