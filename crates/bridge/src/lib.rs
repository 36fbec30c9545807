//! Placeholder while the bridge is written.
