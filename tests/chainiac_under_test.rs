//! `chainiac` for the end-to-end tests (`CARGO_BIN_EXE_chainiac-under-test`): the same
//! `chainiac::main` as the real binary, with the witness's fail points armed from
//! `FAILPOINTS` (`name=action;…`, fail-rs syntax) for the crash tests. Only this binary
//! reads that variable: a build that compiles the fail points in (any build of the whole
//! workspace, by feature unification) leaves them unarmed in `chainiac`.

fn main() -> std::process::ExitCode {
    let _fail_points = fail::FailScenario::setup();
    chainiac::main()
}
