//! The PKI's integration tests, one binary (each module was a test binary of its own).

mod chains;
mod dealer;
