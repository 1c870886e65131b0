//! Peer links. (Being written.)
