//! Raft RPCs between replicas (filled in with the cluster transport).
