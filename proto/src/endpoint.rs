//! QUIC endpoints (quinn) and one-request-per-stream calls.

use crate::frame::{self, FrameClass, FrameError, HEADER_LEN};
use crate::message::{ErrorReply, Request, Response};
use crate::tls;
use chainiac_cosi::{PublicKey, SecretKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
pub use quinn::{Connection, Endpoint};
use quinn::{RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The name every node answers to in TLS; identity comes from the pinned key, not names.
pub const SERVER_NAME: &str = "chainiac";

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("stream failed: {0}")]
    Stream(String),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("refused by the node: {0}")]
    Remote(ErrorReply),
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("QUIC setup: {0}")]
    Quic(String),
    #[error("cannot bind {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("30 s is a valid idle timeout")));
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    // Requests handled at once per connection (each stream is one request).
    transport.max_concurrent_bidi_streams(64u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    Arc::new(transport)
}

/// The tag of the stateless-reset key's derivation (SPEC §10.1).
pub const TAG_STATELESS_RESET: &str = "chainiac/v1/quic/stateless-reset";

/// A node's endpoint: serves on `listen` with `key`, and connects out with it too. Its
/// stateless-reset key is derived from the node key, so a restarted node resets the
/// connections its previous run had at their first packet, and peers reconnect at once
/// instead of waiting for the idle timeout.
pub fn server(key: &SecretKey, listen: SocketAddr) -> Result<Endpoint, EndpointError> {
    let crypto =
        QuicServerConfig::try_from(tls::server_config(key)?).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    // The connection ids' hash key too: the new run must take the old run's ids for its
    // own, or it drops their packets as invalid instead of resetting them.
    let mut seed = key.seed();
    let mut reset_key = chainiac_cosi::hash::sha3_256(TAG_STATELESS_RESET, &[&seed]);
    let mut cid_key = chainiac_cosi::hash::sha3_256(TAG_STATELESS_RESET, &[&seed, b"cid"]);
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_key);
    let cid_hash_key = u64::from_le_bytes(cid_key[..8].try_into().expect("8 bytes"));
    zeroize::Zeroize::zeroize(&mut seed);
    zeroize::Zeroize::zeroize(&mut reset_key);
    zeroize::Zeroize::zeroize(&mut cid_key);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(hmac));
    endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_hash_key)));
    let socket = std::net::UdpSocket::bind(listen).map_err(|source| EndpointError::Bind { address: listen, source })?;
    Endpoint::new(endpoint_config, Some(config), socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| EndpointError::Bind { address: listen, source })
}

/// An endpoint that only connects out (clients).
pub fn client(bind: SocketAddr) -> Result<Endpoint, EndpointError> {
    Endpoint::client(bind).map_err(|source| EndpointError::Bind { address: bind, source })
}

/// Connects to the node at `address` whose key must be `server`, presenting `own`.
pub async fn connect(
    endpoint: &Endpoint,
    own: &SecretKey,
    address: &str,
    server: &PublicKey,
) -> Result<Connection, CallError> {
    let fail = |reason: String| CallError::Connect { address: address.to_string(), reason };
    let socket = resolve(address).await.map_err(fail)?;
    let crypto = QuicClientConfig::try_from(tls::client_config(own, server).map_err(|e| fail(e.to_string()))?)
        .map_err(|e| fail(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    let connecting = endpoint.connect_with(config, socket, SERVER_NAME).map_err(|e| fail(e.to_string()))?;
    connecting.await.map_err(|e| fail(e.to_string()))
}

async fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(socket) = address.parse() {
        return Ok(socket);
    }
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "the name resolves to no address".to_string())
}

/// The key the peer of `connection` proved it holds.
pub fn peer_key(connection: &Connection) -> Option<PublicKey> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    tls::key_from_spki(certs.first()?.as_ref())
}

/// Reads one frame of an allowed class, refusing oversized, unknown-version and
/// malformed frames before or while reading.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    allowed: &[FrameClass],
) -> Result<(FrameClass, T), CallError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(|e| CallError::Stream(e.to_string()))?;
    let (class, len) = frame::check_header(&header, allowed)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| CallError::Stream(e.to_string()))?;
    Ok((class, frame::decode_body(&body)?))
}

pub async fn write_frame<T: Serialize>(send: &mut SendStream, class: FrameClass, message: &T) -> Result<(), CallError> {
    let bytes = frame::encode(class, message)?;
    send.write_all(&bytes).await.map_err(|e| CallError::Stream(e.to_string()))?;
    send.finish().map_err(|e| CallError::Stream(e.to_string()))
}

/// Sends `request` on a new stream and waits up to `timeout` for the answer. A
/// [`Response::Error`] comes back as [`CallError::Remote`].
pub async fn call(connection: &Connection, request: &Request, timeout: Duration) -> Result<Response, CallError> {
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| CallError::Stream(e.to_string()))?;
        write_frame(&mut send, request.class(), request).await?;
        let (_, response): (_, Response) = read_frame(&mut recv, &[FrameClass::Response]).await?;
        Ok(response)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(CallError::Timeout(timeout)),
        Ok(Ok(Response::Error(reply))) => Err(CallError::Remote(reply)),
        Ok(other) => other,
    }
}

/// Connections to known nodes, opened on first use and reopened when they drop.
pub struct Pool {
    endpoint: Endpoint,
    own: Arc<SecretKey>,
    connections: Mutex<HashMap<(PublicKey, String), Connection>>,
}

impl Pool {
    pub fn new(endpoint: Endpoint, own: Arc<SecretKey>) -> Self {
        Pool { endpoint, own, connections: Mutex::new(HashMap::new()) }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connection(&self, address: &str, key: &PublicKey, timeout: Duration) -> Result<Connection, CallError> {
        let slot = (*key, address.to_string());
        if let Some(connection) = self.connections.lock().expect("pool lock").get(&slot) {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let connection = tokio::time::timeout(timeout, connect(&self.endpoint, &self.own, address, key))
            .await
            .map_err(|_| CallError::Timeout(timeout))??;
        self.connections.lock().expect("pool lock").insert(slot, connection.clone());
        Ok(connection)
    }

    /// Calls the node at `address` with key `key`; one retry on a fresh connection if the
    /// cached one turns out to be dead.
    pub async fn call(
        &self,
        address: &str,
        key: &PublicKey,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let connection = self.connection(address, key, timeout).await?;
        match call(&connection, request, timeout).await {
            Err(CallError::Stream(_)) => {
                self.forget(address, key);
                let connection = self.connection(address, key, timeout).await?;
                call(&connection, request, timeout).await
            }
            Err(CallError::Timeout(t)) => {
                // The peer may be gone for good (or restarted without our packets reaching
                // it): connect afresh next time.
                self.forget(address, key);
                Err(CallError::Timeout(t))
            }
            other => other,
        }
    }

    /// How many cached connections are still open.
    pub fn live_connections(&self) -> usize {
        self.connections.lock().expect("pool lock").values().filter(|c| c.close_reason().is_none()).count()
    }

    fn forget(&self, address: &str, key: &PublicKey) {
        if let Some(connection) = self.connections.lock().expect("pool lock").remove(&(*key, address.to_string())) {
            connection.close(0u32.into(), b"unresponsive");
        }
    }
}
