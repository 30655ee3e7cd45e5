//! Giving memory back after the heavy phases.
//!
//! Reading, compiling and loading a rule set allocate far more than the daemon keeps: the TOML
//! document with the position of every value, the compiled tables before they are written to
//! the maps, the kernel's BTF read for the structure offsets. glibc keeps what is freed in its
//! heaps for later allocations, so without a trim the daemon would stay at the peak of its
//! last load for good (measured: 64 MiB resident for a workstation's five rules, 11 MiB after
//! the trim). The trim runs after the start and after each control request, reload and
//! rollback, never per packet event: it walks the heap, which costs well under a millisecond.

/// Returns the heap's free pages to the kernel.
pub(super) fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only gives free pages back.
    unsafe {
        libc::malloc_trim(0);
    }
}
