//! Linearizability checker. (Being written.)
