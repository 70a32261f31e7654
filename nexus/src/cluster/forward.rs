//! The sending side of forwarding: a replica that does not lead sends the
//! leader's work ([`LeaderOp`]) or a read-index request to the leader over
//! the cluster port.
//!
//! A failed call is either never sent or of unknown outcome, and only the
//! first may be retried blindly: a write without a session (every write of
//! SPIKE's own clients and of `spike`) would otherwise apply twice. The
//! difference is a type the dial site puts in the error chain
//! ([`ConnectFailed`]), never the wording of an error message.

use spike_sdk::tls::ConnectFailed;

use super::{ForwardError, LeaderOp, LeaderReply};
use crate::raft::NexusNode;
use crate::raft::codec::{decode, encode};
use crate::transport::FORWARD_TIMEOUT;
use crate::transport::peers::Peers;
use crate::transport::proto::Frame;

/// Sends requests to the leader.
#[derive(Clone)]
pub struct Forwarder {
    peers: Peers,
}

impl Forwarder {
    /// Forwards through the channels of `peers`.
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }

    /// The channels it forwards through.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Runs `op` on `leader`.
    pub async fn execute(
        &self,
        leader: &NexusNode,
        op: &LeaderOp,
    ) -> Result<LeaderReply, ForwardError> {
        let mut client = self.peers.client(leader.cluster_addr);
        let payload = encode(op).map_err(|e| ForwardError::NeverSent(e.to_string()))?;
        let mut call = self.peers.request(Frame { payload });
        call.set_timeout(FORWARD_TIMEOUT);
        let reply = client
            .forward(call)
            .await
            .map_err(|status| failed_call(&status))?;
        decode::<Result<LeaderReply, ForwardError>>("forward reply", &reply.into_inner().payload)
            .map_err(|e| ForwardError::OutcomeUnknown(e.to_string()))?
    }

    /// Asks `leader` for its read index.
    pub async fn read_index(&self, leader: &NexusNode) -> Result<u64, ForwardError> {
        let mut client = self.peers.client(leader.cluster_addr);
        let mut call = self.peers.request(Frame {
            payload: Vec::new(),
        });
        call.set_timeout(FORWARD_TIMEOUT);
        let reply = client
            .read_index(call)
            .await
            .map_err(|status| failed_call(&status))?;
        decode::<Result<u64, ForwardError>>("read index reply", &reply.into_inner().payload)
            .map_err(|e| ForwardError::OutcomeUnknown(e.to_string()))?
    }
}

/// What a call that failed in transport means: never sent when no
/// connection could be made, otherwise (a dropped connection, a keepalive
/// or request timeout) the leader may have taken it.
fn failed_call(status: &tonic::Status) -> ForwardError {
    if ConnectFailed::in_chain(status) {
        ForwardError::NeverSent(status.message().to_owned())
    } else {
        ForwardError::OutcomeUnknown(format!("{:?}: {}", status.code(), status.message()))
    }
}

#[cfg(test)]
mod tests {
    //! Forwards to peers that fail in each way a transport can: the
    //! classification must come out right whatever the errors say.

    use std::net::SocketAddr;
    use std::time::Duration;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use spike_dev_identity::ca::DevCa;
    use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
    use spike_sdk::svid::{Identity, SvidMaterial};
    use std::sync::Mutex;

    use spike_sdk::tls::{TlsListener, server_config};
    use tokio::io::AsyncReadExt;
    use tokio::sync::oneshot;
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::cluster::RestoreShard;
    use crate::transport::proto::SnapshotChunk;
    use crate::transport::proto::cluster_server::{Cluster, ClusterServer};

    /// Bytes the forwarded request carries, to see it arrive at the peer.
    const MARKER: &[u8; 32] = b"this request reached the leader!";

    fn identity(ca: &DevCa, path: &str) -> Identity {
        let id = format!("spiffe://{}{path}", ca.trust_domain().as_str());
        let minted = ca.mint(&id, Duration::from_secs(3600)).expect("mint SVID");
        let chain = minted
            .chain_der
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(minted.key_pkcs8_der.clone()));
        let bundle = vec![CertificateDer::from(ca.cert_der().to_vec())];
        let material = SvidMaterial::new(chain, key, [(ca.trust_domain().clone(), bundle)])
            .expect("SVID material");
        Identity::fixed(material)
    }

    struct Replicas {
        ca: DevCa,
        trust_roots: TrustRoots,
    }

    impl Replicas {
        fn new() -> Self {
            let ca = DevCa::generate("forward.test").expect("dev CA");
            let trust_roots = TrustRoots::single(ca.trust_domain().clone());
            Self { ca, trust_roots }
        }

        fn forwarder(&self) -> Forwarder {
            let identity = identity(&self.ca, "/spike/nexus/1");
            Forwarder::new(Peers::new(identity, self.trust_roots.clone()).expect("peers"))
        }

        /// A replica's cluster listener on loopback.
        async fn listener(&self) -> TlsListener {
            let identity = identity(&self.ca, "/spike/nexus/2");
            let mut tls = server_config(
                identity.clone(),
                PeerAuthorizer::role(self.trust_roots.clone(), Role::Nexus),
            )
            .expect("server config");
            tls.alpn_protocols = vec![b"h2".to_vec()];
            let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
            let max_age = spike_sdk::tls::CONNECTION_AGE_MAX_DEFAULT;
            spike_sdk::cli::listen(loopback, tls, &identity, max_age)
                .await
                .expect("listen")
        }

        /// A leader that reads until the forwarded request has arrived,
        /// then drops the connection unanswered; the receiver hears when
        /// the request arrived.
        async fn leader_that_dies_after_receiving(&self) -> (SocketAddr, oneshot::Receiver<()>) {
            let mut listener = self.listener().await;
            let address = listener.local_address();
            let (arrived, arrival) = oneshot::channel();
            tokio::spawn(async move {
                let Some(mut connection) = listener.accept().await else {
                    return;
                };
                let mut received = Vec::new();
                let mut buffer = [0u8; 4096];
                while !received
                    .windows(MARKER.len())
                    .any(|window| window == MARKER)
                {
                    match connection.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => received.extend_from_slice(&buffer[..read]),
                    }
                }
                drop(connection);
                let _ = arrived.send(());
            });
            (address, arrival)
        }

        /// A cluster port that takes the forwarded request and answers
        /// it the way a proxy in front of a failing leader does.
        async fn proxy_that_loses_the_upstream(&self) -> (SocketAddr, oneshot::Receiver<()>) {
            let listener = self.listener().await;
            let address = listener.local_address();
            let (arrived, arrival) = oneshot::channel();
            let service = ClusterServer::new(LostUpstream {
                arrived: Mutex::new(Some(arrived)),
            });
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(listener.into_stream()),
            );
            (address, arrival)
        }
    }

    /// Envoy's words when the upstream connection fails after the request
    /// went out: "connect" is in them, yet the request was sent.
    const LOST_UPSTREAM: &str = "upstream connect error or disconnect/reset before headers. \
                                 reset reason: connection termination";

    struct LostUpstream {
        arrived: Mutex<Option<oneshot::Sender<()>>>,
    }

    #[tonic::async_trait]
    impl Cluster for LostUpstream {
        async fn append_entries(&self, _: Request<Frame>) -> Result<Response<Frame>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn vote(&self, _: Request<Frame>) -> Result<Response<Frame>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn transfer_leader(&self, _: Request<Frame>) -> Result<Response<Frame>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn install_snapshot(
            &self,
            _: Request<tonic::Streaming<SnapshotChunk>>,
        ) -> Result<Response<Frame>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn forward(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
            let frame = request.into_inner();
            let payload = &frame.payload;
            if payload.windows(MARKER.len()).any(|window| window == MARKER) {
                let arrived = self
                    .arrived
                    .lock()
                    .ok()
                    .and_then(|mut sender| sender.take());
                if let Some(arrived) = arrived {
                    let _ = arrived.send(());
                }
            }
            Err(Status::unavailable(LOST_UPSTREAM))
        }

        async fn read_index(&self, _: Request<Frame>) -> Result<Response<Frame>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn version(&self, _: Request<Frame>) -> Result<Response<Frame>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn state_digests(&self, _: Request<Frame>) -> Result<Response<Frame>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    fn at(address: SocketAddr) -> NexusNode {
        NexusNode {
            cluster_addr: address,
            api_addr: address,
        }
    }

    fn marked_op() -> LeaderOp {
        LeaderOp::Restore(RestoreShard {
            index: 1,
            value: MARKER.to_vec(),
        })
    }

    /// An address on loopback where nothing listens.
    fn nothing_listening() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    }

    #[tokio::test]
    async fn a_forward_to_a_port_where_nothing_listens_was_never_sent() {
        let replicas = Replicas::new();
        let outcome = replicas
            .forwarder()
            .execute(&at(nothing_listening()), &marked_op())
            .await;
        assert!(
            matches!(outcome, Err(ForwardError::NeverSent(_))),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_forward_to_a_peer_that_hangs_up_before_tls_completes_was_never_sent() {
        let replicas = Replicas::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let outcome = replicas
            .forwarder()
            .execute(&at(address), &marked_op())
            .await;
        assert!(
            matches!(outcome, Err(ForwardError::NeverSent(_))),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_forward_the_leader_received_before_the_connection_dropped_has_an_unknown_outcome() {
        let replicas = Replicas::new();
        let (address, arrival) = replicas.leader_that_dies_after_receiving().await;
        let outcome = replicas
            .forwarder()
            .execute(&at(address), &marked_op())
            .await;
        assert!(arrival.await.is_ok(), "the request reached the leader");
        assert!(
            matches!(outcome, Err(ForwardError::OutcomeUnknown(_))),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_forward_answered_unavailable_with_connect_in_the_words_has_an_unknown_outcome() {
        let replicas = Replicas::new();
        let (address, arrival) = replicas.proxy_that_loses_the_upstream().await;
        let outcome = replicas
            .forwarder()
            .execute(&at(address), &marked_op())
            .await;
        assert!(arrival.await.is_ok(), "the request reached the peer");
        assert!(
            matches!(&outcome, Err(ForwardError::OutcomeUnknown(reason)) if reason.contains("connect")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_read_index_asked_of_a_port_where_nothing_listens_was_never_sent() {
        let replicas = Replicas::new();
        let outcome = replicas
            .forwarder()
            .read_index(&at(nothing_listening()))
            .await;
        assert!(
            matches!(outcome, Err(ForwardError::NeverSent(_))),
            "{outcome:?}"
        );
    }
}
