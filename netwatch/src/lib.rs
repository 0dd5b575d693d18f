//! netwatch: finds upstream firewall drops passively.
//!
//! The kernel side (`netwatch-ebpf`) tags requests and matches answers; this crate loads it
//! ([`probe`]), finds unanswered requests ([`sweep`]), turns counters into outcomes and
//! verdicts ([`tracker`], [`verdict`]) and renders them ([`report`]). [`app`] ties it
//! together; `main.rs` only parses the command line and maps errors to exit codes.

pub mod app;
pub mod attribution;
pub mod batch;
pub mod btf;
pub mod cli;
pub mod clock;
pub mod clsact;
pub mod diagnosis;
pub mod dns;
pub mod drops;
mod features;
pub mod firewall;
pub mod interfaces;
pub mod lock;
pub mod output;
pub mod privileges;
pub mod probe;
pub mod report;
pub mod serve;
pub mod services;
pub mod snapshot;
pub mod sock_diag;
pub mod stalls;
pub mod sweep;
pub mod target;
pub mod timeline;
pub mod tracker;
pub mod verdict;
