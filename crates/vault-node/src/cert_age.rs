//! The node's own device certificate ageing: a warning once two thirds of its lifetime have
//! passed, so that it is renewed (`custos node renew-cert`) well before peers, the bridge and
//! the TEEs start refusing it.

use std::time::Duration;

use custos_pki::clock::now_unix;

/// How often a running node looks at its certificate's age again: nodes run for months,
/// certificates live for weeks, so hourly is early enough and never noisy.
const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The lifetime of a certificate valid from `not_before` to `not_after` (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) not_before: u64,
    pub(crate) not_after: u64,
}

impl Lifetime {
    /// The instant two thirds of the lifetime have passed.
    pub(crate) fn renew_from(self) -> u64 {
        let span = self.not_after.saturating_sub(self.not_before);
        // u128: no overflow for any u64 window.
        self.not_before + (u128::from(span) * 2 / 3) as u64
    }

    /// Whether a renewal is due at `now`.
    pub(crate) fn renewal_due(self, now: u64) -> bool {
        now >= self.renew_from()
    }
}

/// Logs a warning now and then every [`CHECK_EVERY`] while the certificate is past two
/// thirds of its lifetime; runs until the node server ends.
pub(crate) async fn watch(node: String, lifetime: Lifetime) {
    loop {
        let now = now_unix();
        if lifetime.renewal_due(now) {
            let days_left = lifetime.not_after.saturating_sub(now) / 86_400;
            tracing::warn!(
                node = %node,
                not_after = lifetime.not_after,
                days_left,
                "device certificate is past two thirds of its lifetime: renew it \
                 (custos node renew-cert, custos pki sign-csr, custos node install-cert)"
            );
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_from_two_thirds_of_the_lifetime() {
        let day = 86_400;
        let l = Lifetime {
            not_before: 1_000,
            not_after: 1_000 + 90 * day,
        };
        assert_eq!(l.renew_from(), 1_000 + 60 * day);
        assert!(!l.renewal_due(1_000));
        assert!(!l.renewal_due(1_000 + 60 * day - 1));
        assert!(l.renewal_due(1_000 + 60 * day));
        assert!(l.renewal_due(1_000 + 100 * day));
    }

    #[test]
    fn odd_windows_do_not_overflow_or_panic() {
        let reversed = Lifetime {
            not_before: 50,
            not_after: 10,
        };
        assert!(reversed.renewal_due(50));
        let huge = Lifetime {
            not_before: 0,
            not_after: u64::MAX,
        };
        assert_eq!(huge.renew_from(), u64::MAX / 3 * 2);
    }
}
