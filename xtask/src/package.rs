//! `cargo xtask package`: netwatch as a Debian package, `target/debian/netwatch_VERSION_ARCH.deb`.
//!
//! Debian's own tools do the packaging: `dpkg-shlibdeps` finds the libraries the binary
//! needs, `dpkg-gencontrol` writes the control file (the version from the changelog, the
//! installed size from the tree), `dpkg-deb` builds the archive and `lintian` checks it (an
//! error fails the build). xtask lays out the tree: the release binary (its eBPF programs
//! are inside it), the systemd unit, the man page and shell completions the binary writes
//! itself, and `deploy/`'s Prometheus rules and Grafana dashboard under `/usr/share/netwatch`.
//! The control template, the copyright file and the maintainer scripts are in
//! `deploy/debian/`.

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{cmd, say, setup};

/// What building and checking the package needs on the host.
pub const PACKAGE_TOOLS: &[setup::Package] = &[
    setup::Package {
        name: "dpkg-dev",
        provides: "/usr/bin/dpkg-gencontrol",
        why: "the package's control file and library dependencies (dpkg-gencontrol, dpkg-shlibdeps)",
    },
    setup::Package {
        name: "binutils",
        provides: "/usr/bin/strip",
        why: "stripping the packaged binary",
    },
    setup::Package {
        name: "lintian",
        provides: "/usr/bin/lintian",
        why: "checking the Debian package against Debian's policy",
    },
];

/// The package's name, as `deploy/debian/control` has it.
pub const NAME: &str = "netwatch";

/// Where the installed binary is: the unit's `ExecStart=` and the README name it.
pub const BINARY: &str = "/usr/bin/netwatch";

/// A file of the package: where it goes (relative to `/`), its mode, what it holds.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    path: String,
    mode: u32,
    content: Content,
}

#[derive(Debug, PartialEq, Eq)]
enum Content {
    /// A file of the workspace, or the built binary, copied as it is.
    Copy(PathBuf),
    /// Written by the binary (the man page, completions) or by xtask (the changelog).
    Bytes(Vec<u8>),
}

/// Files of the workspace installed as they are: (source, destination).
const FROM_WORKSPACE: &[(&str, &str)] = &[
    (
        "deploy/systemd/netwatch.service",
        "lib/systemd/system/netwatch.service",
    ),
    (
        "deploy/prometheus/netwatch-alerts.yml",
        "usr/share/netwatch/prometheus/netwatch-alerts.yml",
    ),
    (
        "deploy/prometheus/netwatch-alerts.test.yml",
        "usr/share/netwatch/prometheus/netwatch-alerts.test.yml",
    ),
    (
        "deploy/grafana/netwatch-dashboard.json",
        "usr/share/netwatch/grafana/netwatch-dashboard.json",
    ),
    (
        "deploy/debian/copyright",
        "usr/share/doc/netwatch/copyright",
    ),
];

/// Shell completions, `netwatch completions SHELL`, where each shell looks for them.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/netwatch"),
    ("zsh", "usr/share/zsh/vendor-completions/_netwatch"),
    ("fish", "usr/share/fish/vendor_completions.d/netwatch.fish"),
];

/// Maintainer scripts in `deploy/debian/`: the unit's enablement state and a stop on removal.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// What the binary writes about itself, gzipped where Debian wants it so.
struct Generated {
    man: Vec<u8>,
    completions: Vec<(&'static str, Vec<u8>)>,
}

/// Every file of the package but the control area.
fn entries(root: &Path, binary: &Path, generated: Generated, changelog_gz: Vec<u8>) -> Vec<Entry> {
    let mut entries = vec![Entry {
        path: BINARY.trim_start_matches('/').to_owned(),
        mode: 0o755,
        content: Content::Copy(binary.to_owned()),
    }];
    entries.extend(FROM_WORKSPACE.iter().map(|(from, to)| Entry {
        path: (*to).to_owned(),
        mode: 0o644,
        content: Content::Copy(root.join(from)),
    }));
    entries.push(Entry {
        path: "usr/share/man/man1/netwatch.1.gz".to_owned(),
        mode: 0o644,
        content: Content::Bytes(generated.man),
    });
    for (shell, text) in generated.completions {
        let (_, path) = COMPLETIONS
            .iter()
            .find(|(s, _)| *s == shell)
            .expect("a shell of COMPLETIONS");
        entries.push(Entry {
            path: (*path).to_owned(),
            mode: 0o644,
            content: Content::Bytes(text),
        });
    }
    entries.push(Entry {
        path: "usr/share/doc/netwatch/changelog.gz".to_owned(),
        mode: 0o644,
        content: Content::Bytes(changelog_gz),
    });
    entries
}

/// The one entry of the (native) package's changelog: this version, built from `commit`.
fn changelog(version: &str, maintainer: &str, commit: &str, date_rfc2822: &str) -> String {
    format!(
        "{NAME} ({version}) unstable; urgency=medium\n\n  \
         * Built by cargo xtask package from commit {commit}.\n\n \
         -- {maintainer}  {date_rfc2822}\n"
    )
}

/// The `Maintainer:` of a control file.
fn maintainer(control: &str) -> Option<&str> {
    control
        .lines()
        .find_map(|line| line.strip_prefix("Maintainer:"))
        .map(str::trim)
}

/// `netwatch_VERSION_ARCH.deb`.
fn deb_name(version: &str, arch: &str) -> String {
    format!("{NAME}_{version}_{arch}.deb")
}

/// Builds the package from `binary` (the release build) and checks it with lintian; returns
/// the `.deb`.
pub fn build(root: &Path, binary: &Path) -> anyhow::Result<PathBuf> {
    setup::ensure_packages(PACKAGE_TOOLS)?;
    let version = env!("CARGO_PKG_VERSION");
    let out = root.join("target/debian");
    // dpkg-gencontrol and dpkg-shlibdeps work in a source tree: `debian/control`,
    // `debian/changelog`, the package's root in `debian/netwatch`.
    let work = out.join("build");
    let _ = fs::remove_dir_all(&work);
    let debian = work.join("debian");
    let package_root = debian.join(NAME);
    fs::create_dir_all(package_root.join("DEBIAN"))?;

    let control = fs::read_to_string(root.join("deploy/debian/control"))
        .context("reading deploy/debian/control")?;
    let maintainer = maintainer(&control).context("deploy/debian/control has no Maintainer")?;
    let (commit, epoch) = commit_and_time(root)?;
    let date = cmd::output(Command::new("date").args(["-u", "-R", "-d", &format!("@{epoch}")]))?;
    let changelog = changelog(version, maintainer, &commit, date.trim());
    fs::write(debian.join("control"), &control)?;
    fs::write(debian.join("changelog"), &changelog)?;

    say("writing the man page and shell completions (from the binary itself)");
    let generated = Generated {
        man: gzip(&cmd::output_bytes(Command::new(binary).arg("man"))?)?,
        completions: COMPLETIONS
            .iter()
            .map(|(shell, _)| {
                cmd::output_bytes(Command::new(binary).args(["completions", shell]))
                    .map(|text| (*shell, text))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    for entry in entries(root, binary, generated, gzip(changelog.as_bytes())?) {
        let path = package_root.join(&entry.path);
        fs::create_dir_all(path.parent().expect("a file in a directory"))?;
        match entry.content {
            Content::Copy(from) => fs::copy(&from, &path)
                .with_context(|| format!("copying {} into the package", from.display()))
                .map(drop)?,
            Content::Bytes(bytes) => fs::write(&path, bytes)?,
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(entry.mode))?;
    }
    let installed = BINARY.trim_start_matches('/');
    // As dh_strip does: the symbols go, the embedded eBPF object is data and stays.
    cmd::run(
        Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
            ])
            .arg(package_root.join(installed)),
    )?;
    for script in SCRIPTS {
        let path = package_root.join("DEBIAN").join(script);
        fs::copy(root.join("deploy/debian").join(script), &path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    set_directory_modes(&package_root)?;

    // Relative paths: dpkg-shlibdeps finds the package's root from them.
    cmd::run(
        Command::new("dpkg-shlibdeps")
            .arg("-Tdebian/substvars")
            .arg(format!("debian/{NAME}/{installed}"))
            .current_dir(&work),
    )?;
    cmd::run(
        Command::new("dpkg-gencontrol")
            .arg(format!("-p{NAME}"))
            .arg(format!("-Pdebian/{NAME}"))
            .arg("-fdebian/files")
            .arg("-Tdebian/substvars")
            .current_dir(&work),
    )?;
    write_md5sums(&package_root)?;

    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))?;
    let deb = out.join(deb_name(version, arch.trim()));
    let _ = fs::remove_file(&deb);
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&package_root)
            .arg(&deb)
            // File times from the commit: the same commit gives the same archive.
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    say(&format!("lintian {}", deb.display()));
    cmd::run(
        Command::new("lintian")
            .args([
                "--fail-on",
                "error",
                "--display-info",
                "--tag-display-limit",
                "0",
            ])
            .arg(&deb),
    )
    .context("lintian found errors in the package")?;
    say(&format!("built {}", deb.display()));
    Ok(deb)
}

/// The commit the package is built from (`+dirty` with local changes) and its time.
fn commit_and_time(root: &Path) -> anyhow::Result<(String, u64)> {
    let git = |args: &[&str]| {
        cmd::output(Command::new("git").args(args).current_dir(root)).map(|s| s.trim().to_owned())
    };
    let mut commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    if !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        commit.push_str("+dirty");
    }
    let epoch = git(&["log", "-1", "--format=%ct"])?
        .parse()
        .context("git log printed no commit time")?;
    Ok((commit, epoch))
}

/// `gzip -9n`: no name or time in the header, as Debian wants (reproducible).
fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("could not run gzip")?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = bytes.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer.join().expect("the writer does not panic")?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// Directories 0755 whatever the umask.
fn set_directory_modes(dir: &Path) -> anyhow::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_directory_modes(&entry.path())?;
        }
    }
    Ok(())
}

/// `DEBIAN/md5sums`: every file outside the control area, as `md5sum` prints it.
fn write_md5sums(package_root: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    collect_files(package_root, package_root, &mut files)?;
    files.sort();
    let mut command = Command::new("md5sum");
    command.arg("--").args(&files).current_dir(package_root);
    let sums = cmd::output(&mut command)?;
    let mut text = String::new();
    for line in sums.lines() {
        writeln!(text, "{line}")?;
    }
    fs::write(package_root.join("DEBIAN/md5sums"), text)?;
    fs::set_permissions(
        package_root.join("DEBIAN/md5sums"),
        fs::Permissions::from_mode(0o644),
    )?;
    Ok(())
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let relative = path.strip_prefix(root)?.to_owned();
        if relative.starts_with("DEBIAN") {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            out.push(relative);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_holds_binary_unit_docs_completions_and_the_deploy_files() {
        let generated = Generated {
            man: b"man".to_vec(),
            completions: COMPLETIONS
                .iter()
                .map(|(shell, _)| (*shell, shell.as_bytes().to_vec()))
                .collect(),
        };
        let root = Path::new("/ws");
        let entries = entries(
            root,
            Path::new("/ws/target/release/netwatch"),
            generated,
            vec![],
        );
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        for wanted in [
            "usr/bin/netwatch",
            "lib/systemd/system/netwatch.service",
            "usr/share/man/man1/netwatch.1.gz",
            "usr/share/bash-completion/completions/netwatch",
            "usr/share/zsh/vendor-completions/_netwatch",
            "usr/share/fish/vendor_completions.d/netwatch.fish",
            "usr/share/netwatch/prometheus/netwatch-alerts.yml",
            "usr/share/netwatch/grafana/netwatch-dashboard.json",
            "usr/share/doc/netwatch/copyright",
            "usr/share/doc/netwatch/changelog.gz",
        ] {
            assert!(paths.contains(&wanted), "{wanted} missing from {paths:?}");
        }
        let binary = &entries[0];
        assert_eq!(binary.mode, 0o755);
        assert!(entries[1..].iter().all(|e| e.mode == 0o644));
        let zsh = entries
            .iter()
            .find(|e| e.path.ends_with("_netwatch"))
            .unwrap();
        assert_eq!(zsh.content, Content::Bytes(b"zsh".to_vec()));
    }

    #[test]
    fn every_workspace_file_of_the_package_exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for (from, _) in FROM_WORKSPACE {
            assert!(root.join(from).is_file(), "{from}");
        }
        for script in SCRIPTS {
            assert!(
                root.join("deploy/debian").join(script).is_file(),
                "{script}"
            );
        }
    }

    #[test]
    fn the_unit_the_package_and_the_readmes_agree_on_the_command() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let unit = fs::read_to_string(root.join("deploy/systemd/netwatch.service")).unwrap();
        let exec: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("ExecStart="))
            .collect();
        assert_eq!(exec.len(), 1, "{exec:?}");
        assert!(exec[0].starts_with(&format!("{BINARY} ")), "{exec:?}");
        // Markdown wraps lines: compare with the whitespace folded.
        for readme in ["README.md", "deploy/README.md"] {
            let text = fs::read_to_string(root.join(readme)).unwrap();
            let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                folded.contains(&format!("`{}`", exec[0])),
                "{readme} does not quote the unit's command `{}`",
                exec[0]
            );
        }
    }

    #[test]
    fn changelog_is_one_debian_entry() {
        let text = changelog(
            "0.1.0",
            "netwatch maintainers <netwatch@example.invalid>",
            "abc123",
            "Sat, 06 Dec 2025 08:59:00 +0000",
        );
        assert_eq!(
            text,
            "netwatch (0.1.0) unstable; urgency=medium\n\n  \
             * Built by cargo xtask package from commit abc123.\n\n \
             -- netwatch maintainers <netwatch@example.invalid>  Sat, 06 Dec 2025 08:59:00 +0000\n"
        );
        assert_eq!(
            maintainer("Source: x\nMaintainer: A <a@b>\n"),
            Some("A <a@b>")
        );
        assert_eq!(deb_name("0.1.0", "amd64"), "netwatch_0.1.0_amd64.deb");
    }
}
