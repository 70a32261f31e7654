//! The decisions of the root-key lifecycle, as a pure function: from what a
//! replica observes (the cluster's committed key, the key it holds, its
//! leadership, its push schedule, the data key's use and the keys' ages)
//! to the one next action. [`super::manager`] observes, performs the action and observes
//! again; every rule of the lifecycle is here, and tested here.

use std::time::Duration;

/// A root key as the cluster committed it or as a replica holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersion {
    /// Which root key.
    pub root_key_id: u64,
    /// Its key check.
    pub key_check: [u8; 32],
    /// The keyring version wrapped under it.
    pub keyring_version: u64,
}

impl KeyVersion {
    fn same_root_key(&self, other: &KeyVersion) -> bool {
        self.root_key_id == other.root_key_id && self.key_check == other.key_check
    }
}

/// The cluster's root key, as this replica's applied state records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKey {
    /// A backup is being restored: no key may be used or made.
    Restoring,
    /// No root key was ever committed.
    Uninitialized,
    /// This key is committed.
    Committed(KeyVersion),
}

/// This replica's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not the leader (or a leader without a fresh quorum).
    Follower,
    /// The leader; not yet known to have applied everything committed
    /// before its term.
    Leader,
    /// The leader, confirmed to have applied everything committed before
    /// its term.
    SettledLeader,
    /// Raft has it leading, but the confirmation failed.
    UnsettledLeader,
}

/// When the last push of shares to the keepers was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastPush {
    /// The root key whose shares were pushed.
    pub root_key_id: u64,
    /// How long ago.
    pub elapsed: Duration,
}

/// Everything the lifecycle decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The cluster's key.
    pub cluster: ClusterKey,
    /// The key this replica holds, if any.
    pub held: Option<KeyVersion>,
    /// This replica's role.
    pub role: Role,
    /// The last push of shares by this replica.
    pub last_push: Option<LastPush>,
    /// Encryptions under the held key's active data key (0 without a key).
    pub active_key_encryptions: u64,
    /// How long the active data key has been active, by the log's record
    /// and this replica's clock (`None`: not recorded yet).
    pub data_key_age: Option<Duration>,
    /// How long the committed root key has been active (`None`: not
    /// recorded yet).
    pub root_key_age: Option<Duration>,
    /// When keys are replaced: the replicated settings, or this replica's
    /// flags until an operator set them.
    pub rotation: Rotation,
}

/// When keys are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Encryptions after which a data key is replaced.
    pub rotate_at: u64,
    /// Age after which a data key is replaced (`None`: never by age).
    pub data_key_max_age: Option<Duration>,
    /// Age after which the root key is replaced (`None`: never by age).
    pub root_key_max_age: Option<Duration>,
}

/// The fixed settings of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The leader re-pushes shares this often (keepers restart empty).
    pub push_interval: Duration,
}

/// Why a key is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The data key reached its encryption count.
    Operations,
    /// The key reached its maximum age.
    Age,
    /// An operator asked.
    Operator,
}

/// What the replica does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing, until something changes.
    Idle,
    /// Hold no key (the cluster has none, or a backup is going in).
    ClearKey,
    /// Find out whether this leader is settled before it acts on a cluster
    /// without a key: a leader that has not applied its predecessors'
    /// entries could mint a second first key.
    ConfirmLeadership,
    /// Clear the key, then generate the cluster's first root key.
    Initialize,
    /// The committed root key is in hand but the keyring changed: open the
    /// committed keyring with it.
    ReopenKeyring,
    /// Rebuild the committed root key from the keepers' shares.
    FetchFromKeepers,
    /// Push the committed key's shares to the keepers.
    PushShares,
    /// Add a data key: the active one reached its encryption limit or its
    /// age.
    RotateDataKey(Trigger),
    /// Replace the root key (same n and t): it reached its age.
    RekeyByAge,
}

fn reached(age: Option<Duration>, max_age: Option<Duration>) -> bool {
    matches!((age, max_age), (Some(age), Some(max_age)) if age >= max_age)
}

/// The next action for `observation` under `policy`.
pub fn decide(policy: &Policy, observation: &Observation) -> Action {
    let committed = match observation.cluster {
        ClusterKey::Restoring => return Action::ClearKey,
        ClusterKey::Uninitialized => {
            return match observation.role {
                Role::Follower | Role::UnsettledLeader => Action::ClearKey,
                Role::Leader => Action::ConfirmLeadership,
                Role::SettledLeader => Action::Initialize,
            };
        }
        ClusterKey::Committed(committed) => committed,
    };
    match observation.held {
        Some(held) if held == committed => {}
        Some(held) if held.same_root_key(&committed) => return Action::ReopenKeyring,
        _ => return Action::FetchFromKeepers,
    }
    match observation.role {
        Role::Follower | Role::UnsettledLeader => Action::Idle,
        Role::Leader | Role::SettledLeader => {
            let push_due = observation.last_push.is_none_or(|last| {
                last.root_key_id != committed.root_key_id || last.elapsed >= policy.push_interval
            });
            let rotation = &observation.rotation;
            // Shares first: a rekey needs keepers that answer, and a new
            // leader's first push tells it they do. The count before the
            // age: past it the nonce budget is at stake, not hygiene.
            if push_due {
                Action::PushShares
            } else if reached(observation.root_key_age, rotation.root_key_max_age) {
                Action::RekeyByAge
            } else if observation.active_key_encryptions >= rotation.rotate_at {
                Action::RotateDataKey(Trigger::Operations)
            } else if reached(observation.data_key_age, rotation.data_key_max_age) {
                Action::RotateDataKey(Trigger::Age)
            } else {
                Action::Idle
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        push_interval: Duration::from_secs(300),
    };
    const ROTATION: Rotation = Rotation {
        rotate_at: 1_000,
        data_key_max_age: Some(Duration::from_secs(60)),
        root_key_max_age: Some(Duration::from_secs(600)),
    };

    fn key(root_key_id: u64, keyring_version: u64) -> KeyVersion {
        KeyVersion {
            root_key_id,
            key_check: [u8::try_from(root_key_id).unwrap_or(0xff); 32],
            keyring_version,
        }
    }

    fn recent_push(root_key_id: u64) -> Option<LastPush> {
        Some(LastPush {
            root_key_id,
            elapsed: Duration::from_secs(1),
        })
    }

    /// A replica holding the committed key 1 (keyring 3), pushed recently.
    fn steady(role: Role) -> Observation {
        Observation {
            cluster: ClusterKey::Committed(key(1, 3)),
            held: Some(key(1, 3)),
            role,
            last_push: recent_push(1),
            active_key_encryptions: 0,
            data_key_age: Some(Duration::from_secs(1)),
            root_key_age: Some(Duration::from_secs(1)),
            rotation: ROTATION,
        }
    }

    fn uninitialized(role: Role) -> Observation {
        Observation {
            cluster: ClusterKey::Uninitialized,
            held: None,
            role,
            last_push: None,
            active_key_encryptions: 0,
            data_key_age: None,
            root_key_age: None,
            rotation: ROTATION,
        }
    }

    #[test]
    fn a_restore_in_progress_clears_the_key_whatever_else_holds() {
        for role in [
            Role::Follower,
            Role::Leader,
            Role::SettledLeader,
            Role::UnsettledLeader,
        ] {
            let observation = Observation {
                cluster: ClusterKey::Restoring,
                ..steady(role)
            };
            assert_eq!(decide(&POLICY, &observation), Action::ClearKey, "{role:?}");
        }
    }

    #[test]
    fn only_a_settled_leader_initializes_an_empty_cluster() {
        let table = [
            (Role::Follower, Action::ClearKey),
            (Role::Leader, Action::ConfirmLeadership),
            (Role::SettledLeader, Action::Initialize),
            (Role::UnsettledLeader, Action::ClearKey),
        ];
        for (role, expected) in table {
            assert_eq!(decide(&POLICY, &uninitialized(role)), expected, "{role:?}");
        }
    }

    #[test]
    fn a_replica_without_the_committed_key_fetches_it_from_the_keepers() {
        for role in [Role::Follower, Role::Leader] {
            let locked = Observation {
                held: None,
                ..steady(role)
            };
            assert_eq!(
                decide(&POLICY, &locked),
                Action::FetchFromKeepers,
                "{role:?}"
            );
            let rekeyed = Observation {
                held: Some(key(2, 3)),
                ..steady(role)
            };
            assert_eq!(
                decide(&POLICY, &rekeyed),
                Action::FetchFromKeepers,
                "{role:?}"
            );
        }
    }

    #[test]
    fn a_key_with_the_same_id_but_another_check_is_never_reused() {
        let mut other = key(1, 3);
        other.key_check = [0xaa; 32];
        let observation = Observation {
            held: Some(other),
            ..steady(Role::Follower)
        };
        assert_eq!(decide(&POLICY, &observation), Action::FetchFromKeepers);
    }

    #[test]
    fn the_held_root_key_with_an_older_keyring_reopens_the_committed_one() {
        for held_version in [2, 4] {
            let observation = Observation {
                held: Some(key(1, held_version)),
                ..steady(Role::Leader)
            };
            assert_eq!(decide(&POLICY, &observation), Action::ReopenKeyring);
        }
    }

    #[test]
    fn a_follower_holding_the_committed_key_is_idle() {
        let busy = Observation {
            last_push: None,
            active_key_encryptions: ROTATION.rotate_at,
            ..steady(Role::Follower)
        };
        assert_eq!(decide(&POLICY, &busy), Action::Idle);
    }

    #[test]
    fn the_leader_pushes_shares_first_then_at_every_interval_and_after_a_rekey() {
        let table = [
            (None, Action::PushShares),
            (recent_push(1), Action::Idle),
            (
                Some(LastPush {
                    root_key_id: 1,
                    elapsed: POLICY.push_interval,
                }),
                Action::PushShares,
            ),
            (recent_push(0), Action::PushShares),
        ];
        for (last_push, expected) in table {
            for role in [Role::Leader, Role::SettledLeader] {
                let observation = Observation {
                    last_push,
                    ..steady(role)
                };
                assert_eq!(
                    decide(&POLICY, &observation),
                    expected,
                    "{last_push:?} {role:?}"
                );
            }
        }
    }

    #[test]
    fn the_leader_rotates_the_data_key_at_the_threshold_once_shares_are_pushed() {
        let table = [
            (ROTATION.rotate_at - 1, recent_push(1), Action::Idle),
            (
                ROTATION.rotate_at,
                recent_push(1),
                Action::RotateDataKey(Trigger::Operations),
            ),
            (
                ROTATION.rotate_at + 5,
                recent_push(1),
                Action::RotateDataKey(Trigger::Operations),
            ),
            (ROTATION.rotate_at, None, Action::PushShares),
        ];
        for (encryptions, last_push, expected) in table {
            let observation = Observation {
                active_key_encryptions: encryptions,
                last_push,
                ..steady(Role::Leader)
            };
            assert_eq!(
                decide(&POLICY, &observation),
                expected,
                "{encryptions} {last_push:?}"
            );
        }
    }

    #[test]
    fn an_unsettled_leader_holding_the_key_does_no_leader_duties() {
        let observation = Observation {
            last_push: None,
            active_key_encryptions: ROTATION.rotate_at,
            ..steady(Role::UnsettledLeader)
        };
        assert_eq!(decide(&POLICY, &observation), Action::Idle);
    }

    #[test]
    fn the_leader_rotates_the_data_key_once_it_reaches_its_age() {
        let table = [
            (Some(Duration::from_secs(59)), Action::Idle),
            (
                Some(Duration::from_secs(60)),
                Action::RotateDataKey(Trigger::Age),
            ),
            (
                Some(Duration::from_secs(3_600)),
                Action::RotateDataKey(Trigger::Age),
            ),
            // Not recorded yet (a cluster before format 3): never by age.
            (None, Action::Idle),
        ];
        for (data_key_age, expected) in table {
            let observation = Observation {
                data_key_age,
                ..steady(Role::Leader)
            };
            assert_eq!(decide(&POLICY, &observation), expected, "{data_key_age:?}");
        }
        let off = Observation {
            data_key_age: Some(Duration::from_secs(3_600)),
            rotation: Rotation {
                data_key_max_age: None,
                ..ROTATION
            },
            ..steady(Role::Leader)
        };
        assert_eq!(decide(&POLICY, &off), Action::Idle);
    }

    #[test]
    fn the_count_goes_before_the_age_and_the_root_key_before_both() {
        let both = Observation {
            active_key_encryptions: ROTATION.rotate_at,
            data_key_age: Some(Duration::from_secs(3_600)),
            ..steady(Role::SettledLeader)
        };
        assert_eq!(
            decide(&POLICY, &both),
            Action::RotateDataKey(Trigger::Operations)
        );
        let all = Observation {
            root_key_age: ROTATION.root_key_max_age,
            ..both
        };
        assert_eq!(decide(&POLICY, &all), Action::RekeyByAge);
        let root_off = Observation {
            rotation: Rotation {
                root_key_max_age: None,
                ..ROTATION
            },
            root_key_age: Some(Duration::from_secs(1 << 30)),
            ..steady(Role::Leader)
        };
        assert_eq!(decide(&POLICY, &root_off), Action::Idle);
    }

    #[test]
    fn only_a_leader_that_pushed_shares_replaces_keys_by_age() {
        let old = |role, last_push| Observation {
            last_push,
            data_key_age: Some(Duration::from_secs(3_600)),
            root_key_age: Some(Duration::from_secs(3_600)),
            ..steady(role)
        };
        assert_eq!(
            decide(&POLICY, &old(Role::Follower, recent_push(1))),
            Action::Idle
        );
        assert_eq!(
            decide(&POLICY, &old(Role::UnsettledLeader, recent_push(1))),
            Action::Idle
        );
        assert_eq!(
            decide(&POLICY, &old(Role::Leader, None)),
            Action::PushShares
        );
        assert_eq!(
            decide(&POLICY, &old(Role::Leader, recent_push(1))),
            Action::RekeyByAge
        );
    }
}
