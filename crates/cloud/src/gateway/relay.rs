//! [`Gateway`] over gRPC to each cluster's external relay (`ExternalRelay.Forward`), TLS
//! with the relay's certificate checked against the trust root (custos-relay).

use std::collections::HashMap;
use std::time::Duration;

use custos_pki::TrustRoot;
use custos_proto::cluster::external_relay_client::ExternalRelayClient;
use custos_proto::cluster::{LinkReply, LinkRequest, RelayCall};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::{BoxFuture, Gateway, GatewayError};
use crate::config::ClusterConfig;

/// Largest reply accepted from a relay (TEE responses are small; audits list key ids).
const MAX_REPLY: usize = 16 * 1024 * 1024;

struct Relay {
    channel: Channel,
    /// `Bearer <token>`, ready for the header.
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

/// Gateways to the configured clusters' relays. Channels are lazy: a relay that is down
/// at start-up is reached once it comes up.
pub struct RelayGateway {
    relays: HashMap<String, Relay>,
    timeout: Duration,
}

impl RelayGateway {
    /// Builds one lazy TLS channel per cluster.
    pub fn new(
        clusters: &[ClusterConfig],
        trust_root: &TrustRoot,
        timeout: Duration,
    ) -> Result<Self, GatewayError> {
        let mut relays = HashMap::new();
        for c in clusters {
            let channel = custos_relay::connect_relay(c.relay, trust_root, &c.name)
                .map_err(|e| GatewayError::Rejected(format!("relay of {}: {e}", c.name)))?;
            let header = Zeroizing::new(format!("Bearer {}", c.relay_token.expose()));
            let mut authorization: MetadataValue<tonic::metadata::Ascii> = header
                .parse()
                .map_err(|_| GatewayError::Rejected(format!("relay token of {}", c.name)))?;
            authorization.set_sensitive(true);
            relays.insert(
                c.name.clone(),
                Relay {
                    channel,
                    authorization,
                },
            );
        }
        Ok(RelayGateway { relays, timeout })
    }
}

fn map_status(s: tonic::Status) -> GatewayError {
    use tonic::Code::*;
    let m = format!("{:?}: {}", s.code(), s.message());
    match s.code() {
        // The relay executes each request id at most once, so retrying these is safe.
        Unavailable | DeadlineExceeded | Cancelled | Unknown | Aborted | Internal => {
            GatewayError::Unavailable(m)
        }
        _ => GatewayError::Rejected(m),
    }
}

impl Gateway for RelayGateway {
    fn forward<'a>(
        &'a self,
        cluster: &'a str,
        request_id: [u8; 16],
        request: LinkRequest,
    ) -> BoxFuture<'a, Result<LinkReply, GatewayError>> {
        Box::pin(async move {
            let relay = self
                .relays
                .get(cluster)
                .ok_or_else(|| GatewayError::UnknownCluster(cluster.to_string()))?;
            let mut client = ExternalRelayClient::new(relay.channel.clone())
                .max_decoding_message_size(MAX_REPLY);
            let mut call = tonic::Request::new(RelayCall {
                request_id: request_id.to_vec(),
                payload: request.encode_to_vec(),
            });
            call.set_timeout(self.timeout);
            call.metadata_mut().insert(
                custos_relay::RELAY_TOKEN_HEADER,
                relay.authorization.clone(),
            );
            let answer = tokio::time::timeout(self.timeout, client.forward(call))
                .await
                .map_err(|_| GatewayError::Unavailable("relay call timed out".into()))?
                .map_err(map_status)?
                .into_inner();
            LinkReply::decode(answer.payload.as_slice())
                .map_err(|e| GatewayError::Protocol(format!("undecodable link reply: {e}")))
        })
    }
}
