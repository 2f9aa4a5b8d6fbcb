//! Benchmark helpers shared by `sbfnet bench` and the criterion benches:
//! timing with a steady state, and what the build runs on.

pub mod sbf;

use std::time::Instant;

pub mod conv;
pub mod train_step;

/// The vector instructions the kernels run: the instruction set chosen at run
/// time, what this CPU offers, and the build's baseline.
pub fn instruction_set() -> String {
    use crate::kernels::simd::Isa;
    let baseline = if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        "AVX2+FMA"
    } else {
        "no AVX2+FMA: build with .cargo/config.toml"
    };
    let available: Vec<&str> = Isa::available().into_iter().map(Isa::name).collect();
    format!(
        "{} (chosen at run time; this CPU runs {}; SBFNET_ISA=avx2|avx512 forces one; build baseline {baseline})",
        Isa::active().name(),
        available.join(", ")
    )
}

/// FP32 FMA throughput of every thread of `pool` at once with the widest
/// vector of `isa`, in GFLOP/s of the whole pool: the peak that `sbfnet bench`
/// divides by. It is also the vector peak the machine really gives that many
/// threads (a VM's cores may share a physical core or be throttled together):
/// the ceiling of any kernel's speed-up from 1 to that many threads.
pub fn fma_peak_gflops_on(pool: &rayon::ThreadPool, isa: crate::kernels::simd::Isa) -> f64 {
    use crate::kernels::simd::{fma_chains, F32x16, F32x8, Isa};
    isa.assert_supported("fma_peak_gflops_on");
    let steps = 20_000_000;
    let start = Instant::now();
    let flops: f64 = pool
        .broadcast(|_| match isa {
            Isa::Avx2 => fma_chains::<F32x8<16>>(steps),
            Isa::Avx512 => fma_chains::<F32x16>(steps / 2),
        })
        .into_iter()
        .sum();
    flops / start.elapsed().as_secs_f64() / 1e9
}

/// Median seconds per call of `f`, after `warmup` calls, over `reps` repetitions
/// that each last at least `min_seconds`.
pub fn median_seconds(mut f: impl FnMut(), warmup: usize, reps: usize, min_seconds: f64) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let start = Instant::now();
    f();
    let one = start.elapsed().as_secs_f64().max(1e-9);
    let calls = ((min_seconds / one).ceil() as usize).clamp(1, 1000);
    let samples = (0..reps.max(1))
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    median(samples)
}

/// The median of some samples (the upper one of an even count).
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// CPU seconds run so far by all threads of this process (Linux:
/// /proc/self/task/*/schedstat, nanoseconds). On a shared machine this, unlike
/// wall time, does not count the time other processes held the cores; with
/// one worker thread it is the kernel's own time. None where unavailable.
pub fn process_cpu_seconds() -> Option<f64> {
    let mut nanoseconds = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanoseconds += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(nanoseconds as f64 * 1e-9)
}

/// Like [`median_seconds`], in process CPU seconds per call ([`process_cpu_seconds`]).
pub fn median_cpu_seconds(mut f: impl FnMut(), warmup: usize, reps: usize, min_seconds: f64) -> f64 {
    let cpu = || process_cpu_seconds().unwrap_or(0.0);
    for _ in 0..warmup {
        f();
    }
    let start = cpu();
    f();
    let one = (cpu() - start).max(1e-6);
    let calls = ((min_seconds / one).ceil() as usize).clamp(1, 1000);
    let samples = (0..reps.max(1))
        .map(|_| {
            let start = cpu();
            for _ in 0..calls {
                f();
            }
            (cpu() - start) / calls as f64
        })
        .collect();
    median(samples)
}

/// The runs of the JSON written by ../shared/bench/torch_ref.py, one per thread count:
/// `{"runs": {"<threads>": {...}}}` → `[(threads, run)]`. Errors name the file.
pub fn read_torch_runs(path: &std::path::Path) -> crate::Result<Vec<(usize, serde_json::Value)>> {
    use crate::Error;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "reading", e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not JSON: {e}")))?;
    let runs = json
        .get("runs")
        .and_then(|runs| runs.as_object())
        .ok_or_else(|| Error::file(path, "no \"runs\" object (is it torch_ref.py's output?)"))?;
    runs.iter()
        .map(|(key, run)| {
            let threads = key
                .parse()
                .map_err(|_| Error::file(path, format!("run key {key:?} is not a thread count")))?;
            Ok((threads, run.clone()))
        })
        .collect()
}
