//! `carapace-sandbox-helper`: the container helper as a binary of its own
//! (the `carapace` binary offers the same as `carapace sandbox-helper`).

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    std::process::exit(carapace_runtime::sandbox::helper::main(&args));
}
