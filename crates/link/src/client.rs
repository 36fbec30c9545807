//! The external side: sends requests and waits for their verified responses.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::envelope::{Envelope, EnvelopeKind, Failure, RequestId};
use crate::error::LinkError;
use crate::keys::LinkKeys;

/// A message transport as the external side sees it: deliver one encoded request envelope
/// and return the encoded envelope that answers it. Implementations need not time out on
/// their own ([`LinkClient`] bounds every attempt) but must be cancellation-safe: a dropped
/// exchange must leave the transport usable for the next one.
pub trait ClientTransport: Send + Sync {
    /// Delivers `request` (the encoded envelope for `request_id`) and returns the encoded
    /// answer for that request id.
    fn exchange(
        &self,
        request_id: RequestId,
        request: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, LinkError>> + Send;
}

/// Behaviour of a [`LinkClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The cluster at the other end of the link.
    pub cluster: String,
    /// Bound on one attempt (send + wait for the answer).
    pub attempt_timeout: Duration,
    /// Attempts per request, at least 1; every attempt reuses the same request id.
    pub max_attempts: u32,
    /// Pause between attempts.
    pub retry_delay: Duration,
}

impl ClientConfig {
    /// Defaults for `cluster`: 30 s per attempt, 3 attempts, 200 ms apart.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            attempt_timeout: Duration::from_secs(30),
            max_attempts: 3,
            retry_delay: Duration::from_millis(200),
        }
    }
}

/// What a [`LinkClient`] has been doing, for an operator's dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Requests sent and not yet answered (nor given up): the link's queue depth.
    pub in_flight: u64,
    /// Attempts repeated after a failed one, since the client was made.
    pub retries: u64,
}

/// The external relay's end of the link.
#[derive(Debug)]
pub struct LinkClient<T> {
    transport: T,
    keys: LinkKeys,
    config: ClientConfig,
    sequence: AtomicU64,
    in_flight: AtomicU64,
    retries: AtomicU64,
}

/// Counts a request in flight until dropped, however the request ends (answer, error, or
/// its caller giving up).
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(n: &'a AtomicU64) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T: ClientTransport> LinkClient<T> {
    /// A client sending over `transport`, signing with `keys` and accepting only answers
    /// signed by the pinned internal relay key.
    pub fn new(transport: T, keys: LinkKeys, config: ClientConfig) -> Self {
        Self {
            transport,
            keys,
            config,
            sequence: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Requests in flight and retries so far.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    /// The transport this client sends over.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// A fresh random request id, for callers that want to retry a request themselves
    /// (e.g. after their own restart) with [`Self::request_with_id`].
    pub fn new_request_id(&self) -> Result<RequestId, LinkError> {
        self.keys.new_request_id()
    }

    /// Sends `payload` under a fresh request id and returns the internal side's result.
    pub async fn request(&self, payload: Vec<u8>) -> Result<Vec<u8>, LinkError> {
        let id = self.new_request_id()?;
        self.request_with_id(id, payload).await
    }

    /// Sends `payload` under `request_id`. Sending the same id and payload again returns
    /// the first execution's result; the same id with another payload is refused.
    pub async fn request_with_id(
        &self,
        request_id: RequestId,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, LinkError> {
        let _counted = InFlight::enter(&self.in_flight);
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let request = Envelope::seal(
            &self.keys,
            &self.config.cluster,
            request_id,
            EnvelopeKind::Request,
            sequence,
            payload,
        )?
        .encode()?;
        let attempts = self.config.max_attempts.max(1);
        let mut last = LinkError::Timeout;
        for attempt in 1..=attempts {
            let outcome = tokio::time::timeout(
                self.config.attempt_timeout,
                self.transport.exchange(request_id, request.clone()),
            )
            .await
            .unwrap_or(Err(LinkError::Timeout));
            match outcome {
                Ok(bytes) => return self.accept(request_id, &bytes),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(request_id = %hex::encode(request_id), attempt, error = %e, "link: attempt failed, retrying");
                    last = e;
                }
                Err(e) => return Err(e),
            }
            if attempt < attempts {
                tokio::time::sleep(self.config.retry_delay).await;
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(last)
    }

    fn accept(&self, request_id: RequestId, bytes: &[u8]) -> Result<Vec<u8>, LinkError> {
        let env = Envelope::open(bytes, self.keys.peer_public(), &self.config.cluster)?;
        if env.request_id != request_id {
            return Err(LinkError::UnexpectedResponse(format!(
                "answer is for request {}, expected {}",
                hex::encode(env.request_id),
                hex::encode(request_id)
            )));
        }
        match env.kind {
            EnvelopeKind::Response => Ok(env.payload),
            EnvelopeKind::Failure => {
                let failure: Failure = postcard::from_bytes(&env.payload)
                    .map_err(|e| LinkError::Malformed(format!("failure payload: {e}")))?;
                Err(failure.into_error())
            }
            EnvelopeKind::Request => Err(LinkError::UnexpectedResponse(
                "got a Request envelope as an answer".into(),
            )),
        }
    }
}

/// What an answer taken from a channel others can write to (a screen, a shared line) must
/// be: signed by the pinned peer for this cluster, for the request waited on. Anything
/// else is skipped, not returned: a forged answer must not end a request the real answer
/// would complete.
#[derive(Debug, Clone)]
pub struct AnswerCheck {
    peer_public: Vec<u8>,
    cluster: String,
}

impl AnswerCheck {
    /// Answers signed by `peer_public` (the internal relay's key) for `cluster`.
    pub fn new(peer_public: &[u8], cluster: &str) -> Self {
        Self {
            peer_public: peer_public.to_vec(),
            cluster: cluster.to_string(),
        }
    }

    /// The request id `answer` authentically answers, if any.
    pub fn answered(&self, answer: &[u8]) -> Option<RequestId> {
        match Envelope::open(answer, &self.peer_public, &self.cluster) {
            Ok(env) if env.kind != EnvelopeKind::Request => Some(env.request_id),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "link: an answer that does not verify, skipped");
                None
            }
        }
    }
}
