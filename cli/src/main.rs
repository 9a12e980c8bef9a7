//! The `chainiac` binary: everything is in the library (`chainiac::main`).

fn main() -> std::process::ExitCode {
    chainiac::main()
}
