//! Process-wide settings made once, before any thread starts.
//!
//! glibc's malloc gives each thread that allocates its own arena, reserving 64 MiB of address
//! space per arena (128 MiB while it aligns the reservation). Under an address-space limit
//! (RLIMIT_AS) that reservation failed for a vCPU or the API thread just started, and the
//! allocation that followed failed too: Rust aborts on allocation failure, so Ember died with
//! SIGABRT and left its API socket. Ember's threads allocate little, so one arena serves them
//! all: address space then grows only with what is allocated, and running out of it shows up
//! where Ember can answer (guest memory, thread stacks) instead of as an abort. The unsafe here
//! wraps that one libc call; it lives outside `vstate/` because it concerns the host process.

/// Makes every thread allocate from the main malloc arena (glibc; other C libraries have no
/// per-thread arenas to limit).
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt changes an allocator tunable; called before any thread exists.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        if ok != 1 {
            log::debug!("mallopt(M_ARENA_MAX) failed; threads keep their own malloc arenas");
        }
    }
}
