//! The key lifecycle's metrics: rotations and rekeys by trigger, the keys'
//! ages, and the progress of background re-encryption. Every replica
//! reports the ages it observes; only the leader counts replacements and
//! re-seals.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::lifecycle::Trigger;

/// Why a key was replaced, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerLabel {
    /// The data key reached its encryption count.
    Ops,
    /// The key reached its maximum age.
    Age,
    /// An operator asked.
    Operator,
}

impl EncodeLabelValue for TriggerLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Ops => "ops",
            Self::Age => "age",
            Self::Operator => "operator",
        })
    }
}

impl From<Trigger> for TriggerLabel {
    fn from(trigger: Trigger) -> Self {
        match trigger {
            Trigger::Operations => Self::Ops,
            Trigger::Age => Self::Age,
            Trigger::Operator => Self::Operator,
        }
    }
}

/// The `trigger` label set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TriggerLabels {
    /// Why.
    pub trigger: TriggerLabel,
}

/// The key lifecycle's metrics.
#[derive(Debug, Clone, Default)]
pub struct KeyMetrics {
    data_key_rotations: Family<TriggerLabels, Counter>,
    root_key_rekeys: Family<TriggerLabels, Counter>,
    data_key_age_seconds: Gauge,
    root_key_age_seconds: Gauge,
    reencrypted_versions: Counter,
    versions_under_old_keys: Gauge,
}

impl KeyMetrics {
    /// Adds these metrics to `registry`, every trigger at 0, so an alert on
    /// an increase has a series before the first replacement.
    pub fn register_metrics(&self, registry: &mut Registry) {
        for trigger in [TriggerLabel::Ops, TriggerLabel::Age, TriggerLabel::Operator] {
            drop(
                self.data_key_rotations
                    .get_or_create(&TriggerLabels { trigger }),
            );
        }
        for trigger in [TriggerLabel::Age, TriggerLabel::Operator] {
            drop(
                self.root_key_rekeys
                    .get_or_create(&TriggerLabels { trigger }),
            );
        }
        registry.register(
            "data_key_rotations",
            "Data keys this replica rotated as leader, by trigger (ops, age, operator)",
            self.data_key_rotations.clone(),
        );
        registry.register(
            "root_key_rekeys",
            "Root keys this replica replaced as leader, by trigger (age, operator)",
            self.root_key_rekeys.clone(),
        );
        registry.register(
            "data_key_age_seconds",
            "Seconds since the active data key became active (0: not recorded yet)",
            self.data_key_age_seconds.clone(),
        );
        registry.register(
            "root_key_age_seconds",
            "Seconds since the root key became active (0: not recorded yet)",
            self.root_key_age_seconds.clone(),
        );
        registry.register(
            "reencrypted_versions",
            "Secret versions this replica re-sealed under the newest data key as leader",
            self.reencrypted_versions.clone(),
        );
        registry.register(
            "secret_versions_under_old_keys",
            "Kept secret versions sealed under a data key older than the active one, \
             as of the leader's last re-encryption sweep",
            self.versions_under_old_keys.clone(),
        );
    }

    pub(crate) fn rotated(&self, trigger: Trigger) {
        self.data_key_rotations
            .get_or_create(&TriggerLabels {
                trigger: trigger.into(),
            })
            .inc();
    }

    pub(crate) fn rekeyed(&self, trigger: Trigger) {
        self.root_key_rekeys
            .get_or_create(&TriggerLabels {
                trigger: trigger.into(),
            })
            .inc();
    }

    pub(crate) fn set_ages(
        &self,
        data_key: Option<std::time::Duration>,
        root_key: Option<std::time::Duration>,
    ) {
        let seconds = |age: Option<std::time::Duration>| {
            age.map_or(0, |age| i64::try_from(age.as_secs()).unwrap_or(i64::MAX))
        };
        self.data_key_age_seconds.set(seconds(data_key));
        self.root_key_age_seconds.set(seconds(root_key));
    }

    pub(crate) fn resealed(&self) {
        self.reencrypted_versions.inc();
    }

    pub(crate) fn set_versions_under_old_keys(&self, count: u64) {
        self.versions_under_old_keys
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Secret versions this replica re-sealed as leader.
    pub fn reencrypted_versions(&self) -> u64 {
        self.reencrypted_versions.get()
    }

    /// Secret versions under older keys as last counted.
    pub fn versions_under_old_keys(&self) -> u64 {
        u64::try_from(self.versions_under_old_keys.get()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_encode_with_their_names_and_triggers() {
        let metrics = KeyMetrics::default();
        metrics.rotated(Trigger::Age);
        metrics.rotated(Trigger::Age);
        metrics.rotated(Trigger::Operations);
        metrics.rekeyed(Trigger::Operator);
        metrics.resealed();
        metrics.set_versions_under_old_keys(7);
        metrics.set_ages(Some(std::time::Duration::from_secs(90)), None);
        let mut registry = Registry::with_prefix("spike");
        metrics.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "spike_data_key_rotations_total{trigger=\"age\"} 2",
            "spike_data_key_rotations_total{trigger=\"ops\"} 1",
            "spike_root_key_rekeys_total{trigger=\"operator\"} 1",
            "spike_reencrypted_versions_total 1",
            "spike_secret_versions_under_old_keys 7",
            "spike_data_key_age_seconds 90",
            "spike_root_key_age_seconds 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(metrics.versions_under_old_keys(), 7);
    }
}
