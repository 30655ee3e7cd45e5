//! Giving memory back after the heavy phases.
//!
//! Reading, compiling and loading a rule set allocate far more than the daemon keeps: the TOML
//! document with the position of every value, the compiled tables before they are written to
//! the maps, the kernel's BTF read for the structure offsets. glibc keeps what is freed in its
//! heaps for later allocations, so without a trim the daemon would stay at the peak of its
//! last load for good (measured: 64 MiB resident for a workstation's five rules, 11 MiB after
//! the trim). The trim runs after the start and after each control request, reload and
//! rollback, never per packet event: it walks the heap, which costs well under a millisecond.
//!
//! What the daemon keeps must not be many small blocks either: those freed around them by a
//! load are holes glibc can neither give back nor fill well, and each later load slows as the
//! heap fragments. A rule's name, ports, networks and remote entries are stored inline
//! (`rules::model::Text`, `Ports`, `Nets`): at 100,000 rules, resident 57 -> 44 MiB after the
//! start and 82-84 -> 57 MiB after ten reloads, which took 0.81-1.08 s each, later ones
//! slower, and now 0.74-0.83 s.
//!
//! The daemon's threads share one heap ([`one_heap`]): a reload builds part of the new
//! generation on a second thread, and glibc gives each thread an arena of its own whose live
//! blocks (that thread's share of the rule names and the outbound generation) pin pages the
//! trim cannot return. Measured at 100,000 rules after two reloads: 102 MiB resident with the
//! second arena, 81 MiB without. Allocation is no hot path here: the datapath is in the kernel.

/// Makes every thread allocate from the main heap; called before any thread starts.
pub(super) fn one_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning; M_ARENA_MAX is a valid parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the heap's free pages to the kernel.
pub(super) fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only gives free pages back.
    unsafe {
        libc::malloc_trim(0);
    }
}
