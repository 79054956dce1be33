//! swarming-agent: pings the targets listed on `watch` and publishes the
//! results over MQTT. See swarming-agent(8).

fn main() -> std::process::ExitCode {
    if swarming::agent::once::requested() {
        return swarming::agent::once::main();
    }
    swarming::daemon::main::<swarming::agent::Agent>()
}
