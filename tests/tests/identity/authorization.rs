//! Who may connect to whom: the chain must verify against the bundle of the
//! peer's trust domain, and the verified SPIFFE ID must satisfy the role
//! check, on both sides of the connection.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use spike_dev_identity::{DevCa, MintedSvid, ServeOptions};
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::svid::{Identity, SvidMaterial};
use spike_tests::{DevIdentities, EchoServer, exchange, spiffe_id};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::raw_tls;

fn roots() -> TrustRoots {
    TrustRoots::from_environment(&[]).expect("default trust roots")
}

fn der(certificates: &[Vec<u8>]) -> Vec<CertificateDer<'static>> {
    certificates
        .iter()
        .cloned()
        .map(CertificateDer::from)
        .collect()
}

/// An identity built from a minted SVID and the given bundles.
fn fixed_identity(svid: &MintedSvid, bundles: &[&DevCa]) -> Identity {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key_pkcs8_der.clone()));
    let bundles = bundles
        .iter()
        .map(|ca| (ca.trust_domain().clone(), der(&[ca.cert_der().to_vec()])));
    Identity::fixed(SvidMaterial::new(der(&svid.chain_der), key, bundles).expect("valid material"))
}

async fn dev() -> DevIdentities {
    DevIdentities::start(
        "spike.ist",
        &["billing=/app/billing"],
        ServeOptions::default(),
    )
    .await
}

/// A Nexus SVID of the dev CA that expired an hour ago.
fn expired_nexus_svid(ca: &DevCa) -> MintedSvid {
    let now = OffsetDateTime::now_utc();
    ca.mint_with_validity(
        "spiffe://spike.ist/spike/nexus",
        now - time::Duration::hours(2),
        now - time::Duration::hours(1),
    )
    .expect("mint")
}

/// Asserts the server let no connection through within a short wait.
async fn assert_no_peer_admitted(server: &mut EchoServer) {
    let admitted = tokio::time::timeout(Duration::from_millis(300), server.peers.recv()).await;
    assert!(admitted.is_err(), "server admitted {:?}", admitted);
}

#[tokio::test]
async fn a_pilot_reaches_a_nexus_and_each_side_sees_the_others_verified_id() {
    let dev = dev().await;
    let nexus = dev.identity("nexus").await;
    let pilot = dev.identity("superuser").await;
    let mut server = EchoServer::start(nexus, PeerAuthorizer::any_verified()).await;

    let done = exchange(
        &pilot,
        PeerAuthorizer::role(roots(), Role::Nexus),
        server.address,
    )
    .await
    .expect("pilot talks to nexus");

    assert_eq!(
        done.server.spiffe_id,
        spiffe_id("spiffe://spike.ist/spike/nexus")
    );
    let seen = server.peers.recv().await.expect("server saw the client");
    assert_eq!(
        seen.spiffe_id,
        spiffe_id("spiffe://spike.ist/spike/pilot/role/superuser")
    );
}

#[tokio::test]
async fn a_client_refuses_a_server_without_the_expected_role() {
    let dev = dev().await;
    let keeper = dev.identity("keeper").await;
    let workload = dev.identity("billing").await;
    let server = EchoServer::start(keeper, PeerAuthorizer::any_verified()).await;

    let error = exchange(
        &workload,
        PeerAuthorizer::role(roots(), Role::Nexus),
        server.address,
    )
    .await
    .err()
    .expect("a keeper is not a nexus");
    assert!(
        error.contains("spiffe://spike.ist/spike/keeper is not a SPIKE nexus"),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_refuses_clients_without_an_allowed_role() {
    let dev = dev().await;
    let keeper = dev.identity("keeper").await;
    let mut server = EchoServer::start(keeper, PeerAuthorizer::role(roots(), Role::Nexus)).await;

    for name in ["superuser", "billing", "keeper", "lite-workload"] {
        let client = dev.identity(name).await;
        let outcome = exchange(&client, PeerAuthorizer::any_verified(), server.address).await;
        assert!(
            outcome.is_err(),
            "{name} got through to a nexus-only server"
        );
    }
    assert_no_peer_admitted(&mut server).await;

    let nexus = dev.identity("nexus").await;
    exchange(&nexus, PeerAuthorizer::any_verified(), server.address)
        .await
        .expect("a nexus gets through");
}

#[tokio::test]
async fn a_rogue_ca_of_the_same_trust_domain_is_refused_both_ways() {
    let dev = dev().await;
    let rogue_ca = DevCa::generate("spike.ist").expect("rogue CA");
    let rogue_nexus = rogue_ca
        .mint("spiffe://spike.ist/spike/nexus", Duration::from_secs(600))
        .expect("mint");
    let impostor = fixed_identity(&rogue_nexus, &[&rogue_ca]);

    // As a client.
    let nexus = dev.identity("nexus").await;
    let mut server = EchoServer::start(nexus, PeerAuthorizer::any_verified()).await;
    assert!(
        exchange(&impostor, PeerAuthorizer::any_verified(), server.address)
            .await
            .is_err()
    );
    assert_no_peer_admitted(&mut server).await;

    // As a server impersonating Nexus.
    let fake = EchoServer::start(impostor, PeerAuthorizer::any_verified()).await;
    let pilot = dev.identity("superuser").await;
    let error = exchange(
        &pilot,
        PeerAuthorizer::role(roots(), Role::Nexus),
        fake.address,
    )
    .await
    .err()
    .expect("the pilot refuses a nexus signed by another CA");
    assert!(error.contains("certificate"), "{error}");
}

#[tokio::test]
async fn a_foreign_trust_domain_is_refused_without_its_bundle() {
    let dev = dev().await;
    let foreign_ca = DevCa::generate("evil.example").expect("CA");
    let foreign = fixed_identity(
        &foreign_ca
            .mint(
                "spiffe://evil.example/spike/nexus",
                Duration::from_secs(600),
            )
            .expect("mint"),
        &[&foreign_ca],
    );
    let nexus = dev.identity("nexus").await;
    let mut server = EchoServer::start(nexus, PeerAuthorizer::any_verified()).await;

    assert!(
        exchange(&foreign, PeerAuthorizer::any_verified(), server.address)
            .await
            .is_err()
    );
    assert_no_peer_admitted(&mut server).await;
}

#[tokio::test]
async fn a_federated_domain_verifies_but_roles_only_come_from_trust_roots() {
    let home_ca = DevCa::generate("spike.ist").expect("CA");
    let partner_ca = DevCa::generate("partner.example").expect("CA");
    let server_identity = fixed_identity(
        &home_ca
            .mint("spiffe://spike.ist/spike/keeper", Duration::from_secs(600))
            .expect("mint"),
        &[&home_ca, &partner_ca],
    );
    let partner_nexus = fixed_identity(
        &partner_ca
            .mint(
                "spiffe://partner.example/spike/nexus",
                Duration::from_secs(600),
            )
            .expect("mint"),
        &[&partner_ca, &home_ca],
    );

    // Its chain verifies (the bundle is there), so a server that admits any
    // verified peer lets it in...
    let open = EchoServer::start(server_identity.clone(), PeerAuthorizer::any_verified()).await;
    exchange(&partner_nexus, PeerAuthorizer::any_verified(), open.address)
        .await
        .expect("verified against the federated bundle");

    // ...but it is not a Nexus: partner.example is not a Nexus trust root.
    let mut strict =
        EchoServer::start(server_identity, PeerAuthorizer::role(roots(), Role::Nexus)).await;
    assert!(
        exchange(
            &partner_nexus,
            PeerAuthorizer::any_verified(),
            strict.address
        )
        .await
        .is_err()
    );
    assert_no_peer_admitted(&mut strict).await;
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let dev = dev().await;
    let ca = dev.directory.load_ca().expect("dev CA");
    let expired = expired_nexus_svid(&ca);
    let keeper = dev.identity("keeper").await;
    let mut server = EchoServer::start(keeper, PeerAuthorizer::role(roots(), Role::Nexus)).await;

    let outcome = raw_exchange(raw_tls::client_presenting(&expired), server.address).await;
    assert!(outcome.is_err(), "an expired SVID got through");
    assert_no_peer_admitted(&mut server).await;

    // Control: the same route with a valid SVID works.
    let valid = ca
        .mint("spiffe://spike.ist/spike/nexus", Duration::from_secs(600))
        .expect("mint");
    raw_exchange(raw_tls::client_presenting(&valid), server.address)
        .await
        .expect("a valid nexus SVID gets through");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let dev = dev().await;
    let nexus = dev.identity("nexus").await;
    let mut server = EchoServer::start(nexus, PeerAuthorizer::any_verified()).await;

    let outcome = raw_exchange(raw_tls::client_without_certificate(), server.address).await;
    assert!(
        outcome.is_err(),
        "a client without a certificate got through"
    );
    assert_no_peer_admitted(&mut server).await;
}

#[tokio::test]
async fn a_client_refuses_an_expired_server_certificate() {
    let dev = dev().await;
    let ca = dev.directory.load_ca().expect("dev CA");
    let expired = expired_nexus_svid(&ca);
    let address = raw_tls::serve_presenting(&expired).await;
    let pilot = dev.identity("superuser").await;
    let error = exchange(&pilot, PeerAuthorizer::role(roots(), Role::Nexus), address)
        .await
        .err()
        .expect("an expired nexus certificate is refused");
    assert!(error.to_lowercase().contains("expired"), "{error}");
}

/// A ping/pong through a hand-built client configuration.
async fn raw_exchange(
    config: rustls::ClientConfig,
    address: std::net::SocketAddr,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::IpAddress(address.ip().into());
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut pong = [0u8; 4];
    tokio::time::timeout(spike_tests::STEP_TIMEOUT, stream.read_exact(&mut pong))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(())
}
