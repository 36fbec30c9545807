//! What a device key may sign for TLS.

/// Context string of a server's TLS 1.3 CertificateVerify signature (RFC 8446 §4.4.3).
pub const TLS13_SERVER_CONTEXT: &[u8] = b"TLS 1.3, server CertificateVerify";
/// Context string of a client's TLS 1.3 CertificateVerify signature (RFC 8446 §4.4.3).
pub const TLS13_CLIENT_CONTEXT: &[u8] = b"TLS 1.3, client CertificateVerify";

/// True if `msg` is exactly a TLS 1.3 CertificateVerify signing input (RFC 8446 §4.4.3):
/// 64 spaces (0x20), the server or client context string, a zero byte, and a transcript
/// hash of 32 (SHA-256) or 48 (SHA-384) bytes.
///
/// A TEE that holds a device key uses this to sign nothing else for TLS: such a message can
/// never be mistaken for any of the TEE's domain-separated signatures (responses, transfers,
/// protocol messages). `custos-net` applies the same check before handing a message to a
/// remote signer, so a misconfiguration shows up here rather than as a TEE refusal.
pub fn is_tls13_certificate_verify_message(msg: &[u8]) -> bool {
    if msg.len() < 64 || msg[..64].iter().any(|&b| b != 0x20) {
        return false;
    }
    let rest = &msg[64..];
    let Some(after) = rest
        .strip_prefix(TLS13_SERVER_CONTEXT)
        .or_else(|| rest.strip_prefix(TLS13_CLIENT_CONTEXT))
    else {
        return false;
    };
    matches!(after.split_first(), Some((0, hash)) if hash.len() == 32 || hash.len() == 48)
}
