//! Sign-in with a passkey and the session it opens.
//!
//! The server hands admin `name` a random nonce (stored, single use, valid
//! [`CHALLENGE_SECS`]); the challenge the browser signs is the SHA-256 of the sign-in
//! message `CUSTOS-CONSOLE-SIGN-IN-V1\0 || origin || 0x00 || nonce`. The domain keeps a
//! sign-in assertion from ever being an approval (whose challenge hashes an approval
//! message) and the reverse. The answer is checked exactly as an approval is (the API's
//! check, the TEE's code: chain, passkey origin and RP id, user present and verified,
//! signature); the session token is 32 random bytes in the cookie, its SHA-256 in the
//! database.

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cookie::{Cookie, SameSite};
use rand::RngCore;
use sha2::{Digest, Sha256};

use custos_cloud_api::{ApprovalBody, WebAuthnBody};

use super::admins::Admin;
use super::{Console, ConsoleError};

/// The session cookie (`__Host-`: only over HTTPS, for this host, path `/`).
pub(super) const SESSION_COOKIE: &str = "__Host-custos_console";
/// How long a sign-in challenge stays valid (seconds).
pub(super) const CHALLENGE_SECS: u64 = 300;
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
    pub authenticator_data_hex: String,
    pub client_data_json_hex: String,
    pub signature_hex: String,
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

    /// A new sign-in challenge for admin `name`.
    pub(super) async fn begin(&self, name: &str) -> Result<Challenge, ConsoleError> {
        let admin = self.admin(name)?;
        let mut nonce = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let now = self.now_ms();
        self.cloud
            .store()
            .put_console_challenge(&hex::encode(nonce), name, now, now + CHALLENGE_SECS * 1000)
            .await?;
        Ok(Challenge {
            nonce: hex::encode(nonce),
            challenge: challenge_of(&sign_in_message(&self.config.origin, &nonce)),
            rp_id: self.rp_id.clone(),
            credential_id: admin.credential_b64(),
        })
    }

    /// Checks admin `name`'s answer to challenge `nonce`; the session cookie to set.
    pub(super) async fn finish(
        &self,
        name: &str,
        nonce_hex: &str,
        answer: Answer,
    ) -> Result<HeaderValue, ConsoleError> {
        let admin = self.admin(name)?;
        let nonce = hex::decode(nonce_hex)
            .ok()
            .filter(|n| n.len() == 32)
            .ok_or(ConsoleError::ChallengeInvalid)?;
        // Taken whatever the answer: a challenge is tried once.
        let nonce_hex = hex::encode(&nonce);
        if !self
            .cloud
            .store()
            .take_console_challenge(&nonce_hex, name, self.now_ms())
            .await?
        {
            return Err(ConsoleError::ChallengeInvalid);
        }
        let message = sign_in_message(&self.config.origin, &nonce);
        self.cloud
            .verify_approval(&answer.approval(&admin), &message)
            .map_err(|e| ConsoleError::AssertionRefused(e.message))?;
        let mut token = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut token);
        let token = URL_SAFE_NO_PAD.encode(token);
        let now = self.now_ms();
        self.cloud
            .store()
            .put_console_session(
                &token_hash(&token),
                name,
                now,
                now + self.config.session_secs * 1000,
            )
            .await?;
        tracing::info!(admin = name, "console sign-in");
        let cookie = Cookie::build((SESSION_COOKIE, token))
            .path("/")
            .secure(true)
            .http_only(true)
            .same_site(SameSite::Strict)
            .max_age(cookie::time::Duration::seconds(
                self.config.session_secs as i64,
            ))
            .build();
        HeaderValue::from_str(&cookie.to_string())
            .map_err(|e| ConsoleError::Malformed(format!("cookie: {e}")))
    }

    /// The session token of the request's cookie, if any.
    fn token(headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == SESSION_COOKIE)
            .map(|c| c.value().to_string())
    }

    /// The signed-in admin of this request: a valid session whose admin may still sign in.
    pub(super) async fn signed_in(&self, headers: &HeaderMap) -> Result<Admin, ConsoleError> {
        let token = Self::token(headers).ok_or(ConsoleError::NotSignedIn)?;
        let name = self
            .cloud
            .store()
            .console_session(&token_hash(&token), self.now_ms())
            .await?
            .ok_or(ConsoleError::NotSignedIn)?;
        // Removed from the folder, or the certificate expired: signed out.
        self.admin(&name).map_err(|_| ConsoleError::NotSignedIn)
    }

    /// Ends the request's session; the cookie that clears it.
    pub(super) async fn sign_out(&self, headers: &HeaderMap) -> Result<HeaderValue, ConsoleError> {
        if let Some(token) = Self::token(headers) {
            self.cloud
                .store()
                .end_console_session(&token_hash(&token))
                .await?;
        }
        let cookie = Cookie::build((SESSION_COOKIE, ""))
            .path("/")
            .secure(true)
            .http_only(true)
            .same_site(SameSite::Strict)
            .max_age(cookie::time::Duration::ZERO)
            .build();
        HeaderValue::from_str(&cookie.to_string())
            .map_err(|e| ConsoleError::Malformed(format!("cookie: {e}")))
    }
}
