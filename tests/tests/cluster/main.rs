//! A real cluster on loopback: 3 Nexus replicas, 5 keepers (threshold 3),
//! started with `spike-dev-cluster` as an operator would. Replicas are killed,
//! restarted, starved of keepers and restored; every acknowledged secret
//! must survive and every replica must end up with the same root key.

mod audit;
mod autopilot;
mod backup;
mod benchmark;
mod corruption;
mod dashboard;
mod faults;
mod large_backup;
mod membership;
mod metrics;
mod network;
mod quotas;
mod rotation;
mod runbook;
mod safety;
mod scheduled_backup;
mod sdk;
mod support;
