//! Deterministic simulator. (Being written.)
