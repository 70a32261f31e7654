//! Process ids as `cluster.json` records them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A process id: positive, as the kernel hands them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Pid(pub(crate) rustix::process::Pid);

/// A number that is no process id (0, or past `i32::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a process id")]
pub struct NotAPid(u32);

impl Pid {
    /// The number.
    pub fn get(self) -> u32 {
        self.0.as_raw_nonzero().get().unsigned_abs()
    }
}

impl TryFrom<u32> for Pid {
    type Error = NotAPid;

    fn try_from(raw: u32) -> Result<Self, Self::Error> {
        i32::try_from(raw)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .map(Self)
            .ok_or(NotAPid(raw))
    }
}

impl From<Pid> for u32 {
    fn from(pid: Pid) -> Self {
        pid.get()
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(formatter)
    }
}
