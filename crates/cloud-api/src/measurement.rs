//! Measurement policies between their wire form ([`MeasurementPolicy`]) and the API's view:
//! an approver rebuilds the exact policy from the fields shown and checks it like the TEE.

use custos_wire::governance::{
    MeasurementPolicy, NitroMeasurement, SnpMeasurement, TdxMeasurement, TpmMeasurement,
};

use crate::approval::parse_fingerprint;
use crate::{
    MeasurementPolicyView, NitroMeasurementView, RegisterView, SnpMeasurementView,
    TdxMeasurementView, TpmMeasurementView,
};

fn registers<T: AsRef<[u8]>>(items: &[(u8, T)]) -> Vec<RegisterView> {
    items
        .iter()
        .map(|(index, v)| RegisterView {
            index: *index,
            value: hex::encode(v),
        })
        .collect()
}

/// The API view of a policy.
pub fn policy_view(p: &MeasurementPolicy) -> MeasurementPolicyView {
    MeasurementPolicyView {
        allow_software: p.allow_software,
        tpm: p.tpm.as_ref().map(|t| TpmMeasurementView {
            ek_roots_sha256: t.ek_roots_sha256.iter().map(hex::encode).collect(),
            pcrs: registers(&t.pcrs),
        }),
        nitro: p.nitro.as_ref().map(|n| NitroMeasurementView {
            pcrs: registers(&n.pcrs),
        }),
        snp: p.snp.as_ref().map(|s| SnpMeasurementView {
            ark_sha256: hex::encode(s.ark_sha256),
            measurement: hex::encode(&s.measurement),
            allow_debug: s.allow_debug,
        }),
        tdx: p.tdx.as_ref().map(|t| TdxMeasurementView {
            mr_td: hex::encode(&t.mr_td),
            rtmrs: registers(&t.rtmrs),
            tcb_statuses: t.tcb_statuses.clone(),
        }),
    }
}

fn bytes(what: &str, hex_text: &str) -> Result<Vec<u8>, String> {
    hex::decode(hex_text).map_err(|_| format!("{what} is not hex"))
}

/// The policy a view shows, rebuilt field by field and checked (`measurement_policy_invalid`
/// names what is wrong).
pub fn parse_policy(v: &MeasurementPolicyView) -> Result<MeasurementPolicy, String> {
    let pcrs32 = |r: &[RegisterView]| {
        r.iter()
            .map(|r| Ok((r.index, parse_fingerprint(&r.value)?)))
            .collect::<Result<Vec<_>, String>>()
    };
    let policy = MeasurementPolicy {
        allow_software: v.allow_software,
        tpm: v
            .tpm
            .as_ref()
            .map(|t| {
                Ok::<_, String>(TpmMeasurement {
                    ek_roots_sha256: t
                        .ek_roots_sha256
                        .iter()
                        .map(|s| parse_fingerprint(s))
                        .collect::<Result<_, _>>()?,
                    pcrs: pcrs32(&t.pcrs)?,
                })
            })
            .transpose()?,
        nitro: v
            .nitro
            .as_ref()
            .map(|n| {
                Ok::<_, String>(NitroMeasurement {
                    pcrs: n
                        .pcrs
                        .iter()
                        .map(|r| Ok((r.index, bytes("a Nitro PCR", &r.value)?)))
                        .collect::<Result<_, String>>()?,
                })
            })
            .transpose()?,
        snp: v
            .snp
            .as_ref()
            .map(|s| {
                Ok::<_, String>(SnpMeasurement {
                    ark_sha256: parse_fingerprint(&s.ark_sha256)?,
                    measurement: bytes("the SEV-SNP measurement", &s.measurement)?,
                    allow_debug: s.allow_debug,
                })
            })
            .transpose()?,
        tdx: v
            .tdx
            .as_ref()
            .map(|t| {
                Ok::<_, String>(TdxMeasurement {
                    mr_td: bytes("the TDX MRTD", &t.mr_td)?,
                    rtmrs: t
                        .rtmrs
                        .iter()
                        .map(|r| Ok((r.index, bytes("a TDX RTMR", &r.value)?)))
                        .collect::<Result<_, String>>()?,
                    tcb_statuses: t.tcb_statuses.clone(),
                })
            })
            .transpose()?,
    };
    policy.check().map_err(|e| e.to_string())?;
    Ok(policy)
}

/// The platforms a policy admits, in words (`software (development), tpm`), or `none`.
pub fn describe_policy(v: &MeasurementPolicyView) -> String {
    let mut out = Vec::new();
    if v.allow_software {
        out.push("software (development stand-in)".to_string());
    }
    if let Some(t) = &v.tpm {
        let pcrs: Vec<String> = t.pcrs.iter().map(|r| r.index.to_string()).collect();
        out.push(format!(
            "tpm (PCRs {}; {} EK roots)",
            pcrs.join(","),
            t.ek_roots_sha256.len()
        ));
    }
    if v.nitro.is_some() {
        out.push("nitro".into());
    }
    if v.snp.is_some() {
        out.push("sev-snp".into());
    }
    if v.tdx.is_some() {
        out.push("tdx".into());
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_round_trips_through_its_view_and_a_bad_one_is_named() {
        let p = MeasurementPolicy {
            allow_software: false,
            tpm: Some(TpmMeasurement {
                ek_roots_sha256: vec![[1; 32], [2; 32]],
                pcrs: vec![(7, [3; 32]), (23, [0; 32])],
            }),
            nitro: Some(NitroMeasurement {
                pcrs: vec![(0, vec![4; 48])],
            }),
            snp: Some(SnpMeasurement {
                ark_sha256: [5; 32],
                measurement: vec![6; 48],
                allow_debug: false,
            }),
            tdx: Some(TdxMeasurement {
                mr_td: vec![7; 48],
                rtmrs: vec![(1, vec![8; 48]), (2, vec![9; 48])],
                tcb_statuses: vec!["UpToDate".into()],
            }),
        };
        let v = policy_view(&p);
        assert_eq!(parse_policy(&v), Ok(p));
        assert_eq!(
            describe_policy(&v),
            "tpm (PCRs 7,23; 2 EK roots), nitro, sev-snp, tdx"
        );
        let mut bad = v.clone();
        bad.tpm.as_mut().unwrap().pcrs.reverse();
        let e = parse_policy(&bad).unwrap_err();
        assert!(e.starts_with("measurement_policy_invalid"), "{e}");
    }
}
