//! A reader of BTF that answers only what netwatch asks: where a named struct keeps a member
//! (through anonymous unions and structs, typedefs and qualifiers) and an enum's enumerators.
//!
//! Why not a general parser: btfparse builds every one of the kernel's 150,000 types as
//! objects, 0.5 s and 68 MB on this machine's kernel for what netwatch reads, and seconds
//! under emulation at each start. This reader indexes where each type's record starts (one
//! pass, no strings decoded) and reads records in place: milliseconds. The format:
//! <https://docs.kernel.org/bpf/btf.html>.

use aya_obj::btf::BtfKind;

/// A member's place in its struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offset {
    /// A whole-byte member, at this byte.
    Bytes(u32),
    /// A bitfield: its first bit and its width in bits.
    Bits { bit: u32, size: u32 },
}

const MAGIC: u16 = 0xeb9f;
/// A record's common part: `name_off`, `info`, `size`/`type`.
const RECORD: usize = 12;
/// How deep a path may go through typedefs, qualifiers and anonymous members: far beyond
/// any real kernel's, and a bound on malformed BTF that refers to itself.
const DEPTH: u32 = 32;

/// BTF bytes with the start of each type's record indexed by id.
pub(crate) struct Types<'a> {
    records: &'a [u8],
    strings: &'a [u8],
    /// Where the record of type id `n` starts in `records`: `starts[n - 1]` (id 0 is void).
    starts: Vec<u32>,
    /// The ids of the named structs, unions and enums: the only types looked up by name, a
    /// tenth of the kernel's.
    by_name: Vec<u32>,
}

/// One type's record, read in place.
#[derive(Clone, Copy)]
struct Record<'a> {
    name: u32,
    kind: BtfKind,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    /// What follows the common part (members, enumerators, …).
    rest: &'a [u8],
}

impl<'a> Types<'a> {
    /// Indexes `btf` (a whole BTF blob, such as `/sys/kernel/btf/vmlinux`).
    pub(crate) fn parse(btf: &'a [u8]) -> Result<Self, String> {
        let word = |at: usize| -> Result<u32, String> { u32_at(btf, at).ok_or_else(short) };
        let magic = btf
            .get(..2)
            .map(|bytes| u16::from_ne_bytes([bytes[0], bytes[1]]))
            .ok_or_else(short)?;
        if magic != MAGIC {
            return Err(format!("magic {magic:#06x}, not {MAGIC:#06x}"));
        }
        let header = word(4)? as usize;
        let section = |off: usize, len: usize| -> Result<&'a [u8], String> {
            let start = header.checked_add(word(off)? as usize).ok_or_else(short)?;
            let end = start.checked_add(word(len)? as usize).ok_or_else(short)?;
            btf.get(start..end).ok_or_else(short)
        };
        let types = section(8, 12)?;
        let strings = section(16, 20)?;
        let mut starts = Vec::with_capacity(types.len() / 32);
        let mut by_name = Vec::new();
        let mut at = 0;
        while at < types.len() {
            let info = u32_at(types, at + 4).ok_or_else(short)?;
            let vlen = (info & 0xffff) as usize;
            let kind = kind_of(info)
                .ok_or_else(|| format!("unknown type kind {}", (info >> 24) & 0x1f))?;
            if matches!(
                kind,
                BtfKind::Struct | BtfKind::Union | BtfKind::Enum | BtfKind::Enum64
            ) && u32_at(types, at) != Some(0)
            {
                by_name.push(u32::try_from(starts.len() + 1).map_err(|_| short())?);
            }
            // What follows the common part, by kind.
            let extra = match kind {
                BtfKind::Int | BtfKind::Var | BtfKind::DeclTag => 4,
                BtfKind::Array => 12,
                BtfKind::Struct | BtfKind::Union | BtfKind::DataSec | BtfKind::Enum64 => 12 * vlen,
                BtfKind::Enum | BtfKind::FuncProto => 8 * vlen,
                BtfKind::Ptr
                | BtfKind::Fwd
                | BtfKind::Typedef
                | BtfKind::Volatile
                | BtfKind::Const
                | BtfKind::Restrict
                | BtfKind::Func
                | BtfKind::Float
                | BtfKind::TypeTag
                | BtfKind::Unknown => 0,
            };
            starts.push(u32::try_from(at).map_err(|_| short())?);
            at += RECORD + extra;
        }
        if at != types.len() {
            return Err(short());
        }
        Ok(Self {
            records: types,
            strings,
            starts,
            by_name,
        })
    }

    /// The id of the struct or union named `name` (one with members, not a declaration).
    pub(crate) fn composite(&self, name: &str) -> Option<u32> {
        self.named(name, |record| {
            matches!(record.kind, BtfKind::Struct | BtfKind::Union) && record.vlen > 0
        })
    }

    /// The enumerators of the enum named `name`, as 32-bit values.
    pub(crate) fn enumerators(&self, name: &str) -> Option<Vec<(String, u32)>> {
        let id = self.named(name, |record| {
            matches!(record.kind, BtfKind::Enum | BtfKind::Enum64)
        })?;
        let record = self.record(id)?;
        let width = if record.kind == BtfKind::Enum { 8 } else { 12 };
        (0..record.vlen)
            .map(|n| {
                let at = n * width;
                let name = self.string(u32_at(record.rest, at)?)?;
                // ENUM64 keeps the low 32 bits first; drop reasons fit in them.
                Some((name.to_owned(), u32_at(record.rest, at + 4)?))
            })
            .collect()
    }

    /// Where `path` (member names joined by dots, as `__sk_common.skc_net.net`) lies in the
    /// struct or union `id`. Members of anonymous unions and structs are found as the C
    /// compiler finds them, as if they were the outer struct's own.
    pub(crate) fn offset_of(&self, id: u32, path: &str) -> Option<Offset> {
        let mut ty = id;
        let mut bits = 0u32;
        let mut last = None;
        for name in path.split('.') {
            let (member_bits, member) = self.member(self.resolve(ty)?, name, 0)?;
            bits = bits.checked_add(member_bits)?;
            ty = member.ty;
            last = Some(member);
        }
        match last?.bitfield {
            0 if bits.is_multiple_of(8) => Some(Offset::Bytes(bits / 8)),
            0 => None,
            size => Some(Offset::Bits { bit: bits, size }),
        }
    }

    /// The member `name` of the struct or union `id`: its bit offset there and what it is.
    fn member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, Member)> {
        let record = self.record(id)?;
        if !matches!(record.kind, BtfKind::Struct | BtfKind::Union) || depth > DEPTH {
            return None;
        }
        (0..record.vlen).find_map(|n| {
            let member = self.member_at(&record, n)?;
            if member.name != 0 {
                return (self.string(member.name)? == name).then_some((member.bit, member));
            }
            let (inner, found) = self.member(self.resolve(member.ty)?, name, depth + 1)?;
            Some((member.bit.checked_add(inner)?, found))
        })
    }

    /// The `n`th member of a struct or union record.
    fn member_at(&self, record: &Record<'_>, n: usize) -> Option<Member> {
        let at = n * 12;
        let (name, ty, offset) = (
            u32_at(record.rest, at)?,
            u32_at(record.rest, at + 4)?,
            u32_at(record.rest, at + 8)?,
        );
        if record.kind_flag {
            return Some(Member {
                name,
                ty,
                bit: offset & 0x00ff_ffff,
                bitfield: offset >> 24,
            });
        }
        // Without the kind flag a bitfield is told by its int type: fewer bits than bytes.
        let int = self
            .record(self.resolve(ty)?)
            .filter(|int| int.kind == BtfKind::Int);
        let encoding = int.and_then(|int| u32_at(int.rest, 0)).unwrap_or(0);
        let (int_bits, int_offset) = (encoding & 0xff, (encoding >> 16) & 0xff);
        let bitfield = match int {
            Some(int) if int_bits != int.size_or_type * 8 || int_offset != 0 => int_bits,
            _ => 0,
        };
        Some(Member {
            name,
            ty,
            bit: offset.checked_add(int_offset)?,
            bitfield,
        })
    }

    /// `id` with typedefs and qualifiers (const, volatile, restrict, type tags) looked through.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..DEPTH {
            match self.record(id)?.kind {
                BtfKind::Typedef
                | BtfKind::Volatile
                | BtfKind::Const
                | BtfKind::Restrict
                | BtfKind::TypeTag => {
                    id = self.record(id)?.size_or_type;
                }
                _ => return Some(id),
            }
        }
        None
    }

    /// The first struct, union or enum named `name` that `wanted` accepts.
    fn named(&self, name: &str, wanted: impl Fn(&Record<'_>) -> bool) -> Option<u32> {
        let name = name.as_bytes();
        self.by_name.iter().copied().find(|&id| {
            self.record(id).is_some_and(|record| {
                let named = self
                    .strings
                    .get(record.name as usize..)
                    .is_some_and(|tail| tail.starts_with(name) && tail.get(name.len()) == Some(&0));
                named && wanted(&record)
            })
        })
    }

    fn record(&self, id: u32) -> Option<Record<'a>> {
        let start = *self.starts.get(usize::try_from(id).ok()?.checked_sub(1)?)? as usize;
        let info = u32_at(self.records, start + 4)?;
        Some(Record {
            name: u32_at(self.records, start)?,
            kind: kind_of(info)?,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(self.records, start + 8)?,
            rest: self.records.get(start + RECORD..)?,
        })
    }

    /// The NUL-terminated string at `offset` in the string section.
    fn string(&self, offset: u32) -> Option<&'a str> {
        let tail = self.strings.get(offset as usize..)?;
        let end = tail.iter().position(|&byte| byte == 0)?;
        std::str::from_utf8(&tail[..end]).ok()
    }
}

/// A struct or union member as read from its record.
#[derive(Clone, Copy)]
struct Member {
    name: u32,
    ty: u32,
    bit: u32,
    /// Its width in bits when a bitfield, else 0.
    bitfield: u32,
}

/// The kind in a record's `info` (bits 24–28); `None` for one this reader does not know,
/// whose record's length it cannot tell.
fn kind_of(info: u32) -> Option<BtfKind> {
    BtfKind::try_from((info >> 24) & 0x1f)
        .ok()
        .filter(|kind| *kind != BtfKind::Unknown)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]))
}

fn short() -> String {
    "truncated".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built by hand: header, the given type records, then the strings.
    fn blob(records: &[&[u32]], strings: &[u8]) -> Vec<u8> {
        let types: Vec<u8> = records
            .iter()
            .flat_map(|words| words.iter().flat_map(|word| word.to_ne_bytes()))
            .collect();
        let mut btf = Vec::new();
        btf.extend(MAGIC.to_ne_bytes());
        btf.extend([1, 0]);
        let (types_len, strings_len) = (types.len(), strings.len());
        for word in [24, 0, types_len, types_len, strings_len] {
            btf.extend(u32::try_from(word).unwrap().to_ne_bytes());
        }
        btf.extend(types);
        btf.extend(strings);
        btf
    }

    fn info(kind: BtfKind, vlen: u32, kind_flag: bool) -> u32 {
        (u32::from(kind_flag) << 31) | ((kind as u32) << 24) | vlen
    }

    /// Strings: 1 "int", 5 "outer", 11 "a", 13 "b", 15 "flags", 21 "u8", 24 "reason",
    /// 31 "`R_ONE`", 37 "`R_TWO`", 43 "t".
    const STRINGS: &[u8] = b"\0int\0outer\0a\0b\0flags\0u8\0reason\0R_ONE\0R_TWO\0t\0";

    fn sample() -> Vec<u8> {
        blob(
            &[
                // 1: int, 32 bits.
                &[1, info(BtfKind::Int, 0, false), 4, 32],
                // 2: typedef t → 1.
                &[43, info(BtfKind::Typedef, 0, false), 1],
                // 3: anonymous union { t b; } (the member through the typedef).
                &[0, info(BtfKind::Union, 1, false), 4, 13, 2, 0],
                // 4: u8, 8 bits.
                &[21, info(BtfKind::Int, 0, false), 1, 8],
                // 5: struct outer { int a; union { t b; } (at byte 8); u8 flags:3 (at bit
                // 100, 0x64) }.
                &[
                    5,
                    info(BtfKind::Struct, 3, true),
                    16,
                    11,
                    1,
                    0,
                    0,
                    3,
                    64,
                    15,
                    4,
                    (3 << 24) | 0x64,
                ],
                // 6: const struct outer.
                &[0, info(BtfKind::Const, 0, false), 5],
                // 7: enum reason { R_ONE = 1, R_TWO = -2 }.
                &[
                    24,
                    info(BtfKind::Enum, 2, false),
                    4,
                    31,
                    1,
                    37,
                    (-2i32).cast_unsigned(),
                ],
            ],
            STRINGS,
        )
    }

    #[test]
    fn members_are_found_through_anonymous_unions_typedefs_and_bitfields() {
        let btf = sample();
        let types = Types::parse(&btf).unwrap();
        let outer = types.composite("outer").unwrap();
        assert_eq!(outer, 5);
        assert_eq!(types.offset_of(outer, "a"), Some(Offset::Bytes(0)));
        assert_eq!(types.offset_of(outer, "b"), Some(Offset::Bytes(8)));
        assert_eq!(
            types.offset_of(outer, "flags"),
            Some(Offset::Bits { bit: 100, size: 3 })
        );
        assert_eq!(types.offset_of(outer, "c"), None);
        assert_eq!(types.offset_of(outer, "a.b"), None, "an int has no members");
        assert_eq!(types.composite("int"), None, "an int is no struct");
        assert_eq!(types.composite("missing"), None);
    }

    #[test]
    fn enumerators_keep_their_values_as_32_bits() {
        let btf = sample();
        let types = Types::parse(&btf).unwrap();
        assert_eq!(
            types.enumerators("reason"),
            Some(vec![
                ("R_ONE".to_owned(), 1),
                ("R_TWO".to_owned(), (-2i32).cast_unsigned())
            ])
        );
        assert_eq!(types.enumerators("outer"), None);
    }

    #[test]
    fn anything_but_whole_btf_is_refused() {
        assert!(Types::parse(b"not btf").is_err());
        assert!(Types::parse(b"").is_err());
        let btf = sample();
        for cut in [4, 24, btf.len() - STRINGS.len() - 4, btf.len() - 1] {
            assert!(Types::parse(&btf[..cut]).is_err(), "cut at {cut}");
        }
        let unknown = blob(&[&[0, 31 << 24, 0]], b"\0");
        assert_eq!(
            Types::parse(&unknown).err(),
            Some("unknown type kind 31".to_owned())
        );
    }

    #[test]
    fn a_type_that_refers_to_itself_ends() {
        let btf = blob(&[&[1, info(BtfKind::Typedef, 0, false), 1]], b"\0loop\0");
        let types = Types::parse(&btf).unwrap();
        assert_eq!(types.offset_of(1, "x"), None);
    }

    /// The running kernel's BTF read by a general parser (btfparse) gives every offset and
    /// enumerator netwatch reads the same: an independent check on this reader.
    #[test]
    fn the_running_kernel_reads_as_a_general_parser_reads_it() {
        let btf = std::fs::read(crate::btf::VMLINUX_BTF).expect("the kernel's BTF");
        let ours = Types::parse(&btf).unwrap();
        let general = btfparse::TypeInformation::new(&Bytes(&btf)).unwrap();
        let paths = [
            ("sk_buff", "dev"),
            ("sk_buff", "sk"),
            ("sk_buff", "protocol"),
            ("sk_buff", "network_header"),
            ("sk_buff", "head"),
            ("sk_buff", "pkt_type"),
            ("sk_buff", "len"),
            ("sk_buff", "cb"),
            ("net", "ns.inum"),
            ("net_device", "nd_net.net"),
            ("sock", "__sk_common.skc_net.net"),
            ("sock", "__sk_common.skc_daddr"),
            ("sock", "__sk_common.skc_rcv_saddr"),
            ("sock", "__sk_common.skc_dport"),
            ("sock", "__sk_common.skc_num"),
            ("sock", "__sk_common.skc_family"),
            ("sock", "__sk_common.skc_v6_daddr"),
            ("sock", "__sk_common.skc_v6_rcv_saddr"),
            ("tcp_sock", "snd_una"),
            ("tcp_sock", "snd_wnd"),
            ("tcp_sock", "mss_cache"),
            ("tcp_sock", "tcp_header_len"),
            ("tcp_sock", "delivered"),
            ("tcp_sock", "bytes_acked"),
        ];
        for (ty, path) in paths {
            let expected = general
                .id_of(ty)
                .and_then(|id| general.offset_of(id, path).ok())
                .map(|(_, offset)| match offset {
                    btfparse::Offset::ByteOffset(byte) => Offset::Bytes(byte),
                    btfparse::Offset::BitOffsetAndSize(bit, size) => Offset::Bits { bit, size },
                });
            let found = ours.composite(ty).and_then(|id| ours.offset_of(id, path));
            assert!(found.is_some(), "{ty}.{path} not found");
            assert_eq!(found, expected, "{ty}.{path}");
        }
        let Some(btfparse::TypeVariant::Enum(reasons)) = general
            .id_of("skb_drop_reason")
            .and_then(|id| general.from_id(id))
        else {
            panic!("the kernel has no enum skb_drop_reason");
        };
        let expected: Vec<(String, u32)> = reasons
            .named_value_list()
            .iter()
            .map(|value| {
                let number = match value.value {
                    btfparse::Integer32Value::Unsigned(n) => n,
                    btfparse::Integer32Value::Signed(n) => n.cast_unsigned(),
                };
                (value.name.clone(), number)
            })
            .collect();
        assert!(expected.len() > 10);
        assert_eq!(ours.enumerators("skb_drop_reason"), Some(expected));
    }

    /// BTF bytes held in memory, for btfparse.
    struct Bytes<'a>(&'a [u8]);

    impl btfparse::Readable for Bytes<'_> {
        fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let bytes = self
                .0
                .get(start..start.saturating_add(buffer.len()))
                .ok_or_else(|| btfparse::Error::new(btfparse::ErrorKind::IOError, "short"))?;
            buffer.copy_from_slice(bytes);
            Ok(())
        }
    }
}
