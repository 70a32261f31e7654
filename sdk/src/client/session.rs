//! Exactly-once writes: a write borrows a session (a random client id and
//! its next sequence number) for its whole life, retries included. The
//! replicated state machine keeps the last answer per session, so a retry
//! after a timeout or a failover returns the first answer instead of
//! applying the write twice. Sessions are reused by later writes, so their
//! number is bounded by the number of writes in flight.

use std::sync::Mutex;

/// A client id and the sequence number its next write uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Session {
    pub(crate) client_id: u128,
    pub(crate) next_sequence: u64,
}

impl Session {
    /// The session's headers: client id (32 hex digits) and sequence.
    pub(crate) fn headers(&self) -> (String, String) {
        (
            format!("{:032x}", self.client_id),
            self.next_sequence.to_string(),
        )
    }
}

/// Sessions not lent to a write right now.
#[derive(Default)]
pub(crate) struct Sessions {
    idle: Mutex<Vec<Session>>,
}

impl Sessions {
    /// A session for one write: an idle one, or a fresh random id.
    pub(crate) fn take(&self) -> Session {
        self.lock().pop().unwrap_or_else(|| Session {
            client_id: u128::from_be_bytes(crate::crypto::random::array().unwrap_or_else(|_| {
                // Without OS randomness, time and address still make
                // collisions between clients vanishingly unlikely.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                (now ^ (self as *const Self as u128)).to_be_bytes()
            })),
            next_sequence: 1,
        })
    }

    /// Gives `session` back after its write, whatever happened: its
    /// sequence number is spent, so a late copy of that write is refused,
    /// never applied after a newer one.
    pub(crate) fn give_back(&self, mut session: Session) {
        session.next_sequence += 1;
        self.lock().push(session);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Session>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
