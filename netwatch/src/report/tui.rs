//! The full-screen live view: targets (worst first) with their recent history, this host's
//! ruleset changes marked on the same time axis, the per-port rollup, the diagnosis and the
//! firewall request, and a status line. Drawing is a pure function of [`UiState`] and
//! [`Screen`], so tests render it into ratatui's `TestBackend`.

use std::{cmp::Ordering, fmt::Write as _};

use ratatui::{
    Frame,
    crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap},
};

use super::{RunInfo, short_duration};
use crate::{
    diagnosis::{Finding, render_local_rules, render_requests},
    snapshot::{Rollup, RulesetMark, Snapshot, TargetView},
    timeline::{self, Outcome},
    verdict::Verdict,
};

/// Ruleset changes listed under the targets, at most.
const RULESET_LINES: usize = 3;
/// Columns the targets table needs besides HISTORY and REASON (borders and gaps included).
const OTHER_COLUMNS: u16 = 117;
/// REASON keeps this much before HISTORY gets any.
const REASON_MIN: u16 = 30;
/// HISTORY narrower than this is left out.
const HISTORY_MIN: usize = 8;

/// How many intervals of history fit beside the other columns (the most recent ones), 0 when
/// too few fit to be worth showing.
fn history_width(width: u16) -> usize {
    let room = usize::from(width.saturating_sub(OTHER_COLUMNS + REASON_MIN));
    match room.min(timeline::SLOTS) {
        n if n < HISTORY_MIN => 0,
        n => n,
    }
}

/// What the view shows, as of the last poll.
pub struct Screen<'a> {
    pub snapshot: &'a Snapshot,
    pub run: &'a RunInfo,
    pub findings: &'a [Finding],
}

/// Orders the targets table can be sorted in (`s` cycles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    WorstFirst,
    Remote,
    Port,
    MostRequests,
    MostRecent,
}

impl SortOrder {
    const fn next(self) -> Self {
        match self {
            Self::WorstFirst => Self::Remote,
            Self::Remote => Self::Port,
            Self::Port => Self::MostRequests,
            Self::MostRequests => Self::MostRecent,
            Self::MostRecent => Self::WorstFirst,
        }
    }

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::WorstFirst => "worst first",
            Self::Remote => "remote",
            Self::Port => "port",
            Self::MostRequests => "most requests",
            Self::MostRecent => "most recent",
        }
    }

    fn compare(self, a: &TargetView, b: &TargetView) -> Ordering {
        match self {
            Self::WorstFirst => TargetView::worst_first(a, b),
            Self::Remote => (a.remote, a.direction, a.proto, a.port).cmp(&(
                b.remote,
                b.direction,
                b.proto,
                b.port,
            )),
            Self::Port => (a.port, a.direction, a.proto, a.remote).cmp(&(
                b.port,
                b.direction,
                b.proto,
                b.remote,
            )),
            Self::MostRequests => b
                .requests
                .cmp(&a.requests)
                .then_with(|| TargetView::worst_first(a, b)),
            Self::MostRecent => a
                .last_seen_ago_s
                .unwrap_or(f64::MAX)
                .total_cmp(&b.last_seen_ago_s.unwrap_or(f64::MAX))
                .then_with(|| TargetView::worst_first(a, b)),
        }
    }
}

/// The view's own state: everything the keys change.
#[derive(Debug, Default)]
pub struct UiState {
    pub scroll: usize,
    pub sort: SortOrder,
    pub filter: String,
    pub editing_filter: bool,
    pub paused: bool,
    pub help: bool,
}

/// What a key press asks of the run loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Redraw,
    Quit,
}

/// Applies one key press.
pub fn handle_key(state: &mut UiState, key: KeyEvent) -> Action {
    if key.kind == KeyEventKind::Release {
        return Action::Nothing;
    }
    // Raw mode turns Ctrl-C into a key: it still quits.
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    if state.editing_filter {
        match key.code {
            KeyCode::Enter => state.editing_filter = false,
            KeyCode::Esc => {
                state.editing_filter = false;
                state.filter.clear();
            }
            KeyCode::Backspace => {
                state.filter.pop();
            }
            KeyCode::Char(c) if !c.is_control() && state.filter.len() < 64 => state.filter.push(c),
            _ => return Action::Nothing,
        }
        state.scroll = 0;
        return Action::Redraw;
    }
    if state.help {
        state.help = false;
        return if key.code == KeyCode::Char('q') {
            Action::Quit
        } else {
            Action::Redraw
        };
    }
    match key.code {
        KeyCode::Char('q') => return Action::Quit,
        KeyCode::Down | KeyCode::Char('j') => state.scroll = state.scroll.saturating_add(1),
        KeyCode::Up | KeyCode::Char('k') => state.scroll = state.scroll.saturating_sub(1),
        KeyCode::PageDown => state.scroll = state.scroll.saturating_add(10),
        KeyCode::PageUp => state.scroll = state.scroll.saturating_sub(10),
        KeyCode::Home | KeyCode::Char('g') => state.scroll = 0,
        KeyCode::Char('s') => {
            state.sort = state.sort.next();
            state.scroll = 0;
        }
        KeyCode::Char('/') => state.editing_filter = true,
        KeyCode::Esc => state.filter.clear(),
        KeyCode::Char('p' | ' ') => state.paused = !state.paused,
        KeyCode::Char('?' | 'h') => state.help = true,
        _ => return Action::Nothing,
    }
    Action::Redraw
}

fn verdict_style(verdict: Verdict) -> Style {
    let color = match verdict {
        Verdict::Blackholed => Color::Red,
        Verdict::Rejected => Color::Magenta,
        Verdict::Degraded => Color::Yellow,
        Verdict::Pending => Color::Blue,
        Verdict::Ok => Color::Green,
    };
    let style = Style::default().fg(color);
    if verdict == Verdict::Ok {
        style
    } else {
        style.add_modifier(Modifier::BOLD)
    }
}

fn matches_filter(target: &TargetView, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let mut text = format!(
        "{} {} {} {} {} {}",
        target.direction.as_str(),
        target.proto,
        target.remote,
        target.port.map_or_else(String::new, |p| p.to_string()),
        target.verdict,
        target.reason.unwrap_or_default()
    );
    for name in target.names.iter().flatten() {
        let _ = write!(text, " {name}");
    }
    for process in &target.processes {
        let _ = write!(text, " {} {}", process.comm, process.cgroup);
    }
    text.to_lowercase().contains(&filter.to_lowercase())
}

fn ms(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(ms) if ms < 1.0 => format!("{:.0}µs", ms * 1000.0),
        Some(ms) if ms < 1000.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{:.1}s", ms / 1000.0),
    }
}

fn ago(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_owned(),
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "display"
        )]
        Some(s) => format!(
            "{} ago",
            short_duration(std::time::Duration::from_millis((s * 1000.0) as u64))
        ),
    }
}

/// The status line shown at the top.
#[must_use]
pub fn status_text(screen: &Screen<'_>, state: &UiState) -> String {
    let interfaces: Vec<String> = screen
        .run
        .interfaces
        .iter()
        .map(super::WatchedInterface::label)
        .collect();
    let kernel = &screen.snapshot.kernel;
    let other_losses: u64 = kernel
        .counters
        .iter()
        .filter(|(name, _)| {
            [
                "malformed",
                "short_icmp_quote",
                "ipv6_extension_limit",
                "vlan_tag_limit",
            ]
            .contains(name)
        })
        .map(|(_, v)| v)
        .sum();
    let mut text = format!(
        " netwatch │ {} │ up {} │ {:.1} req/s │ in flight {} │ evictions {} │ unparsed {} │ timeout {} window {}",
        interfaces.join(", "),
        short_duration(screen.run.uptime),
        screen.snapshot.requests_per_s,
        screen.snapshot.in_flight,
        kernel.lost_requests,
        other_losses,
        short_duration(screen.run.timeout),
        short_duration(screen.run.window),
    );
    if state.paused {
        text.push_str(" │ PAUSED");
    }
    text
}

/// Draws the whole view.
pub fn draw(frame: &mut Frame<'_>, state: &UiState, screen: &Screen<'_>) {
    let area = frame.area();
    // Room for the rollup and for the diagnosis (about two lines a finding, then the request
    // table and the local rules), within half the screen.
    let section = |text: String| match text.lines().count() {
        0 => 0,
        rows => rows + 2,
    };
    let diagnosis_lines = (screen.findings.len() * 2
        + section(render_requests(screen.findings))
        + section(render_local_rules(screen.findings)))
    .max(1);
    let bottom_height = u16::try_from(screen.snapshot.rollups.len().max(diagnosis_lines))
        .unwrap_or(u16::MAX)
        .saturating_add(2)
        .clamp(5, (area.height / 2).max(5));
    let ruleset_height = match screen.snapshot.ruleset.len().min(RULESET_LINES) {
        0 => 0,
        lines => u16::try_from(lines).unwrap_or(0) + 2,
    };
    let [status, targets, ruleset, bottom, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(ruleset_height),
        Constraint::Length(bottom_height),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_ruleset(frame, ruleset, &screen.snapshot.ruleset);
    frame.render_widget(
        Paragraph::new(status_text(screen, state))
            .style(Style::default().add_modifier(Modifier::REVERSED)),
        status,
    );
    draw_targets(frame, targets, state, screen.snapshot);
    let [rollup, diagnosis] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(bottom);
    draw_rollups(frame, rollup, &screen.snapshot.rollups);
    draw_diagnosis(frame, diagnosis, screen.findings);
    let hint = if state.editing_filter {
        format!(" filter: {}▏  (Enter keep, Esc clear)", state.filter)
    } else {
        " q quit  ↑↓/jk scroll  s sort  / filter  p pause  ? help".to_owned()
    };
    frame.render_widget(Paragraph::new(hint), keys);
    if state.help {
        draw_help(frame, area);
    }
}

fn draw_targets(frame: &mut Frame<'_>, area: Rect, state: &UiState, snapshot: &Snapshot) {
    let mut targets: Vec<&TargetView> = snapshot
        .targets
        .iter()
        .filter(|t| matches_filter(t, &state.filter))
        .collect();
    targets.sort_by(|a, b| state.sort.compare(a, b));
    let shown = history_width(area.width);
    let mut title = format!(
        " Targets ({}) · sort: {} ",
        targets.len(),
        state.sort.label()
    );
    if shown > 0 {
        let seconds = shown as u64 * timeline::SLOT_NS / 1_000_000_000;
        let _ = write!(
            title,
            "· history: the last {seconds} s, ▼ this host's ruleset changed "
        );
    }
    if !state.filter.is_empty() {
        let _ = write!(title, "· filter: {} ", state.filter);
    }
    let block = Block::default().borders(Borders::ALL).title(title);
    if snapshot.targets.is_empty() {
        frame.render_widget(
            Paragraph::new(
                "No requests seen yet. DNS queries, TCP connection attempts and pings leaving the \
                 watched interfaces, and those arriving for this host, appear here as they \
                 happen.",
            )
            .wrap(Wrap { trim: true })
            .block(block),
            area,
        );
        return;
    }
    let visible = usize::from(area.height.saturating_sub(3));
    let scroll = state
        .scroll
        .min(targets.len().saturating_sub(visible.max(1)));
    let header = Row::new(
        [
            "VERDICT",
            "DIR",
            "PROTO",
            "REMOTE",
            "PORT",
            "REQ",
            "ANS",
            "REJ",
            "UNANS",
            "p50",
            "p99",
            "LAST SEEN",
            "WHO",
        ]
        .into_iter()
        .map(Cell::from)
        .chain([
            Cell::from(axis(&snapshot.ruleset, shown)),
            Cell::from("REASON / UNANSWERED NAMES"),
        ]),
    )
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = targets.iter().skip(scroll).map(|t| {
        let detail = super::detail(t);
        Row::new([
            Cell::from(t.verdict.as_str()).style(verdict_style(t.verdict)),
            Cell::from(t.direction.short()),
            Cell::from(t.proto.as_str()),
            Cell::from(t.remote.to_string()),
            Cell::from(t.port.map_or_else(|| "-".to_owned(), |p| p.to_string())),
            Cell::from(t.requests.to_string()),
            Cell::from(t.answered.to_string()),
            Cell::from(t.rejected.to_string()),
            Cell::from(t.unanswered.to_string()),
            Cell::from(ms(t.latency_p50_ms)),
            Cell::from(ms(t.latency_p99_ms)),
            Cell::from(ago(t.last_seen_ago_s)),
            Cell::from(super::table::who_cell(t, 16)),
            Cell::from(history(&t.timeline, &snapshot.ruleset, shown)),
            Cell::from(detail),
        ])
    });
    let widths = target_widths(&targets, shown);
    frame.render_widget(Table::new(rows, widths).header(header).block(block), area);
}

/// The positions of ruleset changes among the last `shown` intervals.
fn shown_marks(marks: &[RulesetMark], shown: usize) -> Vec<usize> {
    marks
        .iter()
        .filter_map(|m| m.position)
        .filter_map(|p| p.checked_sub(timeline::SLOTS - shown))
        .collect()
}

/// The HISTORY header over the last `shown` intervals: `▼` where the ruleset changed, the
/// column's name elsewhere.
fn axis(marks: &[RulesetMark], shown: usize) -> Line<'static> {
    let mut cells: Vec<char> = format!("{:·<shown$}", "HISTORY")
        .chars()
        .take(shown)
        .collect();
    for position in shown_marks(marks, shown) {
        if let Some(cell) = cells.get_mut(position) {
            *cell = '▼';
        }
    }
    Line::from(
        cells
            .into_iter()
            .map(|c| {
                let style = if c == '▼' {
                    Style::default().fg(Color::Cyan)
                } else {
                    Style::default()
                };
                Span::styled(c.to_string(), style)
            })
            .collect::<Vec<_>>(),
    )
}

/// One character per interval of the last `shown`: `▁` answered, `█` failed, `▄` both, `┊`
/// a ruleset change with nothing else.
fn history(cells: &[Outcome], marks: &[RulesetMark], shown: usize) -> Line<'static> {
    let marked = shown_marks(marks, shown);
    Line::from(
        cells
            .iter()
            .skip(cells.len().saturating_sub(shown))
            .enumerate()
            .map(|(i, cell)| {
                let (glyph, color) = match cell {
                    Outcome::Answered => ("▁", Color::Green),
                    Outcome::Failed => ("█", Color::Red),
                    Outcome::Both => ("▄", Color::Yellow),
                    Outcome::Quiet if marked.contains(&i) => ("┊", Color::Cyan),
                    Outcome::Quiet => (" ", Color::Reset),
                };
                Span::styled(glyph, Style::default().fg(color))
            })
            .collect::<Vec<_>>(),
    )
}

/// The latest ruleset changes, newest last.
fn draw_ruleset(frame: &mut Frame<'_>, area: Rect, marks: &[RulesetMark]) {
    if area.height == 0 {
        return;
    }
    let lines: Vec<Line<'_>> = marks
        .iter()
        .skip(marks.len().saturating_sub(RULESET_LINES))
        .map(|mark| {
            let time = humantime::format_rfc3339_seconds(mark.at).to_string();
            Line::from(vec![
                Span::styled(
                    format!("▼ {} ", time.get(11..19).unwrap_or(&time)),
                    Style::default().fg(Color::Cyan),
                ),
                Span::raw(format!("generation {}: {}", mark.generation, mark.what)),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" This host's ruleset changes "),
        ),
        area,
    );
}

/// Column widths of the targets table; REMOTE fits the longest address shown.
fn target_widths(targets: &[&TargetView], history: usize) -> [Constraint; 15] {
    [
        Constraint::Length(10),
        Constraint::Length(3),
        Constraint::Length(6),
        Constraint::Length(
            u16::try_from(
                targets
                    .iter()
                    .map(|t| t.remote.to_string().len())
                    .max()
                    .unwrap_or(6),
            )
            .unwrap_or(39)
            .max(6),
        ),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(16),
        Constraint::Length(u16::try_from(history).unwrap_or(0)),
        Constraint::Min(10),
    ]
}

fn draw_rollups(frame: &mut Frame<'_>, area: Rect, rollups: &[Rollup]) {
    let rows = rollups.iter().map(|r| {
        let remotes = super::remotes_label(r);
        Row::new([
            Cell::from(r.service().to_string()),
            Cell::from(format!("{}/{} answered", r.answered, r.requests)),
            Cell::from(remotes),
            Cell::from(r.verdict.as_str()).style(verdict_style(r.verdict)),
            Cell::from(if r.verdict == Verdict::Ok {
                ""
            } else {
                r.reason.unwrap_or_default()
            }),
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Length(16),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Min(5),
    ];
    frame.render_widget(
        Table::new(rows, widths).block(Block::default().borders(Borders::ALL).title(" Per port ")),
        area,
    );
}

fn draw_diagnosis(frame: &mut Frame<'_>, area: Rect, findings: &[Finding]) {
    let mut lines: Vec<Line<'_>> = Vec::new();
    if findings.is_empty() {
        lines.push(Line::from("Nothing wrong seen yet."));
    }
    for finding in findings {
        let style = Style::default().add_modifier(Modifier::BOLD);
        lines.push(Line::from(vec![
            Span::styled(format!("• [{}] ", finding.finding), style),
            Span::raw(finding.summary.clone()),
        ]));
    }
    let requests = render_requests(findings);
    if !requests.trim().is_empty() {
        lines.push(Line::from(""));
        lines.push(Line::from(Span::styled(
            "Ask the firewall team for:",
            Style::default().add_modifier(Modifier::BOLD),
        )));
        lines.extend(requests.lines().map(|line| Line::from(line.to_owned())));
    }
    let local = render_local_rules(findings);
    if !local.is_empty() {
        lines.push(Line::from(""));
        lines.push(Line::from(Span::styled(
            "On this host's own firewall (inbound):",
            Style::default().add_modifier(Modifier::BOLD),
        )));
        lines.extend(local.lines().map(|line| Line::from(line.to_owned())));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" Diagnosis ")),
        area,
    );
}

const HELP: &str = "\
netwatch watches the requests this host sends (DIR out: DNS queries, TCP SYNs, pings)
and those it receives (DIR in: REMOTE is the peer that asked, PORT this host's port),
and what answers them.

  ok          every recent request was answered
  blackholed  unanswered: nothing came back (out) or nothing left this host (in)
  rejected    refused by a TCP reset or an ICMP unreachable (see REASON)
  degraded    some answered, some not
  pending     seen, not resolved yet

WHO: the unit (payments.service), container or process (comm) behind the requests this
host sent, +N for others. Empty for forwarded traffic, kernel sockets and inbound
requests; a query through a local stub resolver (systemd-resolved, dnsmasq, nscd) names
the resolver. Sockets older than netwatch: TCP and UDP only, via sock_diag and /proc.

Keys: q quit · ↑/↓ or j/k scroll · PgUp/PgDn · s cycle sort · / filter (Esc clears)
      p pause the display (counting goes on) · ? this help

Press any key to close.";

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    let width = area.width.saturating_sub(4).min(90);
    let height = area.height.saturating_sub(2).min(23);
    let popup = Rect {
        x: area.x + (area.width.saturating_sub(width)) / 2,
        y: area.y + (area.height.saturating_sub(height)) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(HELP)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" Help ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ratatui::{Terminal, backend::TestBackend, crossterm::event::KeyEvent};

    use super::*;
    use crate::{
        report::WatchedInterface,
        snapshot::tests::view,
        target::{Direction, Proto},
    };

    fn screen_text(state: &UiState, snapshot: &Snapshot, findings: &[Finding]) -> String {
        let run = RunInfo {
            interfaces: vec![WatchedInterface {
                name: "eth0".into(),
                kind: "ethernet",
                attach: "tcx",
                state: crate::interfaces::LinkState::Up,
            }],
            uptime: Duration::from_secs(83),
            timeout: Duration::from_secs(3),
            window: Duration::from_mins(1),
            local_drops: "available".to_owned(),
            attribution: "available".to_owned(),
            path_mtu: "available".to_owned(),
            fragments: "available".to_owned(),
            ruleset: "followed".to_owned(),
            trace_rules: "off".to_owned(),
        };
        let mut terminal = Terminal::new(TestBackend::new(160, 30)).unwrap();
        terminal
            .draw(|frame| {
                draw(
                    frame,
                    state,
                    &Screen {
                        snapshot,
                        run: &run,
                        findings,
                    },
                );
            })
            .unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn snapshot() -> Snapshot {
        let mut dns = view(Proto::Udp, "198.51.100.53", Some(53), Verdict::Blackholed);
        dns.requests = 14;
        dns.unanswered = 14;
        dns.names = Some(vec!["chat.example.com".into()]);
        let mut rejected = view(Proto::Tcp, "198.51.100.10", Some(8443), Verdict::Rejected);
        rejected.rejected = 3;
        rejected.requests = 3;
        rejected.reason = Some("icmp-host-prohibited");
        let mut ok = view(Proto::Tcp, "198.51.100.10", Some(443), Verdict::Ok);
        ok.requests = 20;
        ok.answered = 20;
        ok.latency_p50_ms = Some(1.5);
        let targets = vec![dns, rejected, ok];
        Snapshot {
            rollups: Rollup::of(&targets),
            targets,
            ..Snapshot::default()
        }
    }

    #[test]
    fn shows_targets_rollups_and_status() {
        let text = screen_text(&UiState::default(), &snapshot(), &[]);
        assert!(text.contains("eth0 (ethernet, tcx)"), "{text}");
        assert!(text.contains("up 1m23s"), "{text}");
        let dns_row = text
            .lines()
            .find(|l| l.contains("198.51.100.53"))
            .expect("dns row");
        assert!(
            dns_row.contains("blackholed") && dns_row.contains("chat.example.com"),
            "{dns_row}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("8443") && l.contains("icmp-host-prohibited"))
        );
        assert!(
            text.contains("UDP/53") && text.contains("0/14 answered"),
            "{text}"
        );
        assert!(text.contains("1.5ms"), "{text}");
        assert!(text.contains("Nothing wrong seen yet"), "{text}");
        assert!(text.contains("q quit"), "{text}");
        // Worst first: the blackholed row comes before the ok one.
        let position = |needle: &str| text.find(needle).unwrap();
        assert!(position("198.51.100.53") < position(" 443 "));
    }

    #[test]
    fn inbound_targets_show_in_beside_outbound_ones() {
        let mut snapshot = snapshot();
        let mut ssh = view(Proto::Tcp, "203.0.113.9", Some(22), Verdict::Blackholed);
        ssh.direction = Direction::Ingress;
        (ssh.requests, ssh.unanswered) = (4, 4);
        snapshot.targets.push(ssh);
        snapshot.targets.sort_by(TargetView::worst_first);
        snapshot.rollups = Rollup::of(&snapshot.targets);
        let mut findings = crate::diagnosis::diagnose(&snapshot, &[], Duration::from_secs(3));
        findings.retain(|f| f.finding == crate::diagnosis::INBOUND_BLACKHOLED);
        let text = screen_text(&UiState::default(), &snapshot, &findings);
        let row = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in {text}"))
                .to_owned()
        };
        let header = row("VERDICT");
        assert!(header.contains("DIR"), "{header}");
        let dir_column = header.find("DIR").unwrap();
        let inbound = row("203.0.113.9");
        assert_eq!(&inbound[dir_column..dir_column + 3], "in ", "{inbound}");
        let outbound = row("198.51.100.53");
        assert_eq!(&outbound[dir_column..dir_column + 3], "out", "{outbound}");
        assert!(
            text.contains("TCP/22 in") && text.contains("1 peer"),
            "{text}"
        );
        assert!(text.contains("[inbound-blackholed]"), "{text}");
        assert!(
            text.contains("On this host's own firewall (inbound):"),
            "{text}"
        );
        assert!(
            text.contains("nft insert rule inet filter input ip saddr 203.0.113.9 tcp dport 22"),
            "{text}"
        );
        // The filter knows the direction.
        let state = UiState {
            filter: "ingress".to_owned(),
            ..UiState::default()
        };
        let text = screen_text(&state, &snapshot, &[]);
        assert!(
            text.contains("203.0.113.9") && !text.contains("198.51.100.53"),
            "{text}"
        );
    }

    #[test]
    fn keys_scroll_sort_filter_pause_and_quit() {
        let key = |code| KeyEvent::new(code, KeyModifiers::NONE);
        let mut state = UiState::default();
        assert_eq!(
            handle_key(&mut state, key(KeyCode::Char('j'))),
            Action::Redraw
        );
        assert_eq!(state.scroll, 1);
        handle_key(&mut state, key(KeyCode::Up));
        handle_key(&mut state, key(KeyCode::Up));
        assert_eq!(state.scroll, 0);
        handle_key(&mut state, key(KeyCode::Char('s')));
        assert_eq!(state.sort, SortOrder::Remote);
        handle_key(&mut state, key(KeyCode::Char('p')));
        assert!(state.paused);
        handle_key(&mut state, key(KeyCode::Char('/')));
        for c in "8443".chars() {
            handle_key(&mut state, key(KeyCode::Char(c)));
        }
        handle_key(&mut state, key(KeyCode::Enter));
        assert_eq!(state.filter, "8443");
        let text = screen_text(&state, &snapshot(), &[]);
        assert!(
            text.contains("8443") && !text.contains("198.51.100.53"),
            "{text}"
        );
        assert!(text.contains("PAUSED"));
        handle_key(&mut state, key(KeyCode::Char('?')));
        let help = screen_text(&state, &snapshot(), &[]);
        assert!(help.contains("nothing left this host (in)"), "{help}");
        assert!(help.contains("Press any key to close"), "{help}");
        assert_eq!(
            handle_key(&mut state, key(KeyCode::Char('x'))),
            Action::Redraw,
            "closes help"
        );
        assert_eq!(
            handle_key(&mut state, key(KeyCode::Char('q'))),
            Action::Quit
        );
        assert_eq!(
            handle_key(
                &mut state,
                KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
            ),
            Action::Quit
        );
    }

    #[test]
    fn history_shows_answers_then_failures_under_the_ruleset_change() {
        let mut snapshot = snapshot();
        let mut cells = [Outcome::Quiet; timeline::SLOTS];
        cells[10..20].fill(Outcome::Answered);
        cells[21..].fill(Outcome::Failed);
        let dns = snapshot
            .targets
            .iter_mut()
            .find(|t| t.port == Some(53))
            .unwrap();
        dns.timeline = cells;
        snapshot.ruleset = vec![RulesetMark {
            generation: 42,
            at: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(36_153),
            position: Some(20),
            what: "rule added to inet host output: `udp dport 53 drop`".into(),
        }];
        let text = screen_text(&UiState::default(), &snapshot, &[]);
        let header = text.lines().find(|l| l.contains("VERDICT")).unwrap();
        let marker = header.chars().position(|c| c == '▼').expect(header);
        let row: Vec<char> = text
            .lines()
            .find(|l| l.contains("198.51.100.53"))
            .unwrap()
            .chars()
            .collect();
        assert_eq!(row[marker], '┊', "{text}");
        assert_eq!(row[marker - 1], '▁', "answered before: {text}");
        assert_eq!(row[marker + 1], '█', "failed after: {text}");
        assert!(
            text.contains("▼ 10:02:33 generation 42: rule added to inet host output"),
            "{text}"
        );
        assert!(text.contains("▼ this host's ruleset changed"), "{text}");
    }

    #[test]
    fn empty_view_says_what_will_appear() {
        let text = screen_text(&UiState::default(), &Snapshot::default(), &[]);
        assert!(text.contains("No requests seen yet"), "{text}");
    }
}
