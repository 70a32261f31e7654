//! The simulated cluster: three keepers and three Nexus replicas, each a
//! turmoil host running the real `spike_keeper::serve` and
//! `spike_nexus::serve` with real SVIDs and mTLS, on the simulated network
//! and disk.

use std::future::pending;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spike_dev_identity::DevCa;
use spike_nexus::Startup;
use spike_nexus::config::{Args as NexusArgs, NexusConfig};
use spike_sdk::hardening::Hardening;
use spike_sdk::identity::TrustRoots;
use spike_sdk::svid::{Identity, SvidMaterial};

/// Replicas that found the cluster.
pub const REPLICAS: usize = 3;
/// Replicas that start with `--join` and wait to be added (membership
/// changes replace founders with them; ids are never reused).
pub const SPARES: usize = 3;
/// Every replica host, founders first.
pub const NEXUS_HOSTS: usize = REPLICAS + SPARES;
/// Keepers, each holding one share; any [`THRESHOLD`] recover the root key.
pub const KEEPERS: usize = 3;
/// Shares needed to recover the root key.
pub const THRESHOLD: usize = 2;
/// The replicas' API port.
pub const API_PORT: u16 = 8553;
/// The replicas' cluster (Raft) port.
pub const CLUSTER_PORT: u16 = 8554;
/// The keepers' port.
pub const KEEPER_PORT: u16 = 8443;
/// Entries between snapshots: small, so snapshots are built, sent and
/// installed across crashes.
const SNAPSHOT_EVERY: u64 = 300;
/// Log entries kept behind a snapshot.
const LOGS_KEPT: u64 = 50;

const TRUST_DOMAIN: &str = "spike.ist";

/// The SVIDs of a run: minted once per process, shared by every seed.
#[derive(Clone)]
pub struct Identities {
    /// Every role trusted from the one trust domain.
    pub trust_roots: TrustRoots,
    /// The replicas' SVID.
    pub nexus: Identity,
    /// The keepers' SVID.
    pub keeper: Identity,
    /// The clients' SVID (a superuser operator).
    pub superuser: Identity,
    /// A workload's SVID: the policy workload grants and revokes its read
    /// access.
    pub app: Identity,
}

impl Identities {
    /// A fresh development CA and one SVID per role.
    pub fn mint() -> anyhow::Result<Self> {
        let ca = DevCa::generate(TRUST_DOMAIN)?;
        let trust_domain = ca.trust_domain().clone();
        let svid = |path: &str| -> anyhow::Result<Identity> {
            let minted = ca.mint(
                &format!("spiffe://{TRUST_DOMAIN}{path}"),
                Duration::from_secs(30 * 24 * 3600),
            )?;
            let chain = minted
                .chain_der
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(minted.key_pkcs8_der));
            let bundle = vec![CertificateDer::from(ca.cert_der().to_vec())];
            let material = SvidMaterial::new(chain, key, [(trust_domain.clone(), bundle)])?;
            Ok(Identity::fixed(material))
        };
        Ok(Self {
            trust_roots: TrustRoots::single(trust_domain.clone()),
            nexus: svid("/spike/nexus")?,
            keeper: svid("/spike/keeper")?,
            superuser: svid("/spike/pilot/role/superuser")?,
            app: svid("/app/jepsen")?,
        })
    }
}

/// A replica's host name.
pub fn nexus_name(index: usize) -> String {
    format!("nexus-{}", index + 1)
}

/// A keeper's host name.
pub fn keeper_name(index: usize) -> String {
    format!("keeper-{}", index + 1)
}

/// Every replica host's name, spares included.
pub fn nexus_names() -> Vec<String> {
    (0..NEXUS_HOSTS).map(nexus_name).collect()
}

/// Every keeper's host name.
pub fn keeper_names() -> Vec<String> {
    (0..KEEPERS).map(keeper_name).collect()
}

/// How the replicas are configured beyond the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicaOptions {
    /// The deliberately unsafe setting: reads from local state without a
    /// read index. A run with it must find anomalies.
    pub unsafe_local_reads: bool,
}

/// Adds the keepers and replicas to `sim`, with their data under `root`.
pub fn add_hosts(
    sim: &mut turmoil::Sim<'_>,
    identities: &Identities,
    root: &Path,
    seed: u64,
    options: ReplicaOptions,
) {
    for index in 0..KEEPERS {
        let name = keeper_name(index);
        let identities = identities.clone();
        let host = name.clone();
        sim.host(name.as_str(), move || {
            let identities = identities.clone();
            let host = host.clone();
            async move {
                let address = SocketAddr::new(turmoil::lookup(host.as_str()), KEEPER_PORT);
                spike_keeper::serve(
                    address,
                    identities.keeper,
                    identities.trust_roots,
                    no_hardening(),
                    spike_sdk::tls::CONNECTION_AGE_MAX_DEFAULT,
                    pending(),
                )
                .await?;
                Ok(())
            }
        });
    }
    for index in 0..NEXUS_HOSTS {
        let name = nexus_name(index);
        let identities = identities.clone();
        let data_dir = root.join(&name);
        // Each replica draws its election timeouts from a seed of its own.
        let raft_seed = seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        sim.host(name.as_str(), move || {
            let identities = identities.clone();
            let data_dir = data_dir.clone();
            async move {
                let startup = Startup {
                    config: nexus_config(index, &data_dir, options)?,
                    identity: identities.nexus,
                    trust_roots: identities.trust_roots,
                    hardening: no_hardening(),
                    test_clock_offset: false,
                };
                spike_nexus::seeded(raft_seed, spike_nexus::serve(startup, pending())).await?;
                Ok(())
            }
        });
    }
}

/// The configuration replica `index` gets from its flags, as the binary
/// would parse them.
fn nexus_config(
    index: usize,
    data_dir: &Path,
    options: ReplicaOptions,
) -> anyhow::Result<NexusConfig> {
    let peers: Vec<String> = (0..REPLICAS)
        .map(|peer| {
            let (cluster, api) = nexus_addresses(peer);
            format!("{}={cluster}/{api}", peer + 1)
        })
        .collect();
    let keepers: Vec<String> = keeper_names()
        .iter()
        .map(|name| SocketAddr::new(turmoil::lookup(name.as_str()), KEEPER_PORT).to_string())
        .collect();
    let mut flags = vec!["nexus".to_owned(), format!("--node-id={}", index + 1)];
    if index < REPLICAS {
        flags.push(format!("--peers={}", peers.join(",")));
    } else {
        let (cluster, api) = nexus_addresses(index);
        flags.push("--join".to_owned());
        flags.push(format!("--cluster-addr={cluster}"));
        flags.push(format!("--api-addr={api}"));
    }
    flags.extend([
        format!("--keepers={}", keepers.join(",")),
        format!("--shares={KEEPERS}"),
        format!("--threshold={THRESHOLD}"),
        "--keeper-update-interval=1s".to_owned(),
        // A replacement votes well within the 4 s a replacement is held.
        "--autopilot-stabilization-time=1s".to_owned(),
        format!("--snapshot-every={SNAPSHOT_EVERY}"),
        format!("--logs-kept={LOGS_KEPT}"),
        format!("--data-dir={}", data_dir.display()),
    ]);
    if options.unsafe_local_reads {
        flags.push("--unsafe-local-reads".to_owned());
    }
    let args = NexusArgs::try_parse_from(flags).context("nexus flags")?;
    Ok(NexusConfig::from_args(&args)?)
}

fn no_hardening() -> Hardening {
    Hardening {
        core_dumps_disabled: false,
        non_dumpable: false,
        memory_locked: false,
        unlocked_by_default: false,
    }
}

/// The cluster and API addresses of replica host `index` (inside the
/// simulation).
pub fn nexus_addresses(index: usize) -> (SocketAddr, SocketAddr) {
    let ip = turmoil::lookup(nexus_name(index).as_str());
    (
        SocketAddr::new(ip, CLUSTER_PORT),
        SocketAddr::new(ip, API_PORT),
    )
}

/// The API addresses of the founding replicas, the clients' endpoints.
pub fn api_addresses() -> Vec<SocketAddr> {
    (0..REPLICAS)
        .map(|index| nexus_addresses(index).1)
        .collect()
}

/// The data directory of a replica host.
pub fn data_dir(root: &Path, host: &str) -> PathBuf {
    root.join(host)
}
