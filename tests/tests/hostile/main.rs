//! A hostile client with a valid SVID: what it sends must be refused
//! without changing anything, and without hurting the cluster.

mod snapshot;
