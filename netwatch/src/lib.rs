//! netwatch: finds upstream firewall drops passively.
#![warn(unreachable_pub)]
//!
//! The kernel side (`netwatch-ebpf`) tags requests and matches answers; this crate loads it
//! ([`probe`]), finds unanswered requests ([`sweep`]), turns counters into outcomes and
//! verdicts ([`tracker`], [`verdict`]) and renders them ([`report`]). [`app`] ties it
//! together; `main.rs` only parses the command line and maps errors to exit codes.

pub mod app;
pub mod attribution;
mod batch;
pub mod btf;
pub mod cli;
mod clock;
mod clsact;
mod diagnosis;
mod dns;
mod drops;
mod features;
mod firewall;
pub mod interfaces;
mod lock;
mod output;
mod privileges;
pub mod probe;
pub mod report;
mod serve;
mod services;
pub mod snapshot;
mod sock_diag;
mod stalls;
pub mod sweep;
pub mod target;
mod timeline;
pub mod tracker;
pub mod verdict;
