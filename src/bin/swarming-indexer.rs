//! swarming-indexer: collects results from every broker, publishes the
//! target list, and stores documents in Elasticsearch. See
//! swarming-indexer(8).

fn main() -> std::process::ExitCode {
    // `--gen-watch-key FILE` is a one-off command, not a daemon run.
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = swarming::watch_sign::gen_key_command(&args) {
        return code;
    }
    swarming::daemon::main::<swarming::indexer::Indexer>()
}
