//! The real eBPF programs, loaded into the kernel, on crafted packets (`BPF_PROG_TEST_RUN`).
//!
//! Every test loads its own [`Probe`] so the maps start empty, runs the classifiers on frames
//! from [`netwatch_tests::packets`], and checks the kernel's tables after each run: the
//! pending requests, the per-target counters and the kernel counters ([`Change`]). Every run
//! must return -1 (`TC_ACT_UNSPEC`): the programs only observe.
//!
//! The harness is `netwatch_tests::harness`; the cases are in the modules below, one per
//! thing the programs must get right.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::programs::ProgramError;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use netwatch::probe::KernelTables as _;
use netwatch_common::{
    EGRESS_PROGRAM, INGRESS_PROGRAM, KernelCounter,
    KernelCounter::{InvalidAnswer, UnmatchedAnswer, UnmatchedRejection},
    LATENCY_BUCKETS, PENDING_FLAG_LATE, PENDING_FLAG_REJECTED, Reason, RequestKey, TargetKey,
    latency_bucket, latency_bucket_upper_ns,
};
use netwatch_tests::packets::{
    self, ETHERNET_LEN, Ext, Flow, ICMP_LEN, Kind, Shape, TcpFlags, Transport, family,
};

use netwatch_tests::harness::*;

mod answers;
mod fast_open;
mod frames;
mod header_variants;
mod icmp_quotes;
mod inbound;
mod late;
mod no_link_header;
mod not_unicast;
mod path_mtu;
mod query_or_response;
mod rejections;
mod requests;
mod reuse;
mod socket_owners;
mod spoofs;
mod truncations;
mod udp_services;
mod userspace_races;
