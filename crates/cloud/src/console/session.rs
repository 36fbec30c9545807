//! Sign-in with a passkey and the session it opens.
//!
//! The server hands admin `name` a random nonce (stored, single use, valid
//! [`CHALLENGE_SECS`]); the challenge the browser signs is the SHA-256 of the sign-in
//! message `CUSTOS-CONSOLE-SIGN-IN-V1\0 || origin || 0x00 || nonce`. The domain keeps a
//! sign-in assertion from ever being an approval (whose challenge hashes an approval
//! message) and the reverse. The answer is checked exactly as an approval is (the API's
//! check, the TEE's code: chain, passkey origin and RP id, user present and verified,
//! signature); the session token is 32 random bytes in the cookie, its SHA-256 in the
//! database, with the key the admin signed in with.
//!
//! Sign-in is open to anyone who names an admin, so it is held in check: each address may
//! begin or finish [`SIGN_IN_BURST`] sign-ins at once, one more a second; a challenge is
//! bound to the browser that asked for it (a random sign-in cookie), so that challenges
//! asked for in an admin's name elsewhere displace none of theirs; a refusal names no file
//! and no reason (those are logged).

use std::net::IpAddr;
use std::time::Instant;

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cookie::{Cookie, SameSite};
use rand::RngCore;
use sha2::{Digest, Sha256};

use custos_cloud_api::{ApprovalBody, WebAuthnBody};

use super::admins::Admin;
use super::{Console, ConsoleError};
use crate::access::Bucket;
use crate::db::ConsoleSession;

/// The session cookie (`__Host-`: only over HTTPS, for this host, path `/`).
pub(super) const SESSION_COOKIE: &str = "__Host-custos_console";
/// How long a sign-in challenge stays valid (seconds).
pub(super) const CHALLENGE_SECS: u64 = 300;
/// The cookie binding a sign-in challenge to the browser that asked for it.
pub(super) const SIGN_IN_COOKIE: &str = "__Host-custos_sign_in";
/// Sign-in calls an address may make at once (then one more a second).
pub(super) const SIGN_IN_BURST: u32 = 10;
/// Addresses whose sign-in limits are kept (forgotten all at once when full).
const MAX_LIMITED_ADDRESSES: usize = 65_536;
/// Longest wait for a cluster's governance log at sign-in.
const REVOCATION_READ: std::time::Duration = std::time::Duration::from_secs(5);
/// Domain of sign-in messages.
const SIGN_IN_DOMAIN: &[u8] = b"CUSTOS-CONSOLE-SIGN-IN-V1\0";

/// A sign-in challenge, as the script needs it for `navigator.credentials.get`.
#[derive(serde::Serialize)]
pub(super) struct Challenge {
    /// The server's nonce, hex (sent back with the answer).
    pub nonce: String,
    /// What the passkey signs, base64url.
    pub challenge: String,
    /// The relying party id.
    pub rp_id: String,
    /// The admin's passkey, base64url.
    pub credential_id: String,
}

/// A passkey's answer, as the script sends it (hex of the browser's buffers).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Answer {
    authenticator_data_hex: String,
    client_data_json_hex: String,
    signature_hex: String,
}

impl Answer {
    /// The approval this answer is, by `admin`: what the API and the TEE check.
    pub fn approval(self, admin: &Admin) -> ApprovalBody {
        ApprovalBody {
            admin_cert_pem: admin.cert_pem.clone(),
            admin_ca_pem: admin.ca_pem.clone(),
            signature_hex: self.signature_hex,
            webauthn: Some(WebAuthnBody {
                authenticator_data_hex: self.authenticator_data_hex,
                client_data_json_hex: self.client_data_json_hex,
            }),
        }
    }
}

/// The base64url SHA-256 of `message`: the WebAuthn challenge that signs it.
pub(super) fn challenge_of(message: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(message))
}

fn sign_in_message(origin: &str, nonce: &[u8]) -> Vec<u8> {
    let mut m = SIGN_IN_DOMAIN.to_vec();
    m.extend_from_slice(origin.as_bytes());
    m.push(0);
    m.extend_from_slice(nonce);
    m
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Console {
    fn now_ms(&self) -> u64 {
        self.cloud.now_ms()
    }

    /// Refuses a POST that does not come from the console's own pages (its `Origin`).
    pub(super) fn check_origin(&self, headers: &HeaderMap) -> Result<(), ConsoleError> {
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match origin {
            Some(o) if o == self.config.origin => Ok(()),
            Some(o) => Err(ConsoleError::ForeignOrigin(o.chars().take(128).collect())),
            None => Err(ConsoleError::ForeignOrigin("(none)".into())),
        }
    }

    /// Counts one sign-in call of `peer` (unknown: counted together; IPv6 by /64, what one
    /// host is usually given). When [`MAX_LIMITED_ADDRESSES`] are counted, those idle long
    /// enough to be full again are forgotten; if none is, a new address waits.
    pub(super) fn limit(&self, peer: Option<IpAddr>) -> Result<(), ConsoleError> {
        let now = Instant::now();
        let key = match peer {
            Some(IpAddr::V6(v6)) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
            Some(v4) => v4,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let mut limits = self.limits.lock().expect("limits lock");
        if !limits.contains_key(&key) && limits.len() >= MAX_LIMITED_ADDRESSES {
            let refilled = std::time::Duration::from_secs(u64::from(SIGN_IN_BURST));
            limits.retain(|_, (_, last)| now.saturating_duration_since(*last) < refilled);
            if limits.len() >= MAX_LIMITED_ADDRESSES {
                return Err(ConsoleError::TooManySignIns(1));
            }
        }
        let (bucket, last) = limits
            .entry(key)
            .or_insert_with(|| (Bucket::new(1, SIGN_IN_BURST, now), now));
        *last = now;
        bucket.take(now).map_err(ConsoleError::TooManySignIns)
    }

    /// Admin `name`, or the same refusal whatever the reason (logged).
    fn admin_for_sign_in(&self, name: &str) -> Result<Admin, ConsoleError> {
        self.admin(name).map_err(|e| {
            tracing::warn!(error = %e, "console sign-in refused");
            ConsoleError::UnknownAdmin {
                name: name.chars().take(48).collect(),
                reason: "no passkey admin of this name may sign in to this console".into(),
            }
        })
    }

    /// A new sign-in challenge for admin `name`, bound to this browser's sign-in cookie
    /// (set anew when it has none): the challenge and the cookie to set, if any.
    pub(super) async fn begin(
        &self,
        name: &str,
        headers: &HeaderMap,
    ) -> Result<(Challenge, Option<HeaderValue>), ConsoleError> {
        let admin = self.admin_for_sign_in(name)?;
        // Set again at each challenge, so that it outlives the challenge just handed out.
        let binding = cookie_value(headers, SIGN_IN_COOKIE).unwrap_or_else(random_token);
        let set = Some(cookie(SIGN_IN_COOKIE, &binding, CHALLENGE_SECS)?);
        let mut nonce = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let now = self.now_ms();
        self.cloud
            .store()
            .put_console_challenge(
                &hex::encode(nonce),
                name,
                &token_hash(&binding),
                now,
                now + CHALLENGE_SECS * 1000,
            )
            .await?;
        let challenge = Challenge {
            nonce: hex::encode(nonce),
            challenge: challenge_of(&sign_in_message(&self.config.origin, &nonce)),
            rp_id: self.rp_id.clone(),
            credential_id: admin.credential_b64(),
        };
        Ok((challenge, set))
    }

    /// Checks admin `name`'s answer to challenge `nonce` handed to this browser; the
    /// session cookie to set.
    pub(super) async fn finish(
        &self,
        name: &str,
        nonce_hex: &str,
        answer: Answer,
        headers: &HeaderMap,
    ) -> Result<HeaderValue, ConsoleError> {
        let admin = self.admin_for_sign_in(name)?;
        let binding =
            cookie_value(headers, SIGN_IN_COOKIE).ok_or(ConsoleError::ChallengeInvalid)?;
        let nonce = hex::decode(nonce_hex)
            .ok()
            .filter(|n| n.len() == 32)
            .ok_or(ConsoleError::ChallengeInvalid)?;
        // Taken whatever the answer: a challenge is tried once.
        if !self
            .cloud
            .store()
            .take_console_challenge(
                &hex::encode(&nonce),
                name,
                &token_hash(&binding),
                self.now_ms(),
            )
            .await?
        {
            return Err(ConsoleError::ChallengeInvalid);
        }
        let message = sign_in_message(&self.config.origin, &nonce);
        self.cloud
            .verify_approval(&answer.approval(&admin), &message)
            .map_err(|e| ConsoleError::AssertionRefused(e.message))?;
        self.not_revoked(&admin).await?;
        let token = random_token();
        let now = self.now_ms();
        let session = ConsoleSession {
            admin: name.to_string(),
            admin_key: admin.key_fingerprint.clone(),
        };
        self.cloud
            .store()
            .put_console_session(
                &token_hash(&token),
                &session,
                now,
                now + self.config.session_secs * 1000,
            )
            .await?;
        tracing::info!(admin = name, key = %admin.key_fingerprint, "console sign-in");
        cookie(SESSION_COOKIE, &token, self.config.session_secs)
    }

    /// Refuses an admin whose key a governed cluster's log revoked. The logs are read at
    /// once, each for at most [`REVOCATION_READ`]; a cluster that does not answer in time
    /// (or is not governed) does not hold a sign-in up (its TEEs refuse the admin's
    /// approvals in any case).
    async fn not_revoked(&self, admin: &Admin) -> Result<(), ConsoleError> {
        let clusters = self.cloud.configured_clusters();
        let reads = clusters.iter().map(|c| async move {
            let members = tokio::time::timeout(REVOCATION_READ, self.cloud.members(c)).await;
            (c, members)
        });
        for (cluster, members) in futures::future::join_all(reads).await {
            let Ok(Ok(members)) = members else {
                continue;
            };
            if members
                .revoked_admins
                .iter()
                .any(|r| r.fingerprint.eq_ignore_ascii_case(&admin.key_fingerprint))
            {
                return Err(ConsoleError::AssertionRefused(format!(
                    "admin {:?} is revoked in cluster {cluster}",
                    admin.name
                )));
            }
        }
        Ok(())
    }

    /// The signed-in admin of this request: a valid session whose admin may still sign in
    /// with the key they signed in with.
    pub(super) async fn signed_in(&self, headers: &HeaderMap) -> Result<Admin, ConsoleError> {
        let token = cookie_value(headers, SESSION_COOKIE).ok_or(ConsoleError::NotSignedIn)?;
        let session = self
            .cloud
            .store()
            .console_session(&token_hash(&token), self.now_ms())
            .await?
            .ok_or(ConsoleError::NotSignedIn)?;
        // Removed from the folder, expired, or certified anew since: signed out.
        match self.admin(&session.admin) {
            Ok(a) if a.key_fingerprint == session.admin_key => Ok(a),
            _ => Err(ConsoleError::NotSignedIn),
        }
    }

    /// Ends the request's session; the cookie that clears it.
    pub(super) async fn sign_out(&self, headers: &HeaderMap) -> Result<HeaderValue, ConsoleError> {
        if let Some(token) = cookie_value(headers, SESSION_COOKIE) {
            self.cloud
                .store()
                .end_console_session(&token_hash(&token))
                .await?;
        }
        cookie(SESSION_COOKIE, "", 0)
    }
}

fn random_token() -> String {
    let mut token = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut token);
    URL_SAFE_NO_PAD.encode(token)
}

/// A `__Host-` cookie: HTTPS only, this host, path `/`, not readable by scripts, not sent
/// with another site's requests.
fn cookie(name: &'static str, value: &str, max_age_secs: u64) -> Result<HeaderValue, ConsoleError> {
    let c = Cookie::build((name, value))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(max_age_secs as i64))
        .build();
    HeaderValue::from_str(&c.to_string())
        .map_err(|e| ConsoleError::Malformed(format!("cookie: {e}")))
}

/// The value of cookie `name` of the request, if any.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}
