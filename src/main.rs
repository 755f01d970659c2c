fn main() {
    // Every command, before anything is opened; `run` logs a failure.
    let _ = snapshot_scheduler::daemon::raise_open_files_limit();
    std::process::exit(snapshot_scheduler::cli::main());
}
