//! The programs beside the classifiers: the drop and retransmission programs on their raw
//! tracepoints, the socket owner programs on the cgroup2 root. Each is optional: `Err` says,
//! for the operator, what netwatch cannot see and why.

use aya::{
    Ebpf,
    maps::{Array, HashMap},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, RawTracePoint},
};
use netwatch_common::{
    CONNECT4_PROGRAM, CONNECT6_PROGRAM, SENDMSG4_PROGRAM, SENDMSG6_PROGRAM, SOCK_CREATE_PROGRAM,
    SOCK_RELEASE_PROGRAM, SOCKET_OWNERS_MAP,
};
use netwatch_common::{
    DROP_PROGRAM, DROP_TRACEPOINT, LOCAL_DROPS_MAP, RETRANSMIT_PROGRAM, RETRANSMIT_TRACEPOINT,
    RETRANSMITS_MAP,
};

use crate::drops::DropReasons;

use super::{
    LocalDrops, Probe, Retransmitting,
    errors::{first_line, refusal},
};

impl Probe {
    /// Attaches the local drop program to `skb:kfree_skb`. `Err` says, for the operator, what
    /// netwatch cannot see and why; everything else works without it.
    pub fn attach_drops(&mut self) -> Result<(), String> {
        let drops = self.local_drops.as_mut().map_err(|why| why.clone())?;
        if drops.attached {
            return Ok(());
        }
        match attach_tracepoint(&mut self.ebpf, DROP_PROGRAM, DROP_TRACEPOINT) {
            Ok(()) => {
                drops.attached = true;
                Ok(())
            }
            Err(AttachFailure::Object(why)) => Err(why),
            Err(AttachFailure::Refused(err)) => {
                let why = format!(
                    "could not attach to the {DROP_TRACEPOINT} tracepoint ({err}); it needs \
                     CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) and a kernel with drop \
                     reasons (5.17+)"
                );
                self.local_drops = Err(why.clone());
                Err(why)
            }
        }
    }

    /// Attaches the retransmission program to `tcp:tcp_retransmit_skb`. `Err` says, for the
    /// operator, what netwatch cannot see and why; everything else works without it.
    pub fn attach_retransmits(&mut self) -> Result<(), String> {
        let retransmits = self.retransmits.as_mut().map_err(|why| why.clone())?;
        if retransmits.attached {
            return Ok(());
        }
        match attach_tracepoint(&mut self.ebpf, RETRANSMIT_PROGRAM, RETRANSMIT_TRACEPOINT) {
            Ok(()) => {
                retransmits.attached = true;
                Ok(())
            }
            Err(AttachFailure::Object(why)) => Err(why),
            Err(AttachFailure::Refused(err)) => {
                let why = format!(
                    "could not attach to the {RETRANSMIT_TRACEPOINT} tracepoint ({err}); it \
                     needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"
                );
                self.retransmits = Err(why.clone());
                Err(why)
            }
        }
    }

    /// Loads the socket owner programs and attaches them to the cgroup2 root at `cgroup2`
    /// (alongside any others there: `AllowMultiple`). They are links held by this process: the
    /// kernel detaches them when it exits. `Err` says, for the operator, why processes
    /// cannot be named; everything else works without them.
    pub fn attach_owners(&mut self, cgroup2: Option<&std::path::Path>) -> Result<(), String> {
        let result = self.try_attach_owners(cgroup2);
        if let Err(why) = &result {
            self.owners = Err(why.clone());
        }
        result
    }

    fn try_attach_owners(&mut self, cgroup2: Option<&std::path::Path>) -> Result<(), String> {
        if self.owners.is_ok() {
            return Ok(());
        }
        let root = cgroup2.ok_or_else(|| {
            "no cgroup2 mount in /proc/mounts (`ip netns exec` hides it: mount it there with \
             `mount -t cgroup2 none /sys/fs/cgroup`)"
                .to_owned()
        })?;
        let cgroup = std::fs::File::open(root)
            .map_err(|err| format!("cannot open the cgroup2 root {}: {err}", root.display()))?;
        let refused = |name: &str, err: &aya::programs::ProgramError| {
            log::debug!("{name}: {err:?}");
            format!(
                "the kernel refused the socket owner program {name} ({}); it needs cgroup \
                 socket programs (CONFIG_CGROUP_BPF, Linux 5.9+) and CAP_BPF with \
                 CAP_NET_ADMIN (or CAP_SYS_ADMIN)",
                first_line(err)
            )
        };
        // The socket and the socket-address programs are different aya types, with the
        // same three steps.
        macro_rules! load_and_attach {
            ($probe:expr, $kind:ty, $names:expr) => {
                for name in $names {
                    let program: &mut $kind = $probe
                        .ebpf
                        .program_mut(name)
                        .ok_or_else(|| format!("program {name} missing from the object"))?
                        .try_into()
                        .map_err(|err| refused(name, &err))?;
                    program.load().map_err(|err| refused(name, &err))?;
                    program
                        .attach(&cgroup, CgroupAttachMode::Single)
                        .map_err(|err| refused(name, &err))?;
                }
            };
        }
        load_and_attach!(
            self,
            CgroupSock,
            [SOCK_CREATE_PROGRAM, SOCK_RELEASE_PROGRAM]
        );
        load_and_attach!(
            self,
            CgroupSockAddr,
            [
                CONNECT4_PROGRAM,
                CONNECT6_PROGRAM,
                SENDMSG4_PROGRAM,
                SENDMSG6_PROGRAM
            ]
        );
        let map = self
            .ebpf
            .take_map(SOCKET_OWNERS_MAP)
            .ok_or_else(|| format!("map {SOCKET_OWNERS_MAP} missing from the object"))?;
        self.owners = Ok(Array::try_from(map).map_err(|err| err.to_string())?);
        Ok(())
    }
}

/// Loads the drop program and takes its maps; `Err` says why it cannot run here.
pub(super) fn load_drops(ebpf: &mut Ebpf, reasons: DropReasons) -> Result<LocalDrops, String> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(DROP_PROGRAM)
        .ok_or_else(|| format!("program {DROP_PROGRAM} missing from the object"))?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| first_line(&err))?;
    program.load().map_err(|err| {
        log::debug!("{DROP_PROGRAM} failed to load: {err:?}");
        format!(
            "the kernel refused the drop program ({}); it needs raw tracepoint support \
             (CONFIG_BPF_EVENTS)",
            refusal(&err)
        )
    })?;
    let take = |ebpf: &mut Ebpf, name: &'static str| {
        ebpf.take_map(name)
            .ok_or_else(|| format!("map {name} missing from the object"))
    };
    let drops = HashMap::try_from(take(ebpf, LOCAL_DROPS_MAP)?).map_err(|err| err.to_string())?;
    Ok(LocalDrops {
        drops,
        reasons,
        attached: false,
    })
}

/// Loads the retransmission program and takes its map; `Err` says why it cannot run here.
pub(super) fn load_retransmits(ebpf: &mut Ebpf) -> Result<Retransmitting, String> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(RETRANSMIT_PROGRAM)
        .ok_or_else(|| format!("program {RETRANSMIT_PROGRAM} missing from the object"))?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| first_line(&err))?;
    program.load().map_err(|err| {
        log::debug!("{RETRANSMIT_PROGRAM} failed to load: {err:?}");
        format!(
            "the kernel refused the retransmission program ({}); it needs raw tracepoint \
             support (CONFIG_BPF_EVENTS)",
            refusal(&err)
        )
    })?;
    let map = ebpf
        .take_map(RETRANSMITS_MAP)
        .ok_or_else(|| format!("map {RETRANSMITS_MAP} missing from the object"))?;
    Ok(Retransmitting {
        connections: HashMap::try_from(map).map_err(|err| err.to_string())?,
        attached: false,
    })
}

/// Why a raw tracepoint program did not attach.
enum AttachFailure {
    /// The object is not the one netwatch was built with (the program missing, or of another
    /// kind): nothing the kernel said.
    Object(String),
    /// The kernel refused the attachment: the first line of its error.
    Refused(String),
}

/// Attaches the raw tracepoint program `name` (loaded with the object) to `tracepoint`. The
/// link stays with the program, detached when netwatch exits.
fn attach_tracepoint(ebpf: &mut Ebpf, name: &str, tracepoint: &str) -> Result<(), AttachFailure> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| AttachFailure::Object(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| AttachFailure::Object(first_line(&err)))?;
    program
        .attach(tracepoint)
        .map(|_link| ())
        .map_err(|err| AttachFailure::Refused(first_line(&err)))
}
