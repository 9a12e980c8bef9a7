//! `chainiac` for the end-to-end tests (`CARGO_BIN_EXE_chainiac-under-test`): the same
//! `chainiac::main` as the real binary.

fn main() -> std::process::ExitCode {
    chainiac::main()
}
