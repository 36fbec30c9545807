//! Policy and governance documents sealed in TEEs and carried in requests: a key's policy
//! and its rule bodies, the cluster's measurement policy, a candidate's admission evidence.
//! The first byte picks the decoder.
#![no_main]

use custos_wire::governance::{AdmissionEvidence, MeasurementPolicy};
use custos_wire::policy::{Allowlist, ApprovalTiers, GroupTiers, KeyPolicy, SpendLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => {
            if let Ok(p) = KeyPolicy::decode(body) {
                let _ = p.validate();
                assert_eq!(KeyPolicy::decode(&p.encode()).ok(), Some(p));
            }
        }
        1 => {
            if let Ok(r) = ApprovalTiers::decode(body) {
                assert_eq!(ApprovalTiers::decode(&r.encode()).ok(), Some(r));
            }
        }
        2 => {
            if let Ok(r) = GroupTiers::decode(body) {
                assert_eq!(GroupTiers::decode(&r.encode()).ok(), Some(r));
            }
        }
        3 => {
            if let Ok(r) = SpendLimits::decode(body) {
                assert_eq!(SpendLimits::decode(&r.encode()).ok(), Some(r));
            }
        }
        4 => {
            if let Ok(r) = Allowlist::decode(body) {
                assert_eq!(Allowlist::decode(&r.encode()).ok(), Some(r));
            }
        }
        5 => {
            let _ = MeasurementPolicy::decode(body);
        }
        _ => {
            let _ = AdmissionEvidence::decode("node1", body);
        }
    }
});
