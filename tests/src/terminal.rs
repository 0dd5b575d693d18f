//! A real terminal for the live view: a tmux server of the test's own (its socket name is
//! unique), one session running the command, read with `capture-pane` and typed into with
//! `send-keys`. The server is killed when the test ends, however it ends.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static SERVERS: AtomicU32 = AtomicU32::new(0);

/// One tmux server with one session, `nw`.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a `width` × `height` terminal.
    #[must_use]
    pub fn start(command: &str, width: u16, height: u16) -> Self {
        let tmux = Self {
            socket: format!(
                "netwatch-test-{}-{}",
                std::process::id(),
                SERVERS.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let (width, height) = (width.to_string(), height.to_string());
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "nw",
            "-x",
            &width,
            "-y",
            &height,
            command,
        ]);
        tmux
    }

    /// What the terminal shows now.
    #[must_use]
    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "nw"])
    }

    /// Types `keys` (tmux key names: `q`, `Enter`, `Escape`).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "nw"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}
