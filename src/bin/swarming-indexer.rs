//! swarming-indexer: collects results from every broker, publishes the
//! target list, and stores documents in Elasticsearch. See
//! swarming-indexer(8).

fn main() -> std::process::ExitCode {
    swarming::daemon::main::<swarming::indexer::Indexer>()
}
