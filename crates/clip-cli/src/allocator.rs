//! Process-wide allocator policy for tensor work on the CPU.
//!
//! Flex allocates a fresh buffer for most tensor results, many of them megabytes large. glibc
//! serves those with `mmap` and returns them to the kernel on `free`, so every training step
//! pays page faults to get the same memory back (about a third of a step of the seed model at
//! 64² on 2 cores, BENCHMARKS.md). Keeping freed memory in the process, as PyTorch's caching
//! allocator does, removes that cost for a few percent more peak memory.

/// Keeps freed memory in the heap for reuse: no `mmap` per large block, no trimming.
/// Set `CLIP_MALLOC=default` to leave glibc's policy alone.
pub fn keep_freed_memory() {
    if std::env::var("CLIP_MALLOC").is_ok_and(|v| v == "default") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
