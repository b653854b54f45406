//! Control commands (being written).
