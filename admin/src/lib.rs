//! nrdot-admin: the control plane. It owns the process: it reads and validates configuration,
//! compiles and publishes routing tables (the single writer of the table cell), serves the admin
//! API on 8080 (`/health`, `/metrics`), handles signals (SIGHUP reload, SIGTERM drain), runs the
//! built-in demo, and holds the `nrdot` command line.
//!
//! `file -> Control::reload -> Config -> RouteTable::compile -> Publisher::publish`
#![warn(missing_docs)]

pub mod audit;
pub mod auth;
pub mod cli;
pub mod control;
pub mod demo;
pub mod durable;
pub mod http;
pub mod run;
pub mod store;
