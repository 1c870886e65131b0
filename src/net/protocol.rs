//! Client protocol framing. (Being written.)
