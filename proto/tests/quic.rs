//! Real QUIC over loopback: key pinning both ways, and refusal of bad frames without
//! harm to the connection.

use chainiac_cosi::SecretKey;
use chainiac_proto::endpoint::{self, peer_key, read_frame, write_frame, CallError};
use chainiac_proto::frame::{FrameClass, HEADER_LEN, VERSION};
use chainiac_proto::message::{ErrorCode, ErrorReply, NodeStatus, Request, Response};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A tiny server: answers `Status` with the caller's key in `address`, refuses bad frames.
async fn serve(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else { return };
            let caller = peer_key(&connection).map(|k| k.to_string()).unwrap_or_default();
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                let caller = caller.clone();
                tokio::spawn(async move {
                    let reply = match read_frame::<Request>(&mut recv, &[FrameClass::Query]).await {
                        Ok((_, Request::Status)) => Response::Status(NodeStatus {
                            key: [0; 32],
                            address: caller,
                            chains: vec![],
                            uptime_s: 0,
                            rounds_led: 0,
                            rounds_failed: 0,
                            blocks_signed: 0,
                            faults_named: 0,
                            round_ms_mean: 0,
                            round_ms_max: 0,
                            peers_up: 0,
                            refused_frames: 0,
                            blocks_adopted: 0,
                            chains_total: 0,
                            peers_left_out: 0,
                            timeline_age_ms: None,
                        }),
                        Ok(_) => Response::Error(ErrorReply::new(ErrorCode::BadRequest, "only status here")),
                        Err(e) => Response::Error(ErrorReply::new(ErrorCode::BadRequest, e.to_string())),
                    };
                    let _ = write_frame(&mut send, FrameClass::Response, &reply).await;
                });
            }
        });
    }
}

fn start_server(key: &SecretKey) -> std::net::SocketAddr {
    let endpoint = endpoint::server(key, "127.0.0.1:0".parse().unwrap()).unwrap();
    let address = endpoint.local_addr().unwrap();
    tokio::spawn(serve(endpoint));
    address
}

#[tokio::test]
async fn pinned_keys_are_enforced_both_ways() {
    let server_key = SecretKey::from_seed(&[1; 32]);
    let address = start_server(&server_key).to_string();
    let client = endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let me = SecretKey::from_seed(&[9; 32]);

    let connection = endpoint::connect(&client, &me, &address, &server_key.public_key()).await.unwrap();
    assert_eq!(peer_key(&connection), Some(server_key.public_key()), "the client sees the pinned key");
    match endpoint::call(&connection, &Request::Status, TIMEOUT).await.unwrap() {
        Response::Status(status) => assert_eq!(status.address, me.public_key().to_string(), "the server sees ours"),
        other => panic!("unexpected {other:?}"),
    }

    let impostor_expected = SecretKey::from_seed(&[2; 32]).public_key();
    let err = endpoint::connect(&client, &me, &address, &impostor_expected).await.unwrap_err();
    assert!(matches!(err, CallError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn bad_frames_are_refused_and_the_connection_survives() {
    let server_key = SecretKey::from_seed(&[3; 32]);
    let address = start_server(&server_key).to_string();
    let client = endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let me = SecretKey::from_seed(&[8; 32]);
    let connection = endpoint::connect(&client, &me, &address, &server_key.public_key()).await.unwrap();

    let mut bad_frames: Vec<Vec<u8>> = Vec::new();
    // 100 MB announced in a query frame.
    let mut huge = vec![VERSION, FrameClass::Query as u8];
    huge.extend_from_slice(&(100u32 << 20).to_le_bytes());
    bad_frames.push(huge);
    // Unknown version.
    bad_frames.push(vec![99, 1, 1, 0, 0, 0, 0]);
    // Garbage body.
    let mut garbage = vec![VERSION, FrameClass::Query as u8, 4, 0, 0, 0];
    garbage.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    bad_frames.push(garbage);
    // A peer-class frame where only queries are served.
    bad_frames.push(vec![VERSION, FrameClass::Peer as u8, 1, 0, 0, 0, 0]);

    for bytes in bad_frames {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        let (_, reply): (_, Response) = read_frame(&mut recv, &[FrameClass::Response]).await.unwrap();
        match reply {
            Response::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message),
            other => panic!("bad frame {bytes:?} answered with {other:?}"),
        }
        assert!(HEADER_LEN <= bytes.len());
    }
    // Still healthy.
    assert!(matches!(endpoint::call(&connection, &Request::Status, TIMEOUT).await.unwrap(), Response::Status(_)));
}

/// A handler for the shared server: `Status` at once; `GetHead` sleeps past any deadline.
struct Slow;

impl chainiac_proto::server::Handler for Slow {
    async fn handle(
        self: std::sync::Arc<Self>,
        _: chainiac_cosi::PublicKey,
        _: std::net::SocketAddr,
        request: Request,
    ) -> Response {
        if let Request::GetHead { .. } = request {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Response::Ack
    }
    fn refused(&self, _: &str) {}
}

fn start_limited(key: &SecretKey, limits: chainiac_proto::server::Limits) -> String {
    let endpoint = endpoint::server(key, "127.0.0.1:0".parse().unwrap()).unwrap();
    let address = endpoint.local_addr().unwrap().to_string();
    const ALLOWED: &[FrameClass] = &[FrameClass::Query, FrameClass::Submit];
    tokio::spawn(chainiac_proto::server::serve_with(std::sync::Arc::new(Slow), endpoint, ALLOWED, limits));
    address
}

/// SPEC §10.6: bodies are admitted against budgets before they are allocated, so one
/// connection announcing large frames and sending nothing stalls only itself; connections
/// per address are capped; a handler past its deadline is answered `Unavailable`.
#[tokio::test]
async fn peers_are_held_to_budgets_connections_and_deadlines() {
    let server_key = SecretKey::from_seed(&[4; 32]);
    let limits = chainiac_proto::server::Limits {
        body_bytes: 8 << 20,
        body_bytes_per_connection: 4 << 20,
        connections_per_address: 2,
        deadlines: [Duration::from_millis(300); 4],
    };
    let address = start_limited(&server_key, limits);
    let client = endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let me = SecretKey::from_seed(&[5; 32]);
    let hog = endpoint::connect(&client, &me, &address, &server_key.public_key()).await.unwrap();
    let polite = endpoint::connect(&client, &me, &address, &server_key.public_key()).await.unwrap();

    // The hog announces three 4 MiB submissions and sends no body: its budget holds one.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let (mut send, recv) = hog.open_bi().await.unwrap();
        let mut header = vec![VERSION, FrameClass::Submit as u8];
        header.extend_from_slice(&(4u32 << 20).to_le_bytes());
        send.write_all(&header).await.unwrap();
        stalled.push((send, recv));
    }
    // Another connection is served meanwhile.
    assert!(matches!(endpoint::call(&polite, &Request::Status, TIMEOUT).await.unwrap(), Response::Ack));

    // A third connection from the same address is refused.
    let third = endpoint::connect(&client, &me, &address, &server_key.public_key()).await;
    let refused = match third {
        Err(_) => true,
        Ok(connection) => endpoint::call(&connection, &Request::Status, TIMEOUT).await.is_err(),
    };
    assert!(refused, "a third connection from one address must be refused");

    // A handler past its deadline: answered, not left hanging.
    let chain = chainiac_skipchain::BlockId([1; 32]);
    match endpoint::call(&polite, &Request::GetHead { chain }, TIMEOUT).await {
        Err(CallError::Remote(reply)) => {
            assert_eq!(reply.code, ErrorCode::Unavailable);
            assert!(reply.message.contains("not answered within"), "{}", reply.message);
        }
        other => panic!("a request past its deadline must be answered Unavailable, got {other:?}"),
    }
    drop(stalled);
}
