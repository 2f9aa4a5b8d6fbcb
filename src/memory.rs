//! Process-wide allocator tuning for training loops.
//!
//! A training step allocates and frees the same few hundred buffers (activations,
//! gradients) every step. With glibc's default settings, buffers above the mmap
//! threshold are mapped fresh and unmapped on free, and the heap top is trimmed
//! back to the kernel: the next step page-faults all of that memory in again,
//! which is expensive in this project's VMs (up to 5× slower steps; see
//! ../shared/bench/README.md, "A trap on this machine"). PyTorch's reference
//! script sets the same two options.
//!
//! `retain_freed_memory` keeps freed memory in the process instead:
//! `M_MMAP_THRESHOLD` = 32 MiB (smaller buffers come from the reusable heap),
//! `M_MMAP_MAX` = 0 (larger ones too: glibc caps the threshold at 32 MiB, and
//! airbench94 at batch 1024 frees and maps anew activations of 128 MiB every
//! step: page faults, page clearing and TLB shootdowns took 17 % of its step;
//! with the cap lifted it ran 162–166 img/s against 136–140, the same peak
//! memory) and `M_TRIM_THRESHOLD` = 2³¹ − 1 (never give the heap top back). Peak
//! resident memory stays the high-water mark of one step; it just is not
//! returned between steps. `M_ARENA_MAX` = one heap per 4 cores (1 on this
//! project's 2-core VM): threads share heaps, so memory one worker freed is
//! reused by another instead of each thread's arena keeping its own high-water
//! mark (ResNet-20 training + inference at 2 threads, one heap instead of
//! glibc's default of one per thread: max RSS 872 → 694 MiB, no measurable
//! slowdown). Each heap has one lock, though, and on 16 cores one heap for all
//! threads cost 17–25 % of the training step's speed (`bench-train --threads
//! 16`: 1371 and 1425 img/s with 1 heap, 1642 and 1900 with 4, 1546 and 1889
//! with 16; README, "Beyond 2 cores"). A `MALLOC_ARENA_MAX` set in the
//! environment wins over this setting (glibc reads it at start-up; this leaves
//! it alone), and so does a `MALLOC_MMAP_MAX_`.

/// Cores that share one malloc heap (see the module doc).
pub const CORES_PER_HEAP: usize = 4;

/// Asks glibc to keep freed memory for reuse (see the module doc). Returns
/// false where that is not possible (another C library, or glibc refused).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            /// glibc's `int mallopt(int param, int value)`: 1 on success.
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        const M_MMAP_MAX: c_int = -4;
        const M_ARENA_MAX: c_int = -8;
        let arena_from_environment = std::env::var_os("MALLOC_ARENA_MAX").is_some();
        let mmap_from_environment = std::env::var_os("MALLOC_MMAP_MAX_").is_some();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let heaps = cores.div_ceil(CORES_PER_HEAP) as c_int;
        // SAFETY: mallopt only changes allocator parameters; every value is in range.
        unsafe {
            mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
                && mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
                && (mmap_from_environment || mallopt(M_MMAP_MAX, 0) == 1)
                && (arena_from_environment || mallopt(M_ARENA_MAX, heaps) == 1)
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::retain_freed_memory());
    }
}
