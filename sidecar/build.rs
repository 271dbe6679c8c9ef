//! Release builds link the functions a sidecar runs next to each other.
//!
//! The sidecar's resident memory is mostly its code pages, and the kernel
//! maps code around each page that faults in, so code that runs scattered
//! among code that never does keeps both resident. `link/symbol-order.txt`
//! lists the functions a release meshgate runs (written by
//! `test-harness/bench/symbol_order.py`), hottest first; lld lays them out
//! first. It only moves functions: names it does not find are skipped, so a
//! stale list costs memory, never correctness.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("link")
        .join("symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=MESHGATE_NO_SYMBOL_ORDER");
    if env::var("PROFILE").as_deref() != Ok("release")
        || env::var_os("MESHGATE_NO_SYMBOL_ORDER").is_some()
        || !links_with_rust_lld()
    {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=meshgate=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=meshgate=-Wl,--no-warn-symbol-ordering");
}

/// Whether the binary is linked by the toolchain's own lld, the default for
/// x86_64-unknown-linux-gnu since Rust 1.90; GNU ld and gold do not take a
/// symbol ordering file.
fn links_with_rust_lld() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker-features")
        || flags.contains("link-self-contained")
        || flags.contains("fuse-ld")
    {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-V").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
