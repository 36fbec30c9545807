//! The authenticated envelope that crosses the link.

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::{Deserialize, Serialize};

use crate::error::{FailureCode, LinkError};
use crate::keys::LinkKeys;

/// The envelope format version this build writes and accepts.
pub const ENVELOPE_VERSION: u16 = 1;
/// Hard limit on an envelope's payload.
pub const MAX_PAYLOAD: usize = 8 * 1024 * 1024;
/// Hard limit on an encoded envelope (payload plus room for the other fields).
pub const MAX_ENVELOPE: usize = MAX_PAYLOAD + 4 * 1024;
/// Hard limit on a cluster name.
pub const MAX_CLUSTER_NAME: usize = 255;
/// Hard limit on the authentication tag; a P-256 fixed signature is 64 bytes.
pub const MAX_SIGNATURE: usize = 128;
/// Domain separator of the signed encoding, so a link signature can never be replayed as
/// any other Custos signature made with the same key.
pub const SIGNING_DOMAIN: &[u8] = b"CUSTOS-LINK-ENVELOPE-V1\0";

/// The 16-byte id that names one request across retries.
pub type RequestId = [u8; 16];

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvelopeKind {
    /// External → internal: a request payload to execute.
    Request,
    /// Internal → external: the handler's result payload.
    Response,
    /// Internal → external: a postcard-encoded [`Failure`] instead of a result.
    Failure,
}

impl EnvelopeKind {
    fn tag(self) -> u8 {
        match self {
            EnvelopeKind::Request => 1,
            EnvelopeKind::Response => 2,
            EnvelopeKind::Failure => 3,
        }
    }
}

/// Payload of a [`EnvelopeKind::Failure`] envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Classification of the failure.
    pub code: FailureCode,
    /// Human-readable explanation.
    pub message: String,
}

impl Failure {
    /// Turns a received failure into the error the caller sees.
    pub fn into_error(self) -> LinkError {
        match self.code {
            FailureCode::HandlerFailed => LinkError::Handler(self.message),
            FailureCode::RequestIdReused => LinkError::RequestIdReused,
            code => LinkError::Refused {
                code,
                message: self.message,
            },
        }
    }
}

/// One framed, authenticated message on the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version ([`ENVELOPE_VERSION`]).
    pub version: u16,
    /// The cluster this link belongs to; binds the envelope to one cluster's link.
    pub cluster: String,
    /// Names the request across retries; the response carries the same id.
    pub request_id: RequestId,
    /// Request, response or failure.
    pub kind: EnvelopeKind,
    /// The sender's monotonic counter, for ordering in logs.
    pub sequence: u64,
    /// When the sender sealed the envelope (Unix milliseconds).
    pub created_at_ms: u64,
    /// Opaque payload: an encoded TEE request, or a signed TEE response.
    pub payload: Vec<u8>,
    /// ECDSA P-256 (fixed r || s) over [`Envelope::signing_input`].
    pub signature: Vec<u8>,
}

/// The system clock in Unix milliseconds (0 before the epoch).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    // Sizes are bounded far below 4 GiB by the limits checked before signing/verifying.
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

impl Envelope {
    /// Builds and signs an envelope with this relay's key, dated now.
    pub fn seal(
        keys: &LinkKeys,
        cluster: &str,
        request_id: RequestId,
        kind: EnvelopeKind,
        sequence: u64,
        payload: Vec<u8>,
    ) -> Result<Self, LinkError> {
        let head = (cluster, request_id, kind, sequence);
        Self::seal_at(keys, head, now_ms(), payload)
    }

    /// As [`Envelope::seal`], dated `created_at_ms` (Unix ms) by a sender with a clock of
    /// its own.
    pub fn seal_at(
        keys: &LinkKeys,
        (cluster, request_id, kind, sequence): (&str, RequestId, EnvelopeKind, u64),
        created_at_ms: u64,
        payload: Vec<u8>,
    ) -> Result<Self, LinkError> {
        let mut env = Envelope {
            version: ENVELOPE_VERSION,
            cluster: cluster.to_owned(),
            request_id,
            kind,
            sequence,
            created_at_ms,
            payload,
            signature: Vec::new(),
        };
        env.check_limits()?;
        env.signature = keys.sign(&env.signing_input())?;
        Ok(env)
    }

    /// The canonical bytes the signature covers: the domain separator followed by every
    /// field except the signature, each length-prefixed (u32 BE) so no two envelopes can
    /// share an encoding. Independent of postcard, so a codec change cannot alter what
    /// was signed.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + 80 + self.payload.len());
        out.extend_from_slice(SIGNING_DOMAIN);
        push_field(&mut out, &self.version.to_be_bytes());
        push_field(&mut out, self.cluster.as_bytes());
        push_field(&mut out, &self.request_id);
        push_field(&mut out, &[self.kind.tag()]);
        push_field(&mut out, &self.sequence.to_be_bytes());
        push_field(&mut out, &self.created_at_ms.to_be_bytes());
        push_field(&mut out, &self.payload);
        out
    }

    fn check_limits(&self) -> Result<(), LinkError> {
        if self.version != ENVELOPE_VERSION {
            return Err(LinkError::UnsupportedVersion(self.version));
        }
        if self.payload.len() > MAX_PAYLOAD {
            return Err(LinkError::Oversize {
                what: "payload",
                size: self.payload.len() as u64,
                limit: MAX_PAYLOAD as u64,
            });
        }
        if self.cluster.is_empty() || self.cluster.len() > MAX_CLUSTER_NAME {
            return Err(LinkError::Malformed(format!(
                "cluster name must be 1..={MAX_CLUSTER_NAME} bytes, got {}",
                self.cluster.len()
            )));
        }
        if self.signature.len() > MAX_SIGNATURE {
            return Err(LinkError::Malformed(format!(
                "signature of {} bytes exceeds {MAX_SIGNATURE}",
                self.signature.len()
            )));
        }
        Ok(())
    }

    /// Encodes the envelope (postcard) for a transport.
    pub fn encode(&self) -> Result<Vec<u8>, LinkError> {
        self.check_limits()?;
        let bytes = postcard::to_allocvec(self)
            .map_err(|e| LinkError::Internal(format!("envelope encoding failed: {e}")))?;
        if bytes.len() > MAX_ENVELOPE {
            return Err(LinkError::Oversize {
                what: "envelope",
                size: bytes.len() as u64,
                limit: MAX_ENVELOPE as u64,
            });
        }
        Ok(bytes)
    }

    /// Decodes an envelope and checks its structure and limits. Does NOT authenticate it:
    /// use [`Envelope::open`] for anything received from a transport.
    pub fn decode(bytes: &[u8]) -> Result<Self, LinkError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(LinkError::Oversize {
                what: "envelope",
                size: bytes.len() as u64,
                limit: MAX_ENVELOPE as u64,
            });
        }
        let (env, rest): (Envelope, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| LinkError::Malformed(e.to_string()))?;
        // Trailing bytes would let two different byte strings carry one signed envelope.
        if !rest.is_empty() {
            return Err(LinkError::Malformed(format!(
                "{} trailing bytes after envelope",
                rest.len()
            )));
        }
        env.check_limits()?;
        Ok(env)
    }

    /// Checks the signature against `peer_public`, then that the envelope is for
    /// `expected_cluster`. The signature comes first so that WrongCluster is only ever
    /// reported for an authentic envelope (a real misconfiguration, not tampering).
    pub fn verify(&self, peer_public: &[u8], expected_cluster: &str) -> Result<(), LinkError> {
        self.check_limits()?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, peer_public)
            .verify(&self.signing_input(), &self.signature)
            .map_err(|_| LinkError::BadSignature)?;
        if self.cluster != expected_cluster {
            return Err(LinkError::WrongCluster {
                expected: expected_cluster.to_owned(),
                found: self.cluster.clone(),
            });
        }
        Ok(())
    }

    /// Decodes and authenticates received bytes.
    pub fn open(
        bytes: &[u8],
        peer_public: &[u8],
        expected_cluster: &str,
    ) -> Result<Self, LinkError> {
        let env = Self::decode(bytes)?;
        env.verify(peer_public, expected_cluster)?;
        Ok(env)
    }
}
