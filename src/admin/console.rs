//! Console login and command loop (being written).
