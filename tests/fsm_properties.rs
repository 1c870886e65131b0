//! Property tests of the state machine: the batch codec round-trips and never
//! panics on garbage; apply agrees with a plain reference model of SPEC §2 on
//! random histories (with expiry and cluster time moving); replicas and
//! snapshot restores converge.

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use raftfs::fsm::{
    batch_stamp_ms, decode_batch, decode_batch_ref, encode_batch, Batch, Command, FileView, Fsm,
    Outcome,
};
use raftfs::limits::NAME_BYTES_MAX;

fn any_name() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 1..=NAME_BYTES_MAX).prop_map(Bytes::from)
}

fn any_content() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn any_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any_name(), any_content(), any::<u64>()).prop_map(|(name, content, exptime_s)| {
            Command::Write {
                name,
                content,
                exptime_s,
            }
        }),
        (any_name(), any::<u64>(), any_content(), any::<u64>()).prop_map(
            |(name, version, content, exptime_s)| Command::Cas {
                name,
                version,
                content,
                exptime_s
            }
        ),
        any_name().prop_map(|name| Command::Delete { name }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_codec_round_trips(stamp_ms in any::<u64>(), commands in proptest::collection::vec(any_command(), 0..12)) {
        let data = encode_batch(stamp_ms, &commands);
        prop_assert_eq!(batch_stamp_ms(&data), Some(stamp_ms));
        prop_assert_eq!(decode_batch(&data), Ok(Batch { stamp_ms, commands }));
    }

    #[test]
    fn decoding_random_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let data = Bytes::from(data);
        prop_assert_eq!(decode_batch(&data).err(), decode_batch_ref(&data).err());
        let _ = batch_stamp_ms(&data);
        let _ = Fsm::from_snapshot(&data);
        let mut fsm = Fsm::new();
        let mut outcomes = Vec::new();
        if fsm.apply(&data, &mut outcomes).is_err() {
            prop_assert!(outcomes.is_empty());
            prop_assert!(fsm.is_empty());
        }
    }

    #[test]
    fn decoding_a_damaged_batch_never_panics(
        commands in proptest::collection::vec(any_command(), 1..6),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut data = encode_batch(77, &commands).to_vec();
        for (at, byte) in damage {
            let at = at.index(data.len());
            data[at] = byte;
        }
        let len = cut.index(data.len() + 1);
        let data = Bytes::from(data).slice(..len);
        if let Ok(batch) = decode_batch(&data) {
            // Whatever decodes re-encodes to the same bytes: no two readings.
            prop_assert_eq!(encode_batch(batch.stamp_ms, &batch.commands), data);
        }
    }
}

/// SPEC §2 written as plainly as possible: expiry judged lazily on each access.
#[derive(Default)]
struct Model {
    files: HashMap<Bytes, (Bytes, u64, Option<u64>)>,
    version_counter: u64,
    cluster_time_ms: u64,
}

impl Model {
    fn live(&self, name: &Bytes) -> Option<&(Bytes, u64, Option<u64>)> {
        self.files
            .get(name)
            .filter(|(_, _, deadline)| deadline.is_none_or(|d| self.cluster_time_ms < d))
    }

    fn deadline(&self, exptime_s: u64) -> Option<u64> {
        (exptime_s != 0).then(|| {
            self.cluster_time_ms
                .saturating_add(exptime_s.saturating_mul(1_000))
        })
    }

    fn apply(&mut self, stamp_ms: u64, commands: &[Command]) -> Vec<Outcome> {
        self.cluster_time_ms = self.cluster_time_ms.max(stamp_ms);
        commands
            .iter()
            .map(|command| match command {
                Command::Write {
                    name,
                    content,
                    exptime_s,
                } => {
                    self.version_counter += 1;
                    let entry = (
                        content.clone(),
                        self.version_counter,
                        self.deadline(*exptime_s),
                    );
                    self.files.insert(name.clone(), entry);
                    Outcome::Written {
                        version: self.version_counter,
                    }
                }
                Command::Cas {
                    name,
                    version,
                    content,
                    exptime_s,
                } => match self.live(name) {
                    None => Outcome::NotFound,
                    Some(&(_, current, _)) if current != *version => {
                        Outcome::VersionMismatch { current }
                    }
                    Some(_) => {
                        self.version_counter += 1;
                        let entry = (
                            content.clone(),
                            self.version_counter,
                            self.deadline(*exptime_s),
                        );
                        self.files.insert(name.clone(), entry);
                        Outcome::Written {
                            version: self.version_counter,
                        }
                    }
                },
                Command::Delete { name } => match self.live(name) {
                    None => Outcome::NotFound,
                    Some(_) => {
                        self.files.remove(name);
                        Outcome::Deleted
                    }
                },
            })
            .collect()
    }

    fn read(&self, name: &Bytes, now_ms: u64) -> Option<FileView<'_>> {
        let (content, version, deadline) = self.files.get(name)?;
        match deadline {
            Some(deadline) if now_ms >= *deadline => None,
            Some(deadline) => Some(FileView {
                version: *version,
                content,
                expires_in_s: (deadline - now_ms).div_ceil(1_000),
                deadline_ms: Some(*deadline),
            }),
            None => Some(FileView {
                version: *version,
                content,
                expires_in_s: 0,
                deadline_ms: None,
            }),
        }
    }
}

const NAMES: [&str; 5] = ["a", "b", "c", "d", "名"];

fn small_name() -> impl Strategy<Value = Bytes> {
    (0..NAMES.len()).prop_map(|index| Bytes::from_static(NAMES[index].as_bytes()))
}

fn small_command() -> impl Strategy<Value = Command> {
    let content = (0u8..4).prop_map(|byte| Bytes::from(vec![b'0' + byte; byte as usize]));
    let exptime_s = prop_oneof![Just(0u64), 1u64..4, Just(u64::MAX)];
    prop_oneof![
        (small_name(), content.clone(), exptime_s.clone()).prop_map(
            |(name, content, exptime_s)| Command::Write {
                name,
                content,
                exptime_s
            }
        ),
        (small_name(), 0u64..12, content, exptime_s).prop_map(
            |(name, version, content, exptime_s)| {
                Command::Cas {
                    name,
                    version,
                    content,
                    exptime_s,
                }
            }
        ),
        small_name().prop_map(|name| Command::Delete { name }),
    ]
}

/// A history: batches with the cluster-time step (ms) taken before each; an
/// empty command list stands for the Raft no-op entry.
fn history() -> impl Strategy<Value = Vec<(u64, Vec<Command>)>> {
    proptest::collection::vec(
        (
            0u64..2_500,
            proptest::collection::vec(small_command(), 0..5),
        ),
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn apply_agrees_with_the_reference_model(history in history(), restore_at in any::<prop::sample::Index>()) {
        let mut fsm = Fsm::new();
        let mut model = Model::default();
        let mut stamp_ms = 1_000u64;
        let restore_at = restore_at.index(history.len());
        for (position, (step_ms, commands)) in history.iter().enumerate() {
            stamp_ms += step_ms;
            let data = if commands.is_empty() { Bytes::new() } else { encode_batch(stamp_ms, commands) };
            let mut outcomes = Vec::new();
            fsm.apply(&data, &mut outcomes).expect("valid batch");
            let expected = if commands.is_empty() { Vec::new() } else { model.apply(stamp_ms, commands) };
            prop_assert_eq!(outcomes, expected);
            fsm.check_invariants();
            prop_assert_eq!(fsm.version_counter(), model.version_counter);
            prop_assert_eq!(fsm.cluster_time_ms(), model.cluster_time_ms);
            for name in NAMES {
                let name = Bytes::from_static(name.as_bytes());
                for read_ms in [model.cluster_time_ms, model.cluster_time_ms + 999, model.cluster_time_ms + 2_000] {
                    prop_assert_eq!(fsm.read(&name, read_ms), model.read(&name, read_ms));
                }
            }
            if position == restore_at {
                let restored = Fsm::from_snapshot(&fsm.snapshot()).expect("own snapshot");
                restored.check_invariants();
                prop_assert_eq!(restored.checksum(stamp_ms), fsm.checksum(stamp_ms));
                fsm = restored;
            }
        }
    }

    #[test]
    fn replicas_converge_whatever_their_hash_keys(history in history()) {
        let mut replicas = [Fsm::new(), Fsm::new(), Fsm::new()];
        let mut stamp_ms = 0u64;
        let mut outcomes = [Vec::new(), Vec::new(), Vec::new()];
        for (step_ms, commands) in &history {
            stamp_ms += step_ms;
            let data = encode_batch(stamp_ms, commands);
            for (replica, outcomes) in replicas.iter_mut().zip(outcomes.iter_mut()) {
                replica.apply(&data, outcomes).expect("valid batch");
            }
        }
        prop_assert_eq!(&outcomes[0], &outcomes[1]);
        prop_assert_eq!(&outcomes[0], &outcomes[2]);
        let checksum = replicas[0].checksum(stamp_ms);
        prop_assert!(replicas.iter().all(|replica| replica.checksum(stamp_ms) == checksum));
    }
}
