//! The process's memory, as gauges on the admin `/metrics`: jemalloc's own
//! figures (the binary allocates with it, see `main.rs`) and the resident
//! set. Read when `/metrics` is scraped, so they cost nothing in between.
//! The admin `/memory` shows jemalloc's full statistics (live allocations
//! per size class among them).

use tikv_jemalloc_ctl::{epoch, stats, stats_print};

/// Reads one of jemalloc's statistics.
type Read = fn() -> tikv_jemalloc_ctl::Result<usize>;

/// jemalloc's statistics, each with its gauge and description.
const ALLOCATOR: [(&str, &str, Read); 5] = [
    (
        "meshgate_memory_allocated_bytes",
        "Bytes the process holds in live allocations (jemalloc stats.allocated)",
        stats::allocated::read,
    ),
    (
        "meshgate_memory_active_bytes",
        "Bytes in the allocator's pages that hold live allocations (jemalloc stats.active)",
        stats::active::read,
    ),
    (
        "meshgate_memory_resident_bytes",
        "Bytes of the allocator in physical memory, its metadata and freed pages not yet returned included (jemalloc stats.resident)",
        stats::resident::read,
    ),
    (
        "meshgate_memory_metadata_bytes",
        "Bytes of the allocator's own metadata (jemalloc stats.metadata)",
        stats::metadata::read,
    ),
    (
        "meshgate_memory_retained_bytes",
        "Address space the allocator keeps mapped but returned to the system, not in physical memory (jemalloc stats.retained)",
        stats::retained::read,
    ),
];

/// The whole process's resident set (code pages of the binary included).
const PROCESS_RESIDENT: &str = "process_resident_memory_bytes";

/// Describes the gauges (once, with the other metrics).
pub fn describe() {
    for (name, help, _) in ALLOCATOR {
        metrics::describe_gauge!(name, help);
    }
    metrics::describe_gauge!(PROCESS_RESIDENT, "Resident memory of the process (VmRSS)");
}

/// Sets the gauges to the current figures; a figure that cannot be read is
/// left out rather than reported as 0.
pub fn record() {
    // jemalloc caches its statistics until the epoch advances.
    if epoch::advance().is_ok() {
        for (name, _, read) in ALLOCATOR {
            if let Ok(bytes) = read() {
                metrics::gauge!(name).set(bytes as f64);
            }
        }
    }
    if let Some(bytes) = process_resident() {
        metrics::gauge!(PROCESS_RESIDENT).set(bytes as f64);
    }
}

/// jemalloc's statistics as text (`malloc_stats_print`), arenas merged.
pub fn report() -> String {
    let mut options = stats_print::Options::default();
    options.skip_per_arena = true;
    options.skip_mutex_statistics = true;
    let mut out = Vec::new();
    match stats_print::stats_print(&mut out, options) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(e) => format!("jemalloc statistics unavailable: {e}\n"),
    }
}

/// Resident bytes from `/proc/self/status` (`VmRSS`, in KiB).
fn process_resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_resident_set_is_read() {
        let bytes = process_resident().expect("statm");
        assert!(bytes > 1 << 20, "{bytes}");
    }

    #[test]
    fn the_allocator_statistics_are_read() {
        // Unit tests run on the system allocator; jemalloc still answers
        // (its own metadata at least), which is what the binary relies on.
        epoch::advance().expect("epoch");
        for (name, _, read) in ALLOCATOR {
            read().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(stats::metadata::read().expect("metadata") > 0);
    }

    #[test]
    fn the_report_lists_the_size_classes() {
        let report = report();
        assert!(report.contains("bins:"), "{report}");
    }
}
