//! `nft -a list …` output, read back: each rule's text as nft prints it, by handle, and each
//! base chain's policy. The kernel announces a rule as expressions; nft is what turns them
//! into the text an operator wrote and reads, so netwatch asks it rather than re-implementing
//! it. Pure: text in, rules out.

use super::netlink::{ChainRef, Family, RuleRef};

/// What one listing holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Every rule, in listing order, with its text (without the `# handle N` nft appends).
    pub rules: Vec<(RuleRef, String)>,
    /// Base chains: their `type … hook …; policy …;` line as printed, and the policy (`drop`,
    /// `accept`).
    pub policies: Vec<(ChainRef, String, String)>,
    /// Tables, `inet netwatch_trace` style.
    pub tables: Vec<(Family, String)>,
}

/// Reads `nft -a list ruleset` (or `list table`, `list chain`) output.
#[must_use]
pub(crate) fn parse(text: &str) -> Listing {
    let mut listing = Listing::default();
    // The blocks open around the current line: table, chain, or anything else (a set).
    let mut table: Option<(Family, String)> = None;
    let mut chain: Option<String> = None;
    let mut depth = 0usize;
    let mut table_depth = 0usize;
    let mut chain_depth = 0usize;
    for raw in text.lines() {
        let line = raw.trim();
        let (body, handle) = split_handle(line);
        let opens = braces(body);
        if depth == 0 || (table.is_none() && opens > 0) {
            if let Some(rest) = body.strip_prefix("table ") {
                let mut words = rest.trim_end_matches('{').split_whitespace();
                if let (Some(family), Some(name)) = (words.next(), words.next())
                    && let Some(family) = Family::from_name(family)
                {
                    let name = unquote(name);
                    listing.tables.push((family, name.clone()));
                    table = Some((family, name));
                    table_depth = depth + 1;
                }
            }
        } else if let Some((family, table_name)) = &table {
            if depth == table_depth && chain.is_none() {
                if let Some(rest) = body.strip_prefix("chain ") {
                    let name = rest.trim_end_matches('{').trim();
                    chain = Some(unquote(name));
                    chain_depth = depth + 1;
                }
            } else if let Some(chain_name) = &chain
                && depth == chain_depth
            {
                let chain_ref = ChainRef {
                    family: *family,
                    table: table_name.clone(),
                    chain: chain_name.clone(),
                };
                if let Some(policy) = policy_of(body) {
                    listing
                        .policies
                        .push((chain_ref, body.to_owned(), policy.to_owned()));
                } else if let Some(handle) = handle {
                    listing.rules.push((
                        RuleRef {
                            chain: chain_ref,
                            handle,
                        },
                        body.to_owned(),
                    ));
                }
            }
        }
        depth = depth.saturating_add_signed(opens);
        if chain.is_some() && depth < chain_depth {
            chain = None;
        }
        if table.is_some() && depth < table_depth {
            table = None;
            chain = None;
        }
    }
    listing
}

/// The line without its trailing `# handle N`, and N.
fn split_handle(line: &str) -> (&str, Option<u64>) {
    if let Some((body, handle)) = line.rsplit_once(" # handle ")
        && let Ok(handle) = handle.trim().parse()
    {
        return (body.trim_end(), Some(handle));
    }
    (line, None)
}

/// `{` minus `}` outside double quotes (a comment may hold either).
fn braces(line: &str) -> isize {
    let mut quoted = false;
    let mut count = 0isize;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => count += 1,
            '}' if !quoted => count -= 1,
            _ => {}
        }
    }
    count
}

/// A base chain's `type … hook … priority …; policy drop;` line: its policy.
fn policy_of(line: &str) -> Option<&str> {
    if !line.starts_with("type ") || !line.contains(" hook ") {
        return None;
    }
    let policy = line
        .split(';')
        .find_map(|part| part.trim().strip_prefix("policy "));
    Some(policy.unwrap_or("accept").trim())
}

fn unquote(name: &str) -> String {
    name.trim().trim_matches('"').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULESET: &str = r#"table inet host { # handle 1
	set blocked { # handle 4
		type ipv4_addr
		elements = { 192.0.2.1, 192.0.2.2,
			     192.0.2.3 }
	}

	chain input { # handle 1
		type filter hook input priority filter; policy drop;
		iif "lo" accept # handle 5
		ip saddr @blocked drop # handle 6
	}

	chain output { # handle 2
		type filter hook output priority filter; policy accept;
		tcp dport 3306 drop comment "no { mysql } # handle 99" # handle 7
		udp dport { 53, 123 } reject # handle 8
	}

	chain "my-chain" { # handle 3
		counter packets 3 bytes 180 # handle 9
	}
}
table ip filter { # handle 2
	chain OUTPUT { # handle 1
		type filter hook output priority filter; policy accept;
		ip daddr 198.51.100.54 udp dport 53  counter packets 0 bytes 0 drop # handle 2
	}
}
"#;

    fn rule(family: Family, table: &str, chain: &str, handle: u64) -> RuleRef {
        RuleRef {
            chain: ChainRef {
                family,
                table: table.into(),
                chain: chain.into(),
            },
            handle,
        }
    }

    #[test]
    fn rules_are_named_by_handle_with_their_text_as_printed() {
        let listing = parse(RULESET);
        let texts: Vec<(RuleRef, &str)> = listing
            .rules
            .iter()
            .map(|(r, t)| (r.clone(), t.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![
                (rule(Family::Inet, "host", "input", 5), "iif \"lo\" accept"),
                (
                    rule(Family::Inet, "host", "input", 6),
                    "ip saddr @blocked drop"
                ),
                (
                    rule(Family::Inet, "host", "output", 7),
                    "tcp dport 3306 drop comment \"no { mysql } # handle 99\""
                ),
                (
                    rule(Family::Inet, "host", "output", 8),
                    "udp dport { 53, 123 } reject"
                ),
                (
                    rule(Family::Inet, "host", "my-chain", 9),
                    "counter packets 3 bytes 180"
                ),
                (
                    rule(Family::Ip, "filter", "OUTPUT", 2),
                    "ip daddr 198.51.100.54 udp dport 53  counter packets 0 bytes 0 drop"
                ),
            ]
        );
    }

    #[test]
    fn base_chains_give_their_policy_and_tables_are_listed() {
        let listing = parse(RULESET);
        let policies: Vec<(String, &str)> = listing
            .policies
            .iter()
            .map(|(c, _, p)| (c.to_string(), p.as_str()))
            .collect();
        assert_eq!(
            listing.policies[0].1,
            "type filter hook input priority filter; policy drop;"
        );
        assert_eq!(
            policies,
            vec![
                ("inet host input".to_owned(), "drop"),
                ("inet host output".to_owned(), "accept"),
                ("ip filter OUTPUT".to_owned(), "accept"),
            ]
        );
        assert_eq!(
            listing.tables,
            vec![(Family::Inet, "host".into()), (Family::Ip, "filter".into())]
        );
    }

    #[test]
    fn one_chain_listed_alone_and_nothing_at_all() {
        let chain = "table inet host {\n\tchain output { # handle 2\n\t\ttype filter hook \
                     output priority filter; policy accept;\n\t\ttcp dport 3306 drop # handle \
                     7\n\t}\n}\n";
        let listing = parse(chain);
        assert_eq!(
            listing.rules,
            vec![(
                rule(Family::Inet, "host", "output", 7),
                "tcp dport 3306 drop".to_owned()
            )]
        );
        assert_eq!(parse(""), Listing::default());
        assert_eq!(parse("Error: No such file or directory\n").rules, vec![]);
    }
}
