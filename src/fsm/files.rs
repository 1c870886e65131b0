//! Slab arena + name index: the file map. (Being written.)
