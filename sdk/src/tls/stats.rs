//! What a listener counts for its server's metrics: failed handshakes by
//! reason, connections refused by limit, connections open. Plain atomics,
//! so the sdk needs no metrics library: a server reads them when it is
//! scraped and exports them in whatever format it serves.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::{CertificateError, Error};

use crate::identity::PeerRejected;

/// Why a TLS handshake failed, in a bounded set of classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer did not finish within [`super::HANDSHAKE_TIMEOUT`].
    Timeout,
    /// The peer's chain is past its notAfter or before its notBefore.
    Expired,
    /// The peer's chain does not verify against the bundle of its trust
    /// domain (unknown CA, bad signature), or it is from a trust domain we
    /// hold no bundle for.
    Untrusted,
    /// The chain verifies but the listener's authorizer refuses the
    /// SPIFFE ID (e.g. a workload on the cluster port).
    NotAuthorized,
    /// No certificate, or one that is not an SVID or cannot be parsed.
    BadCertificate,
    /// The peer ended the handshake with an alert: usually it does not
    /// trust our SVID.
    PeerAlert,
    /// Anything else TLS refused (versions, ciphers, malformed messages).
    Protocol,
    /// The connection broke off (reset, EOF) before TLS said anything.
    Other,
}

impl HandshakeFailure {
    /// Every class, in a fixed order.
    pub const ALL: [Self; 8] = [
        Self::Timeout,
        Self::Expired,
        Self::Untrusted,
        Self::NotAuthorized,
        Self::BadCertificate,
        Self::PeerAlert,
        Self::Protocol,
        Self::Other,
    ];

    /// The class as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Expired => "expired",
            Self::Untrusted => "untrusted",
            Self::NotAuthorized => "not_authorized",
            Self::BadCertificate => "bad_certificate",
            Self::PeerAlert => "peer_alert",
            Self::Protocol => "protocol",
            Self::Other => "other",
        }
    }

    /// The class of a failed server handshake; `None` for a connection
    /// refused by a limit (counted as a refusal, not a failure).
    pub fn of(error: &io::Error) -> Option<Self> {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => return None,
            io::ErrorKind::TimedOut => return Some(Self::Timeout),
            _ => {}
        }
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
        else {
            // The listener's own checks after the handshake: no
            // certificate, or one without a SPIFFE ID.
            return Some(if error.kind() == io::ErrorKind::PermissionDenied {
                Self::BadCertificate
            } else {
                Self::Other
            });
        };
        Some(match tls {
            Error::InvalidCertificate(certificate) => Self::of_certificate(certificate),
            Error::NoCertificatesPresented => Self::BadCertificate,
            Error::AlertReceived(_) => Self::PeerAlert,
            _ => Self::Protocol,
        })
    }

    fn of_certificate(error: &CertificateError) -> Self {
        match error {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Self::Expired,
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::Revoked => Self::Untrusted,
            CertificateError::Other(other) if other.0.downcast_ref::<PeerRejected>().is_some() => {
                Self::NotAuthorized
            }
            _ => Self::BadCertificate,
        }
    }
}

/// Which limit closed a connection (see [`super::ConnectionLimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRefusal {
    /// Too many handshakes in progress from the peer's address.
    HandshakesPerAddress,
    /// The listener holds its most connections.
    Connections,
    /// The peer's SPIFFE ID holds its most connections.
    ConnectionsPerPeer,
}

impl LimitRefusal {
    /// Every limit, in a fixed order.
    pub const ALL: [Self; 3] = [
        Self::HandshakesPerAddress,
        Self::Connections,
        Self::ConnectionsPerPeer,
    ];

    /// The limit as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandshakesPerAddress => "handshakes_per_address",
            Self::Connections => "connections",
            Self::ConnectionsPerPeer => "connections_per_peer",
        }
    }
}

/// One listener's counts since it started.
#[derive(Debug, Default)]
pub struct ListenerStats {
    handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    refused: [AtomicU64; LimitRefusal::ALL.len()],
    open: AtomicU64,
}

impl ListenerStats {
    /// Handshakes that failed for `reason`.
    pub fn handshake_failures(&self, reason: HandshakeFailure) -> u64 {
        self.handshake_failures[reason as usize].load(Ordering::Relaxed)
    }

    /// Connections closed by `limit`.
    pub fn refused(&self, limit: LimitRefusal) -> u64 {
        self.refused[limit as usize].load(Ordering::Relaxed)
    }

    /// Established connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub(super) fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn refuse(&self, limit: LimitRefusal) {
        self.refused[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tls(error: Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn handshake_errors_fall_into_their_class() {
        let rejected = PeerRejected {
            peer: "spiffe://d/w".to_owned(),
            expected: "nexus".to_owned(),
        };
        let cases = [
            (
                io::Error::new(io::ErrorKind::TimedOut, "t"),
                Some(HandshakeFailure::Timeout),
            ),
            (
                io::Error::new(io::ErrorKind::ConnectionRefused, "limit"),
                None,
            ),
            (
                tls(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
                Some(HandshakeFailure::Untrusted),
            ),
            (
                tls(Error::InvalidCertificate(CertificateError::Expired)),
                Some(HandshakeFailure::Expired),
            ),
            (
                tls(Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(rejected)),
                ))),
                Some(HandshakeFailure::NotAuthorized),
            ),
            (
                tls(Error::NoCertificatesPresented),
                Some(HandshakeFailure::BadCertificate),
            ),
            (
                tls(Error::AlertReceived(rustls::AlertDescription::UnknownCA)),
                Some(HandshakeFailure::PeerAlert),
            ),
            (
                tls(Error::HandshakeNotComplete),
                Some(HandshakeFailure::Protocol),
            ),
            (
                io::Error::new(io::ErrorKind::UnexpectedEof, "eof"),
                Some(HandshakeFailure::Other),
            ),
        ];
        for (error, class) in cases {
            assert_eq!(HandshakeFailure::of(&error), class, "{error}");
        }
    }

    #[test]
    fn counts_go_to_their_own_slot() {
        let stats = ListenerStats::default();
        stats.handshake_failed(HandshakeFailure::NotAuthorized);
        stats.refuse(LimitRefusal::ConnectionsPerPeer);
        stats.opened();
        stats.opened();
        stats.closed();
        for reason in HandshakeFailure::ALL {
            let expected = u64::from(reason == HandshakeFailure::NotAuthorized);
            assert_eq!(stats.handshake_failures(reason), expected, "{reason:?}");
        }
        for limit in LimitRefusal::ALL {
            let expected = u64::from(limit == LimitRefusal::ConnectionsPerPeer);
            assert_eq!(stats.refused(limit), expected, "{limit:?}");
        }
        assert_eq!(stats.open(), 1);
    }
}
