//! swarming-agent: pings the targets listed on `watch` and publishes the
//! results over MQTT. See swarming-agent(8).

fn main() -> std::process::ExitCode {
    swarming::daemon::main::<swarming::agent::Agent>()
}
