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
//! `M_MMAP_THRESHOLD` = 32 MiB (smaller buffers come from the reusable heap)
//! and `M_TRIM_THRESHOLD` = 2³¹ − 1 (never give the heap top back). Peak
//! resident memory stays the high-water mark of one step; it just is not
//! returned between steps. `M_ARENA_MAX` = 1: every thread allocates from one
//! heap, so memory one worker freed is reused by the other instead of each
//! thread's arena keeping its own high-water mark (ResNet-20 training +
//! inference at 2 threads: max RSS 872 → 694 MiB, no measurable slowdown: a
//! step allocates a few hundred buffers, so the shared lock is rarely contended).

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
        const M_ARENA_MAX: c_int = -8;
        // SAFETY: mallopt only changes allocator parameters; every value is in range.
        unsafe {
            mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
                && mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
                && mallopt(M_ARENA_MAX, 1) == 1
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
