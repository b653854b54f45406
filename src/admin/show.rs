//! SHOW commands (being written).
