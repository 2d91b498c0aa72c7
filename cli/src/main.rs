use clap::Parser;

fn main() {
    // glibc gives each thread that allocates its own arena; for a coordinator holding many
    // small task records that fragments memory (about 110 MB more at 100,000 tasks).
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    plateflow_learn::quiet_candle_threads();
    let cli = plateflow::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PLATEFLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = match rt.block_on(plateflow::cli::main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // Do not wait for blocking tasks (hashing threads) at exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
