//! The kernel shell: everything that talks to the kernel's BPF side. Loading the programs and
//! attaching them ([`probe`]), reading and writing their maps (`probe::tables`, in batches
//! where the kernel has them: [`batch`]), asking what the kernel can do ([`features`]) and
//! where its structures keep what the tracepoint programs read ([`btf`]), and the netlink it
//! needs on the way ([`clsact`]: tc qdiscs and filters; [`sock_diag`]: sockets). Nothing here
//! judges anything: the pure core takes what these read.

pub(crate) mod batch;
pub mod btf;
pub(crate) mod clsact;
pub(crate) mod features;
pub mod probe;
pub(crate) mod sock_diag;
