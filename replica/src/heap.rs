//! How a replica process's memory is backed: 4 KiB pages, not transparent
//! huge pages.
//!
//! mimalloc asks the kernel for transparent huge pages on its arenas
//! (`madvise(MADV_HUGEPAGE)`, which Debian's default "madvise" THP mode
//! honours). The first write to each 2 MiB page then zeroes all of it
//! inside one fault, and on this VM such faults cost more than the 4 KiB
//! ones they replace (256 MiB touched: 163–780 ms against 109–134 ms). In
//! the first seconds of load, when a replica's heap is first touched,
//! rounds that met them took 30 to 160 ms. `vend-replica` turns THP off
//! for itself at start (`PR_SET_THP_DISABLE`, which covers every mapping
//! of the process, mimalloc's and RocksDB's alike). Alternated pairs
//! (BENCHMARKS.md, stop 26): at 20,000 events/s the ack p99 of a fresh
//! cluster went from 17–89 ms to 5–8 ms (four pairs of five; the fifth met
//! a 95 ms fsync on all three replicas at once), and saturated throughput
//! rose by a fifth at 16% less CPU per event.

/// Turn transparent huge pages off for this process (and the children it
/// would start). Linux only; elsewhere there is nothing to turn off.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only
        // this process's flag.
        let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_runs_without_transparent_huge_pages() {
        super::disable_transparent_huge_pages().unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        match status.lines().find(|line| line.starts_with("THP_enabled:")) {
            Some(line) => assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}"),
            None => eprintln!("skipped: this kernel does not report THP_enabled"),
        }
    }
}
