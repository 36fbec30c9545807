//! Custos cloud server (patent FIG. 1): the REST API on the Internet side.
#![forbid(unsafe_code)]
