//! Compiles the in-sandbox agent (`agent/src/main.rs`, std only) into a
//! static binary with a bare `rustc`, so that the `carapace` binary carries
//! the built-in image's agent and needs no second build step or network.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let source = manifest.join("agent/src/main.rs");
    println!("cargo:rerun-if-changed={}", source.display());
    for module in ["protocol.rs", "chat.rs", "http.rs", "json.rs"] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest.join("agent/src").join(module).display()
        );
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").unwrap_or_default();
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-name",
            "carapace_agent",
            "--crate-type",
            "bin",
        ])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "--target", &target])
        .arg("-o")
        .arg(out.join("carapace-agent"))
        .arg(&source)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("compiling the sandbox agent failed: {s}"),
        Err(e) => panic!("cannot run rustc for the sandbox agent: {e}"),
    }
}
