//! The classifiers on the watched interfaces: tcx links or clsact filters, orphans a killed
//! netwatch left removed, detached again.

use aya::programs::{
    LinkOrder, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
};
use netwatch_common::{EGRESS_PROGRAM, INGRESS_PROGRAM, L3_EGRESS_PROGRAM, L3_INGRESS_PROGRAM};

use crate::{
    cli::AttachMode,
    interfaces::{Interface, LinkKind},
};

use super::{
    Probe, ProbeError, classifier,
    errors::{TCX_KERNEL, first_line, no_tc_hook, running_kernel},
};

/// Which classifier pairs are loaded: the one for Ethernet (and loopback) devices, the one
/// for devices without a link-layer header, or both. Each pair costs its verification at
/// start (seconds on a slow machine), so netwatch loads only the ones its interfaces need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classifiers {
    pub ethernet: bool,
    pub l3: bool,
}

impl Classifiers {
    pub const ETHERNET: Self = Self {
        ethernet: true,
        l3: false,
    };
    pub const ALL: Self = Self {
        ethernet: true,
        l3: true,
    };
    /// The Ethernet pair: (program, hook).
    pub const ETHERNET_PAIR: [(&'static str, TcAttachType); 2] = [
        (EGRESS_PROGRAM, TcAttachType::Egress),
        (INGRESS_PROGRAM, TcAttachType::Ingress),
    ];
    /// The pair for devices without a link-layer header.
    pub const L3_PAIR: [(&'static str, TcAttachType); 2] = [
        (L3_EGRESS_PROGRAM, TcAttachType::Egress),
        (L3_INGRESS_PROGRAM, TcAttachType::Ingress),
    ];

    /// The pairs `interfaces` need.
    #[must_use]
    pub fn for_interfaces(interfaces: &[Interface]) -> Self {
        Self {
            ethernet: interfaces.iter().any(|i| i.kind.has_link_header()),
            l3: interfaces.iter().any(|i| !i.kind.has_link_header()),
        }
    }

    /// The pair for devices of `kind`.
    #[must_use]
    pub const fn pair(kind: LinkKind) -> [(&'static str, TcAttachType); 2] {
        if kind.has_link_header() {
            Self::ETHERNET_PAIR
        } else {
            Self::L3_PAIR
        }
    }

    pub(super) fn names(self) -> impl Iterator<Item = &'static str> {
        let ethernet = self.ethernet.then_some(Self::ETHERNET_PAIR);
        let l3 = self.l3.then_some(Self::L3_PAIR);
        ethernet
            .into_iter()
            .chain(l3)
            .flatten()
            .map(|(name, _)| name)
    }

    fn has(self, kind: LinkKind) -> bool {
        if kind.has_link_header() {
            self.ethernet
        } else {
            self.l3
        }
    }
}

/// How one interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Tcx,
    /// A clsact qdisc filter; `created_qdisc` when netwatch added the qdisc.
    Clsact {
        created_qdisc: bool,
    },
}

impl Attached {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Clsact { .. } => "clsact",
        }
    }
}

pub(super) struct Attachment {
    iface: String,
    ifindex: u32,
    via: Attached,
    links: Vec<(&'static str, SchedClassifierLinkId)>,
    /// Held while attached: tells other netwatch processes these filters are not orphans.
    lock: Option<crate::lock::InterfaceLock>,
}

/// Claims `iface` for this netwatch (see [`crate::lock`]) and, when no other live netwatch
/// watches it, removes filters of netwatch's programs a killed one left there. Without a
/// claim (no /run/netwatch, say, when running unprivileged with capabilities) it cannot
/// tell, and removes nothing.
fn claim_and_remove_orphans(iface: &str) -> Option<crate::lock::InterfaceLock> {
    let claim = match crate::lock::claim(iface) {
        Ok(claim) => claim,
        Err(err) => {
            log::info!(
                "cannot lock {iface} under {} ({err}): filters a killed netwatch left there stay",
                crate::lock::LOCK_DIR
            );
            return None;
        }
    };
    if claim.alone {
        // Both pairs: the device may have been of the other kind then (a name reused).
        for (name, direction) in Classifiers::ETHERNET_PAIR
            .into_iter()
            .chain(Classifiers::L3_PAIR)
        {
            match tc::qdisc_detach_program(iface, direction, name) {
                Ok(()) => eprintln!(
                    "netwatch: removed a {name} filter left on {iface} by a netwatch that was killed"
                ),
                Err(err) => log::debug!("no orphaned {name} filter on {iface}: {err}"),
            }
        }
    }
    Some(claim.lock)
}

impl Probe {
    /// Attaches to `iface` the classifier pair of its kind.
    pub fn attach(&mut self, iface: &Interface, mode: AttachMode) -> Result<Attached, ProbeError> {
        if !self.classifiers.has(iface.kind) {
            // Only when a device comes back as another kind: the pairs are chosen at start.
            return Err(ProbeError::Attach {
                iface: iface.name.clone(),
                reason: format!(
                    "it is now a {} device, and netwatch loaded no programs for those at start; \
                     restart netwatch to watch it",
                    iface.kind.name()
                ),
            });
        }
        // Whatever this run's mode, an earlier clsact run may have been killed here.
        let lock = claim_and_remove_orphans(&iface.name);
        let attached = match mode {
            AttachMode::Tcx => self.attach_tcx(iface).map_err(|err| {
                match running_kernel().filter(|(_, version)| *version < TCX_KERNEL) {
                    Some((release, _)) => ProbeError::Attach {
                        iface: iface.name.clone(),
                        reason: format!(
                            "tcx needs Linux {}.{} or later, this is Linux {release}; \
                             --attach clsact (or auto) works here",
                            TCX_KERNEL.0, TCX_KERNEL.1
                        ),
                    },
                    None => err,
                }
            }),
            AttachMode::Clsact => self.attach_clsact(iface),
            AttachMode::Auto => self.attach_tcx(iface).or_else(|tcx_err| {
                log::info!(
                    "tcx unavailable on {} ({tcx_err}); using a clsact filter",
                    iface.name
                );
                self.attach_clsact(iface)
                    .map_err(|clsact_err| ProbeError::Attach {
                        iface: iface.name.clone(),
                        reason: no_tc_hook(&tcx_err, &clsact_err),
                    })
            }),
        }?;
        if let Some(attachment) = self.attachments.last_mut() {
            attachment.lock = lock;
        }
        Ok(attached)
    }

    fn attach_tcx(&mut self, iface: &Interface) -> Result<Attached, ProbeError> {
        // First in the chain: a program before netwatch that returns TCX_PASS (TC_ACT_OK,
        // as Cilium's and Calico's dataplanes do) ends the chain, and netwatch would never see
        // those packets. netwatch itself always returns TCX_NEXT, so going first changes
        // nothing for the others. (clsact needs nothing of the sort: a filter added without a
        // priority gets one below the first existing filter's, and so runs first.)
        self.attach_both(iface, Attached::Tcx, || {
            TcAttachOptions::TcxOrder(LinkOrder::first())
        })
    }

    fn attach_clsact(&mut self, iface: &Interface) -> Result<Attached, ProbeError> {
        let created_qdisc = match tc::qdisc_add_clsact(&iface.name) {
            Ok(()) => true,
            Err(TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => false,
            Err(err) => {
                return Err(ProbeError::Attach {
                    iface: iface.name.clone(),
                    reason: format!("could not add a clsact qdisc: {}", first_line(&err)),
                });
            }
        };
        let via = Attached::Clsact { created_qdisc };
        let result = self.attach_both(
            iface,
            via,
            || TcAttachOptions::Netlink(NlOptions::default()),
        );
        if result.is_err() && created_qdisc {
            delete_clsact_if_empty(&iface.name, iface.index);
        }
        result
    }

    fn attach_both(
        &mut self,
        iface: &Interface,
        via: Attached,
        options: impl Fn() -> TcAttachOptions,
    ) -> Result<Attached, ProbeError> {
        let mut links = Vec::new();
        for (name, direction) in Classifiers::pair(iface.kind) {
            let program = classifier(&mut self.ebpf, name)?;
            match program.attach_with_options(&iface.name, direction, options()) {
                Ok(link) => links.push((name, link)),
                Err(err) => {
                    // Leave nothing half-attached.
                    self.detach_links(&iface.name, links);
                    return Err(ProbeError::Attach {
                        iface: iface.name.clone(),
                        reason: first_line(&err),
                    });
                }
            }
        }
        self.attachments.push(Attachment {
            iface: iface.name.clone(),
            ifindex: iface.index,
            via,
            links,
            lock: None,
        });
        Ok(via)
    }

    fn detach_links(&mut self, iface: &str, links: Vec<(&'static str, SchedClassifierLinkId)>) {
        for (name, link) in links {
            let detached = classifier(&mut self.ebpf, name).and_then(|program| {
                program.detach(link).map_err(|err| ProbeError::Attach {
                    iface: iface.to_owned(),
                    reason: first_line(&err),
                })
            });
            if let Err(err) = detached {
                log::warn!("detaching {name} from {iface}: {err}");
            }
        }
    }

    /// Drops the attachment to `iface` (detaching what is still attached: an interface that
    /// was deleted took its tcx links and filters with it, which is not an error).
    pub fn forget(&mut self, iface: &str) {
        let (gone, kept): (Vec<Attachment>, Vec<Attachment>) =
            std::mem::take(&mut self.attachments)
                .into_iter()
                .partition(|a| a.iface == iface);
        self.attachments = kept;
        for attachment in gone {
            let still_there = crate::interfaces::probe_link(iface)
                .is_some_and(|(index, _)| index == attachment.ifindex);
            if still_there {
                self.detach_links(&attachment.iface, attachment.links);
                if attachment.via
                    == (Attached::Clsact {
                        created_qdisc: true,
                    })
                {
                    delete_clsact_if_empty(&attachment.iface, attachment.ifindex);
                }
            } else {
                // The kernel already detached everything with the device; just release the
                // link handles without netlink calls that would fail.
                for (name, link) in attachment.links {
                    if let Ok(program) = classifier(&mut self.ebpf, name)
                        && let Ok(owned) = program.take_link(link)
                    {
                        drop(owned);
                    }
                }
            }
        }
    }

    /// The interface index `iface` was attached at, if attached.
    #[must_use]
    pub fn attached_index(&self, iface: &str) -> Option<u32> {
        self.attachments
            .iter()
            .find(|a| a.iface == iface)
            .map(|a| a.ifindex)
    }

    /// Detaches from every interface (and removes clsact qdiscs netwatch created).
    pub fn detach_all(&mut self) {
        for attachment in std::mem::take(&mut self.attachments) {
            self.detach_links(&attachment.iface, attachment.links);
            if attachment.via
                == (Attached::Clsact {
                    created_qdisc: true,
                })
            {
                delete_clsact_if_empty(&attachment.iface, attachment.ifindex);
            }
        }
    }
}

/// Removes the clsact qdisc netwatch added, unless someone attached other filters since.
fn delete_clsact_if_empty(iface: &str, ifindex: u32) {
    match crate::clsact::has_filters(ifindex) {
        Ok(false) => {}
        Ok(true) => {
            log::info!("leaving the clsact qdisc on {iface}: other filters use it");
            return;
        }
        Err(err) => {
            log::warn!("leaving the clsact qdisc on {iface}: could not list its filters: {err}");
            return;
        }
    }
    if let Err(err) = crate::clsact::delete(ifindex) {
        log::warn!("could not remove the clsact qdisc from {iface}: {err}");
    }
}
