//! Running commands with their output visible, failing with the command line on error.

use std::process::Command;

use anyhow::{Context as _, bail};

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `command`, inheriting stdio; an error when it fails.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not run `{}`", describe(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(command));
    }
    Ok(())
}

/// Runs `command` and returns its stdout.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    output_bytes(command).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs `command` and returns its stdout as it is (a compressed file, a man page).
pub fn output_bytes(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = command
        .output()
        .with_context(|| format!("could not run `{}`", describe(command)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(command),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}
