//! The one `plateflow` command: running pipelines on this machine (an embedded coordinator
//! and local worker processes), serving a cluster's coordinator and workers, and the tools
//! around runs (demo data, doctor, lineage, run history and comparisons, progress display).
//! Built on the coordinator and worker crates; the engine itself knows nothing of it.

/// `print!` that ends the process quietly when stdout is closed (`plateflow runs … | head -1`),
/// as command-line tools do, instead of panicking with "failed printing to stdout".
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*), false) };
}

/// `println!` with the same behaviour as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*), true) };
}

pub mod cli;
pub mod demo;
pub mod doctor;
pub mod history;
pub mod lineage;
pub mod progress;

#[doc(hidden)]
pub fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|_| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|_| out.flush());
    match written {
        Ok(()) => {}
        // The reader went away: nothing more to say to anyone.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1)
        }
    }
}
