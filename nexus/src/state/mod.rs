//! The replicated state: what every replica holds, and the deterministic
//! apply function that changes it.
//!
//! Only ciphertext and public metadata live here. [`store`] keeps it in
//! redb tables; [`apply`] is what each command does to them; [`secret`]
//! holds SPIKE's version rules; [`command`] is what the Raft log carries.

mod apply;
pub mod command;
pub mod digest;
pub mod secret;
pub mod store;
