//! netwatch: finds upstream firewall drops passively.
//!
//! The kernel side (`netwatch-ebpf`) tags requests and matches answers; this crate loads it,
//! judges what it counted and says so. Three layers:
//!
//! - **The kernel shell** ([`kernel`], its own folder): loading and attaching the programs,
//!   reading and writing their maps, asking the kernel what it has. Talks to BPF, judges
//!   nothing.
//! - **The pure core**: plain functions over plain data, tested without a kernel. Unanswered
//!   requests found in the pending table ([`sweep`]), counters turned into outcomes and
//!   verdicts ([`tracker`], [`verdict`], `timeline`), stalls after the handshake (`stalls`),
//!   findings in plain language (`diagnosis`), processes joined to targets ([`attribution`];
//!   not its `host` module), targets and services named (`target`, `dns`, `services`), and
//!   the renderers ([`snapshot`], [`report`]: JSON, table, live view, metrics).
//! - **The edges**: the run loop that ties it together ([`app`]), the command line ([`cli`]),
//!   output and the metrics server (`output`, `serve`), the host itself: interfaces
//!   ([`interfaces`]), this host's firewall over netlink (`firewall`), `/proc` and the cgroup
//!   tree (`attribution::host`), locks, privileges and the clock (`lock`, `privileges`,
//!   `clock`).
//!
//! `main.rs` only parses the command line and maps errors to exit codes. Only what it, the
//! privileged tests and the benchmarks use is public (`unreachable_pub` keeps it so, and
//! dead code visible).
#![warn(unreachable_pub)]

pub mod kernel;
use kernel::{batch, clsact, features, sock_diag};
pub use kernel::{btf, probe};

// The pure core.
pub mod attribution;
mod diagnosis;
mod dns;
pub mod drops;
pub mod report;
mod services;
pub mod snapshot;
mod stalls;
pub mod sweep;
pub mod target;
mod timeline;
pub mod tracker;
pub mod verdict;

// The edges.
pub mod app;
pub mod cli;
mod clock;
pub mod exit;
mod firewall;
pub mod interfaces;
mod lock;
mod output;
mod privileges;
mod serve;
