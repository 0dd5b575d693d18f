//! DNS question decoding for display. The bytes come off the wire: every byte that is not
//! plain printable ASCII is escaped (RFC 1035 §5.1 `\DDD`), so nothing raw ever reaches a
//! terminal, a log or a JSON string.

use std::fmt::Write as _;

/// Longest name kept, in presentation form.
const MAX_NAME_CHARS: usize = 255;

/// A decoded DNS question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Question {
    /// Presentation form without the trailing dot, escaped; `.` for the root.
    pub name: String,
    /// QTYPE, when the capture reached it.
    pub qtype: Option<u16>,
    /// The capture ended before the name did (`name` ends with `...`).
    pub truncated: bool,
}

/// Decodes the question section as captured by the kernel (labels, then QTYPE). `None` when
/// the bytes are not a question at all (a compression pointer, an empty capture).
#[must_use]
pub(crate) fn parse_question(bytes: &[u8]) -> Option<Question> {
    let mut name = String::new();
    let mut at = 0;
    loop {
        let Some(&len) = bytes.get(at) else {
            if at == 0 {
                return None;
            }
            name.push_str("...");
            return Some(Question {
                name,
                qtype: None,
                truncated: true,
            });
        };
        at += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            // Compression pointers and extended label types have no place in a query.
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        let end = at + usize::from(len);
        let label = &bytes[at..end.min(bytes.len())];
        escape_label(label, &mut name);
        if end > bytes.len() || name.len() > MAX_NAME_CHARS {
            name.push_str("...");
            return Some(Question {
                name,
                qtype: None,
                truncated: true,
            });
        }
        at = end;
    }
    if name.is_empty() {
        name.push('.');
    }
    let qtype = bytes
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]));
    Some(Question {
        name,
        qtype,
        truncated: false,
    })
}

fn escape_label(label: &[u8], out: &mut String) {
    for &byte in label {
        match byte {
            b'.' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            b'!'..=b'~' => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "\\{byte:03}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(name: &str, qtype: u16) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(u8::try_from(label.len()).unwrap());
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out.extend_from_slice(&qtype.to_be_bytes());
        out
    }

    #[test]
    fn decodes_name_and_type() {
        let q = parse_question(&wire("chat.example.com", 28)).unwrap();
        assert_eq!(q.name, "chat.example.com");
        assert_eq!(q.qtype, Some(28));
        assert!(!q.truncated);
    }

    #[test]
    fn root_and_missing_type() {
        assert_eq!(parse_question(&[0]).unwrap().name, ".");
        assert_eq!(parse_question(&[0]).unwrap().qtype, None);
        assert_eq!(parse_question(&[]), None);
    }

    #[test]
    fn a_capture_cut_mid_name_is_marked_truncated() {
        let bytes = wire("averyveryverylonglabel.example.com", 1);
        let q = parse_question(&bytes[..10]).unwrap();
        assert!(q.truncated);
        assert_eq!(q.name, "averyvery...");
        let q = parse_question(&bytes[..23]).unwrap();
        assert_eq!(q.name, "averyveryverylonglabel...");
    }

    #[test]
    fn hostile_bytes_are_escaped() {
        let mut bytes = vec![
            5, b'a', 0x1b, b'[', b'.', b'\\', 3, b'x', b' ', 0xff, 0, 0, 1,
        ];
        let q = parse_question(&bytes).unwrap();
        assert_eq!(q.name, "a\\027[\\.\\\\.x\\032\\255");
        assert!(q.name.bytes().all(|b| b.is_ascii_graphic()));
        bytes[0] = 0xc0;
        assert_eq!(parse_question(&bytes), None, "compression pointer");
    }
}
