//! The blocking client tooling uses to reach the TEE core process, and the pieces of it the
//! vault node server's async client shares (size check, answer frame, response signature).

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::protocol::{
    encode_request, response_transcript, Outcome, Request, Response, SignedResponse, TeeError,
};

use crate::frame::{
    read_frame, write_frame, FrameError, Kind, RefusalCode, MAX_REQUEST, MAX_RESPONSE,
};

/// Failures seen by a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket failure (TEE process down, connection dropped).
    #[error("TEE socket: {0}")]
    Io(#[from] io::Error),
    /// The request could not be sent at all (the TEE never saw it): safe to retry.
    #[error("TEE socket, request not sent: {0}")]
    NotSent(io::Error),
    /// The TEE refused the frame itself.
    #[error("TEE refused the frame ({code:?}): {message}")]
    Refused {
        /// Code, if known.
        code: Option<RefusalCode>,
        /// Message.
        message: String,
    },
    /// The TEE answered something undecodable.
    #[error("TEE protocol error: {0}")]
    Protocol(String),
    /// The response is not signed by the expected device key.
    #[error("TEE response signature invalid: {0}")]
    ResponseSignature(String),
    /// The TEE processed the request and refused it.
    #[error("TEE refused: {0}")]
    Tee(#[from] TeeError),
}

/// How long a client waits for the TEE's answer to one request (key generation and
/// threshold rounds take seconds; a TEE silent this long is stuck).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to one TEE core.
pub struct TeeClient {
    stream: UnixStream,
    device_key: Option<Vec<u8>>,
}

impl TeeClient {
    /// Connects to the TEE socket.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(TeeClient {
            stream,
            device_key: None,
        })
    }

    /// From now on, require every response to be signed by this device key (SEC1).
    pub fn expect_device_key(&mut self, public_key: Vec<u8>) {
        self.device_key = Some(public_key);
    }

    /// Sends a request; returns the response or the TEE's typed refusal.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        Ok(self.call_bytes(&encode_request(request))??)
    }

    /// Sends raw request bytes (tests use this for malformed input).
    pub fn call_bytes(&mut self, request: &[u8]) -> Result<Outcome, ClientError> {
        let payload = self.exchange(request)?;
        match &self.device_key {
            Some(key) => verify_signed_response(key, request, &payload),
            None => decode_outcome(&payload),
        }
    }

    /// Sends raw request bytes and returns the encoded [`SignedResponse`] as received, after
    /// checking its signature when a device key is pinned (relays forward it unchanged).
    pub fn call_raw(&mut self, request: &[u8]) -> Result<Vec<u8>, ClientError> {
        let payload = self.exchange(request)?;
        if let Some(key) = &self.device_key {
            let _outcome = verify_signed_response(key, request, &payload)?;
        }
        Ok(payload)
    }

    /// One frame out, one frame back: the encoded [`SignedResponse`], unchecked.
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, ClientError> {
        check_request_len(request)?;
        write_frame(&mut self.stream, Kind::Request, request).map_err(ClientError::NotSent)?;
        let (kind, payload) = read_frame(&mut self.stream, MAX_RESPONSE).map_err(read_error)?;
        answer_payload(kind, payload)
    }
}

/// Refuses, before anything is sent, a request over the TEE's frame limit.
pub fn check_request_len(request: &[u8]) -> Result<(), ClientError> {
    if request.len() > MAX_REQUEST {
        return Err(ClientError::Refused {
            code: Some(RefusalCode::TooLarge),
            message: format!(
                "request of {} bytes exceeds the {MAX_REQUEST}-byte limit",
                request.len()
            ),
        });
    }
    Ok(())
}

/// A failure to read the TEE's answer frame, as a client reports it.
pub fn read_error(e: FrameError) -> ClientError {
    match e {
        FrameError::Io(e) => ClientError::Io(e),
        FrameError::Closed => ClientError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "TEE closed the connection",
        )),
        e => ClientError::Protocol(e.to_string()),
    }
}

/// The encoded [`SignedResponse`] of a response frame; the TEE's refusal of the request
/// frame itself; a protocol error for any other frame.
pub fn answer_payload(kind: Kind, payload: Vec<u8>) -> Result<Vec<u8>, ClientError> {
    match kind {
        Kind::Response => Ok(payload),
        Kind::Refusal => Err(ClientError::Refused {
            code: payload.first().and_then(|b| RefusalCode::from_u8(*b)),
            message: String::from_utf8_lossy(payload.get(1..).unwrap_or_default()).into_owned(),
        }),
        Kind::Request => Err(ClientError::Protocol("TEE sent a request frame".into())),
    }
}

/// Checks that an encoded [`SignedResponse`] to `request` is signed by device key `key`.
/// and returns the TEE's outcome it carries (decoded once, for relays on the hot path).
pub fn verify_signed_response(
    key: &[u8],
    request: &[u8],
    payload: &[u8],
) -> Result<Outcome, ClientError> {
    let signed = decode_signed(payload)?;
    let sig = signed
        .signature
        .as_ref()
        .ok_or_else(|| ClientError::ResponseSignature("response is unsigned".into()))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(&response_transcript(request, &signed.body), sig)
        .map_err(|_| {
            ClientError::ResponseSignature("does not verify with the device key".into())
        })?;
    decode_body(&signed)
}

/// Decodes an encoded [`SignedResponse`] into the TEE's outcome (no signature check).
pub fn decode_outcome(payload: &[u8]) -> Result<Outcome, ClientError> {
    decode_body(&decode_signed(payload)?)
}

fn decode_signed(payload: &[u8]) -> Result<SignedResponse, ClientError> {
    postcard::from_bytes(payload)
        .map_err(|e| ClientError::Protocol(format!("undecodable response: {e}")))
}

fn decode_body(signed: &SignedResponse) -> Result<Outcome, ClientError> {
    postcard::from_bytes(&signed.body)
        .map_err(|e| ClientError::Protocol(format!("undecodable response body: {e}")))
}
