//! Framing: every message on a stream is one frame.
//!
//! ```text
//! frame = version (u8) || class (u8) || length (u32, little-endian) || postcard(message)
//! ```
//!
//! The receiver checks the version, the class and the length against that class's hard
//! limit *before* reading the body, so an oversized frame costs it six bytes, and decodes
//! the body as exactly one message (no trailing bytes).

use serde::{de::DeserializeOwned, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u8 = 5;
/// Bytes before the body.
pub const HEADER_LEN: usize = 6;

/// What kind of message a frame holds; each class has its own size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameClass {
    /// A read-only request anyone may send.
    Query = 1,
    /// A request that asks the cothority to append something; anyone may send it.
    Submit = 2,
    /// A request between witnesses of one roster.
    Peer = 3,
    /// Any answer.
    Response = 4,
    /// A request carrying a source archive (to a verifier, or a release submission).
    Build = 5,
}

impl FrameClass {
    /// The largest body a frame of this class may have.
    pub fn limit(self) -> usize {
        match self {
            FrameClass::Query => 64 << 10,
            FrameClass::Submit => 4 << 20,
            FrameClass::Peer => 8 << 20,
            FrameClass::Response => 64 << 20,
            FrameClass::Build => 64 << 20,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(FrameClass::Query),
            2 => Some(FrameClass::Submit),
            3 => Some(FrameClass::Peer),
            4 => Some(FrameClass::Response),
            5 => Some(FrameClass::Build),
            _ => None,
        }
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame has protocol version {got}, this node speaks version {VERSION}")]
    UnknownVersion { got: u8 },
    #[error("frame class {got} is unknown")]
    UnknownClass { got: u8 },
    #[error("frame of class {class:?} was expected here, got {got:?}")]
    UnexpectedClass { class: FrameClass, got: FrameClass },
    #[error("frame body of {len} bytes exceeds the {limit}-byte limit for {class:?} frames")]
    TooLarge { class: FrameClass, len: usize, limit: usize },
    #[error("frame is truncated: {got} of {expected} bytes")]
    Truncated { expected: usize, got: usize },
    #[error("frame body does not decode: {0}")]
    Malformed(String),
    #[error("{0} bytes follow the message in its frame")]
    TrailingBytes(usize),
}

/// Encodes `message` as one frame of `class`. Fails only if the body exceeds the limit.
pub fn encode<T: Serialize>(class: FrameClass, message: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_allocvec(message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > class.limit() {
        return Err(FrameError::TooLarge { class, len: body.len(), limit: class.limit() });
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.push(VERSION);
    frame.push(class as u8);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Checks a frame header: version, class, and the body length against the class's limit.
/// `allowed` lists the classes acceptable at this point of the conversation.
pub fn check_header(header: &[u8; HEADER_LEN], allowed: &[FrameClass]) -> Result<(FrameClass, usize), FrameError> {
    if header[0] != VERSION {
        return Err(FrameError::UnknownVersion { got: header[0] });
    }
    let class = FrameClass::from_byte(header[1]).ok_or(FrameError::UnknownClass { got: header[1] })?;
    if !allowed.contains(&class) {
        return Err(FrameError::UnexpectedClass { class: allowed[0], got: class });
    }
    let len = u32::from_le_bytes(header[2..6].try_into().expect("4 bytes")) as usize;
    if len > class.limit() {
        return Err(FrameError::TooLarge { class, len, limit: class.limit() });
    }
    Ok((class, len))
}

/// Decodes a body as exactly one `T`.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Decodes a whole frame held in memory (header and body).
pub fn decode<T: DeserializeOwned>(frame: &[u8], allowed: &[FrameClass]) -> Result<(FrameClass, T), FrameError> {
    let header: &[u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated { expected: HEADER_LEN, got: frame.len() })?;
    let (class, len) = check_header(header, allowed)?;
    let body = &frame[HEADER_LEN..];
    if body.len() < len {
        return Err(FrameError::Truncated { expected: len, got: body.len() });
    }
    if body.len() > len {
        return Err(FrameError::TrailingBytes(body.len() - len));
    }
    Ok((class, decode_body(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_checks_name_the_problem() {
        let frame = encode(FrameClass::Query, &(7u32, "x".to_string())).unwrap();
        assert_eq!(&frame[..2], &[VERSION, 1]);
        let (_, v): (_, (u32, String)) = decode(&frame, &[FrameClass::Query]).unwrap();
        assert_eq!(v, (7, "x".to_string()));

        let mut bad = frame.clone();
        bad[0] = 9;
        assert_eq!(
            decode::<(u32, String)>(&bad, &[FrameClass::Query]).unwrap_err(),
            FrameError::UnknownVersion { got: 9 }
        );
        let mut bad = frame.clone();
        bad[1] = 77;
        assert_eq!(
            decode::<(u32, String)>(&bad, &[FrameClass::Query]).unwrap_err(),
            FrameError::UnknownClass { got: 77 }
        );
        assert!(matches!(
            decode::<(u32, String)>(&frame, &[FrameClass::Peer]).unwrap_err(),
            FrameError::UnexpectedClass { .. }
        ));
        let mut huge = frame[..HEADER_LEN].to_vec();
        huge[2..6].copy_from_slice(&(100u32 << 20).to_le_bytes());
        let header: [u8; HEADER_LEN] = huge.try_into().unwrap();
        assert_eq!(
            check_header(&header, &[FrameClass::Query]).unwrap_err(),
            FrameError::TooLarge { class: FrameClass::Query, len: 100 << 20, limit: 64 << 10 }
        );
        let mut trailing = frame.clone();
        trailing.push(0);
        trailing[2] += 1;
        assert_eq!(decode::<(u32, String)>(&trailing, &[FrameClass::Query]).unwrap_err(), FrameError::TrailingBytes(1));
    }

    #[test]
    fn oversized_bodies_are_not_encoded() {
        let limit = FrameClass::Query.limit();
        // A Vec<u8> body is its length (3 varint bytes here) and its bytes.
        assert!(encode(FrameClass::Query, &vec![0u8; limit - 3]).is_ok());
        let error = encode(FrameClass::Query, &vec![0u8; limit - 2]).unwrap_err();
        assert_eq!(error, FrameError::TooLarge { class: FrameClass::Query, len: limit + 1, limit });
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<crate::message::Request>(&bytes, &[FrameClass::Query, FrameClass::Submit, FrameClass::Peer]);
            let _ = decode::<crate::message::Response>(&bytes, &[FrameClass::Response]);
        }
    }
}
