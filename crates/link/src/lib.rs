//! Placeholder: the link crate is being written.
