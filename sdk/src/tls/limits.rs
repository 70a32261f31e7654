//! How many connections a listener holds: in total, per verified peer, and
//! handshakes in progress per source address (before the peer is known,
//! its address is all there is).
//!
//! A connection over a limit is closed at once: after its handshake when
//! the peer is over its share, before it when the address is. Each
//! accepted connection holds a [`ConnectionPermit`] for as long as it
//! lives.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::stats::{LimitRefusal, ListenerStats};
use crate::identity::SpiffeId;

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most established connections at once.
    pub connections_max: usize,
    /// Most established connections of one SPIFFE ID.
    pub connections_per_peer_max: usize,
    /// Most TLS handshakes in progress from one IP address.
    pub handshakes_per_address_max: usize,
}

impl ConnectionLimits {
    /// The defaults below.
    pub const DEFAULT: Self = Self {
        connections_max: CONNECTIONS_MAX_DEFAULT,
        connections_per_peer_max: CONNECTIONS_PER_PEER_MAX_DEFAULT,
        handshakes_per_address_max: HANDSHAKES_PER_ADDRESS_MAX_DEFAULT,
    };
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Default total connection cap: far below a typical 65,536 descriptor
/// limit, far above what a cluster's clients need (the SDK keeps one
/// connection per replica).
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// Default cap per SPIFFE ID: room for many SDK clients sharing one
/// identity, small enough that one identity cannot take the total.
pub const CONNECTIONS_PER_PEER_MAX_DEFAULT: usize = 256;
/// Default cap of handshakes in progress per address, an eighth of
/// [`super::HANDSHAKES_IN_FLIGHT_MAX`]: one address that opens sockets and
/// sends nothing cannot hold every handshake slot.
pub const HANDSHAKES_PER_ADDRESS_MAX_DEFAULT: usize = 32;

/// Counts connections against [`ConnectionLimits`]; shared by a
/// listener's accept loop and the permits it hands out.
#[derive(Debug)]
pub(crate) struct ConnectionGate {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
    /// Refusals and open connections, for the server's metrics.
    stats: Arc<ListenerStats>,
}

#[derive(Debug, Default)]
struct Counts {
    connections: usize,
    per_peer: HashMap<SpiffeId, usize>,
    handshakes: HashMap<IpAddr, usize>,
}

/// One counted key; dropping it gives the place back.
fn release<K: Eq + Hash>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

impl ConnectionGate {
    pub(crate) fn new(limits: ConnectionLimits, stats: Arc<ListenerStats>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::default(),
            stats,
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the gate counts.
    pub(crate) fn stats(&self) -> &ListenerStats {
        &self.stats
    }

    /// A handshake slot for `address`, or `None` if it has its share.
    pub(crate) fn handshake(self: &Arc<Self>, address: IpAddr) -> Option<HandshakePermit> {
        let mut counts = self.counts();
        let count = counts.handshakes.entry(address).or_default();
        if *count >= self.limits.handshakes_per_address_max {
            self.stats.refuse(LimitRefusal::HandshakesPerAddress);
            return None;
        }
        *count += 1;
        Some(HandshakePermit {
            gate: self.clone(),
            address,
        })
    }

    /// A place for an established connection of `peer`, or `None` if the
    /// listener or the peer is full.
    pub(crate) fn connection(self: &Arc<Self>, peer: &SpiffeId) -> Option<ConnectionPermit> {
        let mut counts = self.counts();
        if counts.connections >= self.limits.connections_max {
            self.stats.refuse(LimitRefusal::Connections);
            return None;
        }
        let count = counts.per_peer.entry(peer.clone()).or_default();
        if *count >= self.limits.connections_per_peer_max {
            self.stats.refuse(LimitRefusal::ConnectionsPerPeer);
            return None;
        }
        *count += 1;
        counts.connections += 1;
        self.stats.opened();
        Some(ConnectionPermit {
            gate: self.clone(),
            peer: peer.clone(),
        })
    }
}

/// A handshake in progress from one address.
#[derive(Debug)]
pub(crate) struct HandshakePermit {
    gate: Arc<ConnectionGate>,
    address: IpAddr,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        release(&mut self.gate.counts().handshakes, &self.address);
    }
}

/// An established connection's place; held by the connection.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    peer: SpiffeId,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.gate.counts();
        counts.connections -= 1;
        release(&mut counts.per_peer, &self.peer);
        self.gate.stats.closed();
    }
}

/// Raises this process's soft limit on open files to its hard limit (as
/// Go's runtime does at start), so the connection caps, not the OS, decide
/// when connections are refused. Returns the limit now in force, if known.
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    // None means unlimited.
    Some(limit.current.unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SpiffeId {
        text.parse().expect("a SPIFFE ID")
    }

    #[test]
    fn peers_and_addresses_get_their_share_and_give_it_back() {
        let stats = Arc::new(ListenerStats::default());
        let gate = ConnectionGate::new(
            ConnectionLimits {
                connections_max: 3,
                connections_per_peer_max: 2,
                handshakes_per_address_max: 1,
            },
            stats.clone(),
        );
        let (a, b) = (id("spiffe://d/a"), id("spiffe://d/b"));
        let first = gate.connection(&a).expect("a's first");
        let _second = gate.connection(&a).expect("a's second");
        assert!(gate.connection(&a).is_none(), "a is over its share");
        let _third = gate.connection(&b).expect("b still gets in");
        assert!(gate.connection(&b).is_none(), "the listener is full");
        drop(first);
        assert!(gate.connection(&b).is_some(), "a place came back");

        let address: IpAddr = "127.0.0.2".parse().expect("address");
        let handshake = gate.handshake(address).expect("first handshake");
        assert!(gate.handshake(address).is_none());
        assert!(
            gate.handshake("127.0.0.1".parse().expect("address"))
                .is_some()
        );
        drop(handshake);
        assert!(gate.handshake(address).is_some());

        assert_eq!(stats.refused(LimitRefusal::Connections), 1);
        assert_eq!(stats.refused(LimitRefusal::ConnectionsPerPeer), 1);
        assert_eq!(stats.refused(LimitRefusal::HandshakesPerAddress), 1);
        assert_eq!(stats.open(), 2, "a's second and b's first are open");
    }
}
