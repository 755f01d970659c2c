fn main() {
    std::process::exit(snapshot_scheduler::cli::main());
}
