//! Reading what the code under test records through the `metrics` facade.

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// Metric values at one instant; taking a snapshot resets the recorder's values.
pub type Snapshot = Vec<(CompositeKey, DebugValue)>;

pub fn value<'s>(
    snapshot: &'s Snapshot,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'s DebugValue> {
    snapshot
        .iter()
        .find(|(key, _)| {
            let key = key.key();
            key.name() == name
                && labels.iter().all(|(label, wanted)| {
                    key.labels()
                        .any(|l| l.key() == *label && l.value() == *wanted)
                })
        })
        .map(|(_, value)| value)
}

pub fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snapshot, name, labels) {
        Some(DebugValue::Counter(count)) => *count,
        None => 0,
        Some(other) => panic!("{name} is not a counter: {other:?}"),
    }
}

pub fn gauge(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match value(snapshot, name, labels) {
        Some(DebugValue::Gauge(gauge)) => Some(gauge.into_inner()),
        _ => None,
    }
}

/// Installs a recorder for the whole process (so one test per binary) and
/// returns a function that takes a snapshot of it.
pub fn install() -> impl Fn() -> Snapshot {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("install the recorder");
    move || {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| (key, value))
            .collect()
    }
}
