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
