//! Ctrl-C: the first one asks the training loop to stop between two steps (so the run can
//! say how to resume); a second one ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The flag the first SIGINT sets.
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs the handler (once) and returns the flag it sets.
pub fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false))).clone();
    #[cfg(unix)]
    // SAFETY: installs a handler that only stores to an atomic and calls signal(), both
    // async-signal-safe.
    unsafe {
        signal(SIGINT, on_interrupt as extern "C" fn(c_int) as usize);
    }
    flag
}

/// Like [`stop_on_ctrl_c`], for SIGTERM too: mpirun turns a Ctrl-C into SIGTERM to every rank
/// (and SIGKILL a few seconds later).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub fn stop_on_signals() -> Arc<AtomicBool> {
    let flag = stop_on_ctrl_c();
    #[cfg(unix)]
    // SAFETY: as in stop_on_ctrl_c.
    unsafe {
        signal(SIGTERM, on_interrupt as extern "C" fn(c_int) as usize);
    }
    flag
}

#[cfg(unix)]
use std::ffi::c_int;

#[cfg(unix)]
extern "C" {
    /// The C library's `sighandler_t signal(int signum, sighandler_t handler)`.
    fn signal(signum: c_int, handler: usize) -> usize;
}

#[cfg(unix)]
const SIGINT: c_int = 2;
#[cfg(unix)]
const SIGTERM: c_int = 15;

#[cfg(unix)]
extern "C" fn on_interrupt(signum: c_int) {
    if let Some(flag) = STOP.get() {
        flag.store(true, Ordering::Relaxed);
    }
    const SIG_DFL: usize = 0;
    // SAFETY: signal() is async-signal-safe; the next such signal takes the default action.
    unsafe {
        signal(signum, SIG_DFL);
    }
}
