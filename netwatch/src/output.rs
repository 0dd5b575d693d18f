//! Where results go: NDJSON records, the full-screen view, or the plain table. The run loop
//! hands every output the same [`View`] after each poll.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{self, IsTerminal as _, Write as _},
    time::{Duration, Instant, SystemTime},
};

use futures_util::StreamExt as _;
use ratatui::{
    DefaultTerminal,
    crossterm::event::{Event, EventStream},
};

use crate::{
    diagnosis::{Finding, FindingKey, render_local_rules, render_requests},
    firewall::changes::RulesetRecord,
    interfaces::LinkState,
    report::{
        RunInfo, WatchedInterface,
        json::JsonWriter,
        table,
        tui::{self, Action, Screen, UiState},
    },
    snapshot::{Snapshot, TargetView},
};

/// How often the live view and the plain table are redrawn.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The state of things after a poll.
pub(crate) struct View<'a> {
    /// Targets whose verdict changed in this poll.
    pub changes: &'a [TargetView],
    pub snapshot: &'a Snapshot,
    pub findings: &'a [Finding],
    pub run: &'a RunInfo,
}

/// Which output the command line asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Json,
    Tui,
    Plain,
}

impl Mode {
    /// `--json`, `--plain`, or the full-screen view when stdout is a terminal.
    #[must_use]
    pub(crate) fn choose(json: bool, plain: bool) -> Self {
        if json {
            Self::Json
        } else if plain || !io::stdout().is_terminal() {
            Self::Plain
        } else {
            Self::Tui
        }
    }
}

/// Restores the terminal when dropped: on quit, on a signal, on an error. A panic is
/// covered by the hook `ratatui::init` installs.
pub(crate) struct TerminalGuard {
    terminal: DefaultTerminal,
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one Output for the whole run, never moved around"
)]
pub(crate) enum Output {
    Json {
        writer: JsonWriter<io::Stdout>,
        /// Findings already written, so a `diagnosis` record goes out when one changes.
        announced: BTreeSet<FindingKey>,
    },
    Tui {
        guard: TerminalGuard,
        state: UiState,
        events: EventStream,
        last_draw: Option<Instant>,
        /// What `p` froze on screen.
        frozen: Option<(Snapshot, Vec<Finding>, RunInfo)>,
        latest: Option<(Snapshot, Vec<Finding>, RunInfo)>,
    },
    Plain {
        last_print: Option<Instant>,
        last_body: String,
    },
}

impl Output {
    pub(crate) fn new(mode: Mode) -> io::Result<Self> {
        Ok(match mode {
            Mode::Json => Self::Json {
                writer: JsonWriter::new(io::stdout()),
                announced: BTreeSet::new(),
            },
            Mode::Tui => Self::Tui {
                guard: TerminalGuard {
                    terminal: ratatui::try_init()?,
                },
                state: UiState::default(),
                events: EventStream::new(),
                last_draw: None,
                frozen: None,
                latest: None,
            },
            Mode::Plain => Self::Plain {
                last_print: None,
                last_body: String::new(),
            },
        })
    }

    pub(crate) fn on_poll(&mut self, view: &View<'_>) -> io::Result<()> {
        match self {
            Self::Json { writer, announced } => {
                if !view.changes.is_empty() {
                    writer.verdicts(view.changes, &now_rfc3339())?;
                }
                let current: BTreeSet<FindingKey> =
                    view.findings.iter().map(Finding::key).collect();
                let new: Vec<&Finding> = view
                    .findings
                    .iter()
                    .filter(|f| !announced.contains(&f.key()))
                    .collect();
                if !new.is_empty() {
                    writer.diagnoses(&new)?;
                }
                *announced = current;
                Ok(())
            }
            Self::Tui {
                last_draw, latest, ..
            } => {
                *latest = Some((
                    view.snapshot.clone(),
                    view.findings.to_vec(),
                    view.run.clone(),
                ));
                if last_draw.is_some_and(|at| at.elapsed() < REFRESH_INTERVAL) {
                    return Ok(());
                }
                self.draw()
            }
            Self::Plain {
                last_print,
                last_body,
            } => {
                if last_print.is_some_and(|at| at.elapsed() < REFRESH_INTERVAL) {
                    return Ok(());
                }
                let body = plain_body(view.snapshot, view.findings);
                if view.snapshot.targets.is_empty() || body == *last_body {
                    return Ok(());
                }
                *last_print = Some(Instant::now());
                let mut out = io::stdout().lock();
                write!(
                    out,
                    "{}\n{body}\n",
                    table::status_line(view.snapshot, view.run)
                )?;
                *last_body = body;
                out.flush()
            }
        }
    }

    fn draw(&mut self) -> io::Result<()> {
        let Self::Tui {
            guard,
            state,
            last_draw,
            frozen,
            latest,
            ..
        } = self
        else {
            return Ok(());
        };
        if state.paused && frozen.is_none() {
            frozen.clone_from(latest);
        } else if !state.paused {
            *frozen = None;
        }
        let Some((snapshot, findings, run)) = frozen.as_ref().or(latest.as_ref()) else {
            return Ok(());
        };
        *last_draw = Some(Instant::now());
        guard.terminal.draw(|frame| {
            tui::draw(
                frame,
                state,
                &Screen {
                    snapshot,
                    run,
                    findings,
                },
            );
        })?;
        Ok(())
    }

    /// The next key action in the full-screen view; never resolves for other outputs.
    pub(crate) async fn next_action(&mut self) -> Action {
        let Self::Tui { events, state, .. } = self else {
            return std::future::pending().await;
        };
        loop {
            match events.next().await {
                Some(Ok(Event::Key(key))) => return tui::handle_key(state, key),
                Some(Ok(Event::Resize(..))) => return Action::Redraw,
                Some(Ok(_)) => {}
                // No more input (the terminal went away): keep running, stop listening.
                Some(Err(_)) | None => return std::future::pending().await,
            }
        }
    }

    /// Redraws after a key press.
    pub(crate) fn redraw(&mut self) -> io::Result<()> {
        self.draw()
    }

    /// Whether lines on stderr are seen as they come (not under the full-screen view).
    #[must_use]
    pub(crate) fn is_plain_or_json(&self) -> bool {
        !matches!(self, Self::Tui { .. })
    }

    /// Ruleset changes as they are committed: a record, or a line of the plain output (the
    /// live view shows them from the snapshot, on its timeline).
    pub(crate) fn ruleset(&mut self, records: &[RulesetRecord]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        match self {
            Self::Json { writer, .. } => writer.ruleset(records, &now_rfc3339()),
            Self::Tui { .. } => Ok(()),
            Self::Plain { .. } => {
                let mut out = io::stdout().lock();
                for record in records {
                    writeln!(out, "{}", record.line())?;
                }
                out.flush()
            }
        }
    }

    pub(crate) fn interfaces_changed(&mut self, changed: &[WatchedInterface]) -> io::Result<()> {
        for interface in changed {
            match self {
                Self::Json { writer, .. } => writer.interface(interface, &now_rfc3339())?,
                // The status line shows it; a line on stderr would tear the screen.
                Self::Tui { .. } => {}
                Self::Plain { .. } => eprintln!("netwatch: {}", interface_message(interface)),
            }
        }
        Ok(())
    }

    /// The exit output. The full-screen view is closed first and its final state printed as
    /// the plain report, so it stays in the terminal's scrollback.
    pub(crate) fn finish(self, view: &View<'_>) -> io::Result<()> {
        match self {
            Self::Json { mut writer, .. } => writer.finish(view.snapshot, view.findings, view.run),
            Self::Tui { guard, .. } => {
                drop(guard);
                print_plain(view)
            }
            Self::Plain { .. } => print_plain(view),
        }
    }
}

fn print_plain(view: &View<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    write!(
        out,
        "{}\n{}",
        table::status_line(view.snapshot, view.run),
        plain_body(view.snapshot, view.findings)
    )?;
    out.flush()
}

/// The table, then the diagnosis, the firewall request and the rules for this host's own
/// firewall.
fn plain_body(snapshot: &Snapshot, findings: &[Finding]) -> String {
    let mut body = table::render(snapshot);
    if !findings.is_empty() {
        body.push_str("\nDIAGNOSIS\n");
        for finding in findings {
            let _ = writeln!(body, "[{}] {}", finding.finding, finding.summary);
        }
        let requests = render_requests(findings);
        if !requests.is_empty() {
            body.push_str("\nASK THE FIREWALL TEAM FOR\n");
            body.push_str(&requests);
        }
        let local = render_local_rules(findings);
        if !local.is_empty() {
            body.push_str("\nON THIS HOST'S OWN FIREWALL (INBOUND)\n");
            body.push_str(&local);
        }
    }
    body
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[must_use]
pub(crate) fn interface_message(interface: &WatchedInterface) -> String {
    match interface.state {
        LinkState::Up => format!(
            "{} is up, watched ({}, {})",
            interface.name, interface.kind, interface.attach
        ),
        LinkState::Down => {
            format!(
                "{} is down; still attached, nothing to see until it is up",
                interface.name
            )
        }
        LinkState::Gone => format!(
            "{} is gone; watching the others, and attaching again when it returns",
            interface.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        diagnosis::diagnose,
        snapshot::{Rollup, tests::view},
        target::{Direction, Proto},
        verdict::Verdict,
    };

    #[test]
    fn plain_body_keeps_the_upstream_request_and_the_local_rules_apart() {
        let mut dns = view(Proto::Udp, "198.51.100.53", Some(53), Verdict::Blackholed);
        (dns.requests, dns.unanswered) = (3, 3);
        let mut ssh = view(Proto::Tcp, "203.0.113.9", Some(22), Verdict::Blackholed);
        ssh.direction = Direction::Ingress;
        (ssh.requests, ssh.unanswered) = (4, 4);
        let targets = vec![ssh, dns];
        let snapshot = Snapshot {
            rollups: Rollup::of(&targets),
            targets,
            ..Snapshot::default()
        };
        let sources = ["192.0.2.7".parse().unwrap()];
        let findings = diagnose(&snapshot, &sources, Duration::from_secs(3));
        let body = plain_body(&snapshot, &findings);
        let upstream = body.find("\nASK THE FIREWALL TEAM FOR\n").expect(&body);
        let local = body
            .find("\nON THIS HOST'S OWN FIREWALL (INBOUND)\n")
            .expect(&body);
        assert!(upstream < local, "{body}");
        assert!(body[upstream..local].contains("198.51.100.53"), "{body}");
        assert!(!body[upstream..local].contains("203.0.113.9"), "{body}");
        assert!(
            body[local..].contains("iptables -I INPUT -s 203.0.113.9 -p tcp --dport 22 -j ACCEPT"),
            "{body}"
        );
        assert!(body.contains("[inbound-blackholed] Inbound to this host: tcp/22"));
    }
}
