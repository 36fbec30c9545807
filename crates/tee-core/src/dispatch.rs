//! One decoded request to the handler of its kind.

use custos_pki::DeviceChain;
use custos_wire::protocol::*;

use crate::platform::Platform;
use crate::threshold::dkg::GroupTerms;
use crate::{storage, TeeCore};

impl<P: Platform> TeeCore<P> {
    /// Handles one decoded request (its writes are committed, and its answer signed, by
    /// [`TeeCore::handle_batch`]).
    pub(crate) fn handle(&mut self, request: Request) -> Outcome {
        match request {
            Request::Status => Ok(Response::Status(self.status())),
            Request::PinRoot { root_cert } => self.pin_root(&root_cert),
            Request::GenerateDeviceKey { cluster, node } => self.generate_device_key(cluster, node),
            Request::InstallDeviceCert {
                device,
                cluster_ca,
                device_ca,
            } => self.install_device_cert(DeviceChain {
                device,
                cluster_ca,
                device_ca,
            }),
            Request::DeviceCsr => self.renewal_csr(),
            Request::CreateWallet {
                meta,
                quorum,
                approvals,
            } => self.create_wallet(&meta, quorum, &approvals),
            Request::ImportWallet {
                meta,
                quorum,
                key_id,
                secret,
                approvals,
            } => self.import_wallet(&meta, quorum, &key_id, &secret, &approvals),
            Request::ImportWalletSealed {
                meta,
                quorum,
                key_id,
                sealed,
                approvals,
            } => self.import_wallet_sealed(&meta, quorum, &key_id, &sealed, &approvals),
            Request::ImportGroupWalletSealed {
                meta,
                policy,
                key_id,
                sealed,
                approvals,
            } => self.import_group_wallet_sealed(&meta, &policy, &key_id, &sealed, &approvals),
            Request::ListKeys => Ok(Response::Keys(
                self.wallets.values().map(|w| w.info.clone()).collect(),
            )),
            Request::GetXpub { key_id, path } => {
                let w = self.wallet(&key_id)?;
                let xpub = w.xpub_at(&self.secp, &path)?;
                Ok(Response::Xpub {
                    xpub: xpub.to_string(),
                    public_key: xpub.public_key.serialize().to_vec(),
                })
            }
            Request::Sign {
                meta,
                key_id,
                path,
                digest,
                approvals,
            } => self.sign(&meta, &key_id, &path, &digest, &approvals),
            Request::AuditSign { key_id, message } => {
                if message.len() > MAX_AUDIT_MESSAGE {
                    return Err(TeeError::AuditMessageTooLong {
                        len: message.len().min(u32::MAX as usize) as u32,
                        max: MAX_AUDIT_MESSAGE as u32,
                    });
                }
                let w = self.wallet(&key_id)?;
                Ok(Response::AuditSignature(
                    w.sign_root(&self.secp, &audit_digest(&message)),
                ))
            }
            Request::DeviceChain => {
                let (_, chain) = self.identity()?;
                Ok(Response::DeviceChain(chain.clone().into()))
            }
            Request::SignTls { message } => {
                if !is_tls13_certificate_verify_message(&message) {
                    return Err(TeeError::TlsSignRefused);
                }
                self.identity()?;
                let d = self.device.as_ref().expect("identity implies a device key");
                Ok(Response::TlsSignature(d.sign(&message)))
            }
            Request::ExportKeys { requester, key_ids } => self.export_keys(requester, &key_ids),
            Request::ImportKeys { transfer } => self.import_keys(&transfer),
            Request::ImportThresholdBundle {
                meta,
                bundle,
                approvals,
            } => self.import_threshold_bundle(&meta, &bundle, &approvals),
            Request::ListThresholdKeys => self.list_threshold_keys(),
            Request::ThresholdStart {
                meta,
                attempt,
                params,
                approvals,
            } => self.threshold_start(&meta, attempt, &params, &approvals),
            Request::ThresholdPsbtStart {
                meta,
                attempt,
                input,
                params,
                approvals,
            } => self.threshold_psbt_start(&meta, attempt, input, &params, &approvals),
            Request::ThresholdKeygenStart {
                meta,
                attempt,
                params,
                approvals,
            } => self.threshold_keygen_start(&meta, attempt, &params, None, &approvals),
            Request::ThresholdGroupKeygenStart {
                meta,
                attempt,
                params,
                policy,
                executors,
                approvals,
            } => {
                let group = GroupTerms {
                    policy: &policy,
                    executors: &executors,
                };
                self.threshold_keygen_start(&meta, attempt, &params, Some(group), &approvals)
            }
            Request::ThresholdAuditStart {
                session,
                key_id,
                message,
                signers,
            } => self.threshold_audit_start(session, &key_id, &message, &signers),
            Request::ThresholdFeed { session, messages } => self.threshold_feed(session, &messages),
            Request::ThresholdAbort { session, reason: _ } => self.threshold_abort(session),
            Request::ThresholdPresignStart {
                session,
                key_id,
                signers,
            } => self.threshold_presign_start(session, &key_id, &signers),
            Request::ThresholdPresignSign {
                meta,
                attempt,
                params,
                approvals,
            } => self.threshold_presign_sign(&meta, attempt, &params, &approvals),
            Request::ListPresignatures { key_id } => self.list_presignatures(&key_id),
            Request::ApplyGovernance { cluster, entries } => {
                self.apply_governance(&cluster, &entries)
            }
            Request::Governance { cluster, since } => {
                if cluster != self.cluster()? {
                    return Err(TeeError::GovernanceRejected(format!(
                        "this node holds no log of cluster {cluster:?}"
                    )));
                }
                self.governance_view(since).map(Response::Governance)
            }
            Request::PinGenesis { genesis_id } => self.pin_genesis(genesis_id),
            Request::CreateGroupWallet {
                meta,
                policy,
                executor,
                approvals,
            } => self.create_group_wallet(&meta, &policy, &executor, &approvals),
            Request::SetKeyPolicy {
                meta,
                key_id,
                prev,
                policy,
                approvals,
            } => self.set_key_policy(&meta, &key_id, &prev, &policy, &approvals),
            Request::GetKeyPolicy { key_id } => self.get_key_policy(&key_id),
            Request::AttestationIdentity => self.attestation_identity(),
            Request::IssueAdmissionTicket { node_key, tpm } => {
                self.issue_admission_ticket(node_key, tpm)
            }
            Request::AdmissionEvidence { challenge } => self.admission_evidence(challenge),
            Request::SignPsbt {
                meta,
                key_id,
                network,
                psbt,
                intent_hash,
                approvals,
            } => {
                let tx = crate::transaction::PsbtRequest {
                    key_id: &key_id,
                    network,
                    psbt: &psbt,
                    intent_hash,
                };
                self.sign_psbt(&meta, tx, &approvals)
            }
            Request::PreviewPsbt {
                key_id,
                network,
                psbt,
            } => self.preview_psbt(&key_id, network, &psbt),
            Request::SignEthereum {
                meta,
                key_id,
                path,
                payload,
                intent_hash,
                approvals,
            } => {
                let request = crate::transaction::EthRequest {
                    key_id: &key_id,
                    path: &path,
                    payload: &payload,
                    intent_hash,
                };
                self.sign_ethereum(&meta, request, &approvals)
            }
            Request::PreviewEthereum {
                key_id,
                path,
                payload,
            } => self.preview_ethereum(&key_id, &path, &payload),
            Request::Attest { challenge } => {
                if challenge.len() > 64 {
                    return Err(TeeError::InvalidRequest(
                        "attestation challenge over 64 bytes".into(),
                    ));
                }
                // Domain-separated from an admission's evidence (a SHA-256 binding), so a
                // host's challenge can never make this TEE attest admission-shaped data.
                let mut user_data = ATTEST_DOMAIN.to_vec();
                user_data.extend_from_slice(&challenge);
                if let Some(d) = &self.device {
                    user_data.extend_from_slice(&d.public_key());
                }
                self.platform
                    .attest(&user_data)
                    .map(Response::Attestation)
                    .map_err(storage)
            }
        }
    }
}

/// Prefix of what [`Request::Attest`] has the platform attest: domain ‖ challenge ‖ D.
const ATTEST_DOMAIN: &[u8] = b"CUSTOS-ATTEST-V1\0";
