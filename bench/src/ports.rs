//! Where each cluster of a `compare` listens on loopback, from
//! `--base-port` up, so that no two of them ever share a port whatever the
//! replica count:
//!
//! ```text
//! BASE + 10(n-1) + 0..=2   our replica n (API, cluster, health), the
//!                          spare added by the memory trial included
//! BASE + 101..=105         our keepers
//! BASE + 200 + 2i + 0..=1  Vault node i (API, cluster)
//! BASE + 300 + 20k + 2i    etcd binary k's member i (client, peer + 1),
//!                          the member added by the memory trial included
//! ```

use anyhow::bail;

/// Replica counts a `compare` runs: a majority survives one failure with
/// 3, two with 5.
pub const REPLICA_COUNTS: [usize; 2] = [3, 5];

/// Ports between one of our replicas and the next (spike-dev-cluster's
/// plan: API, cluster and health port each).
const NEXUS_STRIDE: u16 = 10;
/// Our keepers listen on BASE + this + n (spike-dev-cluster's plan; the
/// benchmark runs its default of 5 keepers).
const KEEPERS_OFFSET: u16 = 100;
/// Keepers the benchmark's cluster runs (spike-dev-cluster's default).
const KEEPERS: u16 = 5;
/// Vault's first port, above our keepers'.
const VAULT_OFFSET: u16 = 200;
/// The first etcd's first port, above Vault's.
const ETCD_OFFSET: u16 = 300;
/// Ports between one etcd cluster and the next: 2 per member, up to 5
/// members and the one a memory trial adds, with room to spare.
const ETCD_STRIDE: u16 = 20;
/// Ports per etcd member or Vault node.
const PORTS_PER_MEMBER: u16 = 2;

/// The first port of each cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    base: u16,
    replicas: u16,
    etcds: u16,
}

impl Layout {
    /// The layout of `replicas` members each (3 or 5) and `etcds` etcd
    /// binaries from `base`; refuses a replica count other than 3 or 5,
    /// or a base too high for every port.
    pub fn new(base: u16, replicas: usize, etcds: usize) -> anyhow::Result<Self> {
        if !REPLICA_COUNTS.contains(&replicas) {
            bail!("--replicas is 3 or 5 (a majority survives one or two failures), not {replicas}");
        }
        let layout = Self {
            base,
            replicas: replicas as u16,
            etcds: u16::try_from(etcds.max(1))
                .ok()
                .filter(|count| *count <= 100)
                .ok_or_else(|| anyhow::anyhow!("at most 100 etcd binaries, not {etcds}"))?,
        };
        let highest = layout.highest();
        if highest > u32::from(u16::MAX) {
            bail!(
                "--base-port {base} leaves no room: {replicas} replicas and {etcds} etcd binaries need ports up to BASE+{}",
                highest - u32::from(base)
            );
        }
        Ok(layout)
    }

    /// Members of each cluster (3 or 5).
    pub fn replicas(&self) -> usize {
        usize::from(self.replicas)
    }

    /// `spike-dev-cluster up --base-port` of ours.
    pub fn nexus(&self) -> u16 {
        self.base
    }

    /// The first port of Vault's nodes.
    pub fn vault(&self) -> u16 {
        self.base + VAULT_OFFSET
    }

    /// The first port of etcd binary `index`'s members.
    pub fn etcd(&self, index: usize) -> u16 {
        self.base + ETCD_OFFSET + ETCD_STRIDE * index as u16
    }

    /// Every cluster's ports as (name, first, last), the members a memory
    /// trial adds included (wider than ports, so a base too high shows as
    /// a last port past 65535).
    pub fn ranges(&self) -> Vec<(String, u32, u32)> {
        let base = u32::from(self.base);
        let replicas = u32::from(self.replicas);
        let per_member = u32::from(PORTS_PER_MEMBER);
        // Our replicas and the spare; their last port is the spare's health.
        let mut ranges = vec![
            (
                "nexus replicas".to_owned(),
                base,
                base + u32::from(NEXUS_STRIDE) * replicas + 2,
            ),
            (
                "nexus keepers".to_owned(),
                base + u32::from(KEEPERS_OFFSET) + 1,
                base + u32::from(KEEPERS_OFFSET + KEEPERS),
            ),
            (
                "vault".to_owned(),
                base + u32::from(VAULT_OFFSET),
                base + u32::from(VAULT_OFFSET) + per_member * replicas - 1,
            ),
        ];
        for index in 0..u32::from(self.etcds) {
            let first = base + u32::from(ETCD_OFFSET) + u32::from(ETCD_STRIDE) * index;
            ranges.push((
                format!("etcd {}", index + 1),
                first,
                first + per_member * (replicas + 1) - 1,
            ));
        }
        ranges
    }

    /// The highest port any cluster takes.
    fn highest(&self) -> u32 {
        self.ranges()
            .iter()
            .map(|(_, _, last)| *last)
            .max()
            .unwrap_or(u32::from(self.base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_clusters_share_a_port() {
        for replicas in REPLICA_COUNTS {
            for etcds in [1, 2, 3] {
                let layout = Layout::new(27_000, replicas, etcds).expect("fits");
                let ranges = layout.ranges();
                for (index, (name, first, last)) in ranges.iter().enumerate() {
                    assert!(first <= last, "{name}");
                    for (other, other_first, other_last) in &ranges[index + 1..] {
                        assert!(
                            last < other_first || other_last < first,
                            "{name} {first}-{last} overlaps {other} {other_first}-{other_last} ({replicas} replicas)"
                        );
                    }
                    assert!(*last <= layout.highest(), "{name}");
                }
            }
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let layout = Layout::new(27_000, 5, 2).expect("fits");
        assert_eq!(layout.nexus(), 27_000);
        assert_eq!(layout.vault(), 27_200);
        assert_eq!(layout.etcd(0), 27_300);
        assert_eq!(layout.etcd(1), 27_320);
        assert_eq!(layout.replicas(), 5);
        // Five replicas and a spare: the spare's health port is BASE+52.
        assert_eq!(
            layout.ranges()[0],
            ("nexus replicas".to_owned(), 27_000, 27_052)
        );
    }

    #[test]
    fn other_counts_and_bases_too_high_are_refused() {
        for replicas in [0, 1, 2, 4, 6, 7] {
            let refused = Layout::new(27_000, replicas, 1).expect_err("refused");
            assert!(refused.to_string().contains("3 or 5"), "{refused}");
        }
        assert!(Layout::new(65_300, 3, 1).is_err());
        assert!(Layout::new(65_224, 5, 1).is_ok(), "65224 + 311 fits");
        assert!(Layout::new(65_225, 5, 1).is_err(), "65225 + 311 does not");
    }
}
