//! Custos external relay (patent FIG. 1).
#![forbid(unsafe_code)]
