//! Durable storage of the Raft log and hard state. (Being written.)

pub mod wal;
