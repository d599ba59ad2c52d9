//! nrdot-admin: the control plane. It owns the process: it decides which configuration version
//! to serve, compiles and publishes routing tables (the single writer of the table cell), keeps
//! the version store, credentials, audit log and runtime state in the state directory, serves
//! the admin API on 8080, handles signals (SIGHUP reload, SIGTERM drain), runs the built-in
//! demo, and holds the `nrdot` command line (including the client verbs).
//!
//! `file -> Control::reload -> Config -> RouteTable::compile -> Publisher::publish`
#![warn(missing_docs)]
// The OpenAPI document is one large `json!` literal.
#![recursion_limit = "512"]

pub mod api;
pub mod app;
pub mod archives;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod backup_cmd;
pub mod binaries;
pub mod certs;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod cluster_init;
pub mod control;
pub mod dashboard;
pub mod demo;
pub mod doctor;
pub mod durable;
pub mod handoff;
pub mod health;
pub mod http;
pub mod lock;
pub mod logging;
pub mod offline;
pub mod openapi;
pub mod respond;
pub mod rollout;
pub mod run;
pub mod s3;
pub mod scrape;
pub mod session;
pub mod store;
pub mod supervise;
pub mod upgrade;
