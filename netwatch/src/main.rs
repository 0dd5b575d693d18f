//! The `netwatch` binary: parse, run, and turn every failure into one line and an exit code.

use std::process::ExitCode;

use clap::CommandFactory as _;
use netwatch::{
    cli::{self, Args, Parsed, Tool},
    exit,
};

/// Buffers of 256 KiB and more get pages of their own, returned when freed. A burst of
/// requests makes megabyte buffers for one poll (the requests that went unanswered, the
/// entries to remove); glibc's default raises its mmap threshold after the first such free
/// and puts later ones in the heap, where every burst left holes and the heap grew by a
/// megabyte or more per burst (the soak test's figures). Setting the threshold also turns that
/// adjustment off (mallopt(3)).
fn keep_large_buffers_out_of_the_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: only changes the allocator's parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

fn main() -> ExitCode {
    keep_large_buffers_out_of_the_heap();
    // The child netwatch starts to parse the kernel's BTF away from its own memory.
    if std::env::var_os(netwatch::btf::LAYOUT_CHILD_ENV).is_some() {
        return netwatch::btf::layout_child_main();
    }
    // A bug must not print a backtrace over the operator's terminal: one line, then the
    // unwinding drops the probe, which detaches everything.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!(
            "netwatch: internal error{}: {} (please report this)",
            location.unwrap_or_default(),
            one_line(&panic_message(info))
        );
    }));
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();

    let args = match cli::parse(std::env::args_os()) {
        Parsed::Run(args) => args,
        Parsed::Info(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Parsed::Usage(line) => {
            eprintln!("netwatch: error: {line}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if let Some(tool) = &args.command {
        return generate(tool);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("netwatch: error: could not start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(netwatch::app::run(*args)) {
        Ok(netwatch::app::Ending::Normal) => ExitCode::SUCCESS,
        Ok(netwatch::app::Ending::FailOnMatched) => ExitCode::from(exit::FAIL_ON_MATCHED),
        Err(err) => {
            eprintln!("netwatch: error: {}", one_line(&format!("{err:#}")));
            ExitCode::from(exit::status_of(&err))
        }
    }
}

/// Completions and the man page, from the same clap definition the parser uses.
fn generate(tool: &Tool) -> ExitCode {
    use std::io::Write as _;
    let mut text = Vec::new();
    match tool {
        Tool::Completions { shell } => {
            clap_complete::generate(*shell, &mut Args::command(), "netwatch", &mut text);
        }
        Tool::Man => {
            if let Err(err) = clap_mangen::Man::new(Args::command()).render(&mut text) {
                eprintln!("netwatch: error: rendering the man page: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    match std::io::stdout().write_all(&text) {
        // A reader that stops early (`| head`) is not an error.
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("netwatch: error: writing to stdout: {err}");
            ExitCode::FAILURE
        }
    }
}

fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    if let Some(text) = info.payload().downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = info.payload().downcast_ref::<String>() {
        text.clone()
    } else {
        "panic".to_owned()
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
