//! SVIDs rotate under running servers: open connections keep working, new
//! connections present the new SVID, and nothing restarts.

use std::time::Duration;

use spike_dev_identity::{IdentityDirectory, ServeOptions};
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::svid::{Identity, SvidFiles, SvidSource};
use spike_tests::{DevIdentities, EchoServer, STEP_TIMEOUT, exchange};

fn expect_nexus() -> PeerAuthorizer {
    PeerAuthorizer::role(
        TrustRoots::from_environment(&[]).expect("defaults"),
        Role::Nexus,
    )
}

async fn wait_for_rotation(identity: &Identity) {
    let mut updates = identity.subscribe();
    updates.mark_unchanged();
    tokio::time::timeout(STEP_TIMEOUT, updates.changed())
        .await
        .expect("the SVID rotated in time")
        .expect("the identity is still being refreshed");
}

#[tokio::test]
async fn a_server_keeps_serving_while_its_svid_rotates_and_new_connections_get_the_new_one() {
    let dev = DevIdentities::start("spike.ist", &[], ServeOptions::default()).await;
    let nexus = dev.identity("nexus").await;
    let pilot = dev.identity("superuser").await;
    let server = EchoServer::start(nexus.clone(), PeerAuthorizer::any_verified()).await;

    tracing_phase("connect before rotation");
    let mut before = exchange(&pilot, expect_nexus(), server.address)
        .await
        .expect("first connection");

    tracing_phase("rotate the nexus SVID through the Workload API");
    let rotated = wait_for_rotation(&nexus);
    dev.server.rotate("nexus").expect("rotate");
    rotated.await;

    tracing_phase("a new connection sees the new SVID, the old one still works");
    let after = exchange(&pilot, expect_nexus(), server.address)
        .await
        .expect("second connection");
    assert_ne!(
        before.server_leaf, after.server_leaf,
        "new connections present the new SVID"
    );
    assert_eq!(before.server.spiffe_id, after.server.spiffe_id);
    before
        .ping()
        .await
        .expect("the connection opened before rotation still works");
}

#[tokio::test]
async fn short_lived_svids_rotate_on_schedule_without_restart() {
    let options = ServeOptions {
        svid_ttl: Duration::from_secs(60),
        rotate_every: Some(Duration::from_millis(700)),
    };
    let dev = DevIdentities::start("spike.ist", &[], options).await;
    let nexus = dev.identity("nexus").await;
    let pilot = dev.identity("superuser").await;
    let server = EchoServer::start(nexus.clone(), PeerAuthorizer::any_verified()).await;

    let first = exchange(&pilot, expect_nexus(), server.address)
        .await
        .expect("connect");
    wait_for_rotation(&nexus).await;
    wait_for_rotation(&pilot).await;
    let second = exchange(&pilot, expect_nexus(), server.address)
        .await
        .expect("connect after rotations");
    assert_ne!(first.server_leaf, second.server_leaf);
}

#[tokio::test]
async fn svid_files_are_reloaded_when_they_change_and_a_torn_write_is_ignored() {
    let dev = DevIdentities::start("spike.ist", &[], ServeOptions::default()).await;
    let files = SvidFiles {
        cert: dev.directory.cert_path("nexus"),
        key: dev.directory.key_path("nexus"),
        bundle: dev.directory.bundle_path("nexus"),
    };
    let nexus = SvidSource::Files(files.clone())
        .load(STEP_TIMEOUT)
        .await
        .expect("file identity");
    let pilot = dev.identity("superuser").await;
    let server = EchoServer::start(nexus.clone(), PeerAuthorizer::any_verified()).await;
    let first = exchange(&pilot, expect_nexus(), server.address)
        .await
        .expect("connect");

    tracing_phase("re-mint the files as spiffe-helper would");
    let rotated = wait_for_rotation(&nexus);
    IdentityDirectory::create(dev.dir.path(), "spike.ist", &[], Duration::from_secs(3600))
        .expect("re-mint");
    rotated.await;
    let second = exchange(&pilot, expect_nexus(), server.address)
        .await
        .expect("connect");
    assert_ne!(first.server_leaf, second.server_leaf);

    tracing_phase("a broken certificate file leaves the last good SVID in use");
    std::fs::write(&files.cert, b"-----BEGIN CERTIFICATE-----\ngarbage\n").expect("write");
    tokio::time::sleep(spike_sdk::svid::files::FILE_POLL_INTERVAL * 3).await;
    let third = exchange(&pilot, expect_nexus(), server.address)
        .await
        .expect("still serving");
    assert_eq!(second.server_leaf, third.server_leaf);
}

fn tracing_phase(name: &str) {
    eprintln!("--- {name}");
}
