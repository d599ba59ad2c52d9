//! End-to-end tests: the real `nrdot` binary, real origin servers, loopback sockets on free ports.
mod backup;
mod bad_input;
mod cli;
mod cluster;
mod config_cli;
mod conformance_relay;
mod conformance_rules;
mod conformance_targets;
mod control;
mod dashboard;
mod dist;
mod intermediary;
mod lifecycle;
mod native;
mod resilience;
mod rollout;
mod routing;
mod session;
mod swap;
mod tls;
mod upgrade;

/// Path of the binary under test, built by Cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_nrdot");
