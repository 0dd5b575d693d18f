//! The running kernel's BTF, read once at start-up: where the tracepoint programs find the
//! fields they read (`sk_buff`, `sock`, `tcp_sock`), and the names of its drop reasons.
//!
//! Nothing about the kernel is compiled in: offsets change between kernels and configs, and
//! rustc emits no CO-RE relocations. The kernel's BTF is several MiB, so a short-lived child
//! process reads it ([`layout_in_child`]) and hands the result back as text; [`types`] reads
//! only what is asked of it.

pub(crate) mod types;

use std::fmt::Write as _;

use netwatch_common::{DropConfig, RetransmitConfig};
use thiserror::Error;

use crate::drops;
use types::{Offset, Types};

/// Where the running kernel describes its types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What the kernel's BTF gives each tracepoint program: its configuration, or why it cannot
/// run on this kernel (one line, for the operator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The drop program's configuration and the `enum skb_drop_reason` enumerators.
    pub drops: Result<(DropConfig, Vec<(String, u32)>), String>,
    /// The retransmission program's configuration.
    pub retransmits: Result<RetransmitConfig, String>,
}

impl Layout {
    /// Every program refused for the same reason (no BTF, or BTF that does not parse).
    #[must_use]
    pub fn unavailable(why: &str) -> Self {
        Self {
            drops: Err(why.to_owned()),
            retransmits: Err(why.to_owned()),
        }
    }
}

/// A struct member the retransmission program needs is missing.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("struct {0} has no usable {1} in the kernel's BTF")]
pub struct MissingField(pub &'static str, pub &'static str);

/// Parses `btf` (the contents of [`VMLINUX_BTF`]).
#[must_use]
pub fn parse(btf: &[u8]) -> Layout {
    let types = match Types::parse(btf) {
        Ok(types) => types,
        Err(err) => return Layout::unavailable(&drops::LayoutError::BadBtf(err).to_string()),
    };
    Layout {
        drops: drops::layout_parts(&types).map_err(|err| err.to_string()),
        retransmits: retransmit_config(&types, own_netns()).map_err(|err| err.to_string()),
    }
}

/// Reads [`VMLINUX_BTF`] and parses it.
#[must_use]
pub fn read_and_parse() -> Layout {
    match std::fs::read(VMLINUX_BTF) {
        Ok(btf) => parse(&btf),
        Err(err) => Layout::unavailable(&drops::LayoutError::NoBtf(err.to_string()).to_string()),
    }
}

/// The offset of `path` in `ty`, in bytes.
pub(crate) fn offset(
    types: &Types<'_>,
    ty: &'static str,
    path: &'static str,
) -> Result<u32, MissingField> {
    let id = types.composite(ty).ok_or(MissingField(ty, path))?;
    match types.offset_of(id, path) {
        Some(Offset::Bytes(offset)) => Ok(offset),
        _ => Err(MissingField(ty, path)),
    }
}

/// The retransmission program's configuration: `sock_common`, `tcp_sock` and `sk_buff`
/// offsets, and `netns`, the namespace whose connections are this host's (0: no check).
pub(crate) fn retransmit_config(
    types: &Types<'_>,
    netns: u32,
) -> Result<RetransmitConfig, MissingField> {
    let sock = |path| offset(types, "sock", path);
    let tcp = |path| offset(types, "tcp_sock", path);
    let skb = |path| offset(types, "sk_buff", path);
    let config = RetransmitConfig {
        enabled: 1,
        netns: 0,
        sk_net: 0,
        net_inum: offset(types, "net", "ns.inum")?,
        daddr: sock("__sk_common.skc_daddr")?,
        rcv_saddr: sock("__sk_common.skc_rcv_saddr")?,
        dport: sock("__sk_common.skc_dport")?,
        num: sock("__sk_common.skc_num")?,
        family: sock("__sk_common.skc_family")?,
        v6_daddr: sock("__sk_common.skc_v6_daddr")?,
        v6_rcv_saddr: sock("__sk_common.skc_v6_rcv_saddr")?,
        skb_len: skb("len")?,
        skb_cb: skb("cb")?,
        snd_una: tcp("snd_una")?,
        snd_wnd: tcp("snd_wnd")?,
        mss_cache: tcp("mss_cache")?,
        tcp_header_len: tcp("tcp_header_len")?,
        delivered: tcp("delivered")?,
        bytes_acked: tcp("bytes_acked")?,
        reserved: 0,
    };
    // Without CONFIG_NET_NS there is one namespace and `possible_net_t` is empty: no check.
    Ok(match sock("__sk_common.skc_net.net") {
        Ok(sk_net) if netns != 0 => RetransmitConfig {
            sk_net,
            netns,
            ..config
        },
        _ => config,
    })
}

/// The inode number of this process's network namespace (what `net->ns.inum` holds); 0
/// when it cannot be read, which turns the namespace checks off.
#[must_use]
pub fn own_netns() -> u32 {
    crate::lock::own_netns()
        .ok()
        .and_then(|inode| u32::try_from(inode).ok())
        .unwrap_or(0)
}

/// Set in the environment of the child netwatch starts to parse the kernel's BTF (see
/// [`layout_in_child`]); the child prints [`encode`] and exits.
pub const LAYOUT_CHILD_ENV: &str = "NETWATCH_INTERNAL_BTF_LAYOUT";

/// The layout, parsed by a short-lived child process (this same executable, with
/// [`LAYOUT_CHILD_ENV`] set): the BTF's several MiB (about 6 on 6.18) then never count
/// against netwatch's own memory, not even as a peak. `None` when the child could not run (the caller parses
/// in-process instead).
#[must_use]
pub fn layout_in_child() -> Option<Layout> {
    let exe = std::env::current_exe().ok()?;
    // Only the netwatch binary knows the variable: any other program loading the probe (a
    // test harness, the benchmarks) would run itself again in full.
    if exe.file_name() != Some(std::ffi::OsStr::new("netwatch")) {
        return None;
    }
    let out = std::process::Command::new(exe)
        .env(LAYOUT_CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    decode(&String::from_utf8_lossy(&out.stdout))
}

/// In the child: parses the running kernel's BTF and prints the result for the parent.
#[must_use]
pub fn layout_child_main() -> std::process::ExitCode {
    print!("{}", encode(&read_and_parse()));
    std::process::ExitCode::SUCCESS
}

/// One line per program (`drops ok <hex>` or `drops err <why>`, the same for
/// `retransmits`), then `NAME VALUE` per drop reason enumerator. The configurations travel
/// as their bytes: both sides are this same executable.
#[must_use]
pub fn encode(layout: &Layout) -> String {
    let mut text = String::new();
    match &layout.drops {
        Ok((config, _)) => {
            let _ = writeln!(text, "drops ok {}", to_hex(config));
        }
        Err(why) => {
            let _ = writeln!(text, "drops err {}", why.replace('\n', " "));
        }
    }
    match &layout.retransmits {
        Ok(config) => {
            let _ = writeln!(text, "retransmits ok {}", to_hex(config));
        }
        Err(why) => {
            let _ = writeln!(text, "retransmits err {}", why.replace('\n', " "));
        }
    }
    if let Ok((_, enumerators)) = &layout.drops {
        for (name, value) in enumerators {
            let _ = writeln!(text, "{name} {value}");
        }
    }
    text
}

/// The inverse of [`encode`]; `None` for anything else.
#[must_use]
pub fn decode(text: &str) -> Option<Layout> {
    let mut lines = text.lines();
    let drops = result_line(lines.next()?, "drops ")?;
    let retransmits = result_line(lines.next()?, "retransmits ")?;
    let drops = match drops {
        Ok(hex) => {
            let config = from_hex::<DropConfig>(hex)?;
            let enumerators = lines
                .map(|line| {
                    let (name, value) = line.split_once(' ')?;
                    Some((name.to_owned(), value.parse().ok()?))
                })
                .collect::<Option<Vec<_>>>()?;
            Ok((config, enumerators))
        }
        Err(why) => Err(why),
    };
    let retransmits = match retransmits {
        Ok(hex) => Ok(from_hex::<RetransmitConfig>(hex)?),
        Err(why) => Err(why),
    };
    Some(Layout { drops, retransmits })
}

/// `PREFIX ok <rest>` → `Ok(rest)`, `PREFIX err <why>` → `Err(why)`.
fn result_line<'a>(line: &'a str, prefix: &str) -> Option<Result<&'a str, String>> {
    let rest = line.strip_prefix(prefix)?;
    if let Some(hex) = rest.strip_prefix("ok ") {
        return Some(Ok(hex));
    }
    rest.strip_prefix("err ").map(|why| Err(why.to_owned()))
}

fn to_hex<T: aya::Pod>(value: &T) -> String {
    // SAFETY: a Pod value is plain integers with its padding spelled out as fields: every
    // byte of it is initialised, and reading them as bytes is sound.
    let bytes = unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
    };
    bytes.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

fn from_hex<T: aya::Pod>(hex: &str) -> Option<T> {
    if hex.len() != 2 * size_of::<T>() {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    // SAFETY: the buffer holds exactly size_of::<T>() bytes, and any bytes are a valid Pod
    // value (integers only); read_unaligned copes with the Vec's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_childs_layout_reaches_the_parent_unchanged() {
        let drops = DropConfig {
            netns: 4_026_531_840,
            socket_reasons: [0b1000, 0, 0, 1],
            pkt_type_shift: 1,
            ..drops::window_config(&drops::tests::SKB_6_18).unwrap()
        };
        let retransmits = RetransmitConfig {
            enabled: 1,
            snd_una: 1672,
            bytes_acked: 1824,
            ..RetransmitConfig::disabled()
        };
        let both = Layout {
            drops: Ok((
                drops,
                vec![
                    ("SKB_CONSUMED".to_owned(), 1),
                    ("SKB_DROP_REASON_NETFILTER_DROP".to_owned(), 12),
                ],
            )),
            retransmits: Ok(retransmits),
        };
        assert_eq!(decode(&encode(&both)), Some(both));
        // 5.10: BTF, no drop reasons.
        let some = Layout {
            drops: Err("the kernel has no drop reasons".to_owned()),
            retransmits: Ok(retransmits),
        };
        assert_eq!(decode(&encode(&some)), Some(some));
        let none = Layout::unavailable("no kernel BTF (x: y)");
        assert_eq!(decode(&encode(&none)), Some(none));
        assert_eq!(decode("drops ok 0102\nretransmits err x\n"), None);
        assert_eq!(decode(""), None);
    }

    #[test]
    fn garbage_is_not_btf() {
        let layout = parse(b"not btf");
        assert!(layout.drops.unwrap_err().contains("could not be parsed"));
        assert!(layout.retransmits.is_err());
    }

    #[test]
    fn the_running_kernel_tells_where_tcp_keeps_its_state() {
        let Ok(btf) = std::fs::read(VMLINUX_BTF) else {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        };
        let config = parse(&btf).retransmits.unwrap();
        assert_eq!(config.enabled, 1);
        // `struct sock` starts with `sock_common`, addresses first.
        assert_eq!(config.daddr, 0);
        assert_eq!(config.rcv_saddr, 4);
        assert!(config.snd_una > config.family && config.bytes_acked > config.snd_una);
        assert_ne!(config.skb_len, config.skb_cb);
        assert_ne!(config.netns, 0, "the namespace check is on");
    }
}
