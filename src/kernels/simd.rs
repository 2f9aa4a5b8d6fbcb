//! The vector width, chosen at run time: the microkernels are written once,
//! generic over [`Vector`], and compiled for each instruction set.
//!
//! | vector            | lanes | registers | compiled for                           |
//! |-------------------|-------|-----------|----------------------------------------|
//! | `F32x8<16>`       | 8     | 16 ymm    | AVX2+FMA (the build's baseline)        |
//! | `F32x8<32>`       | 8     | 32 ymm    | AVX-512F+VL (narrow maps on AVX-512)   |
//! | `F32x16`          | 16    | 32 zmm    | AVX-512F                               |
//!
//! The build enables AVX2+FMA everywhere (`.cargo/config.toml`). AVX-512 code
//! is compiled only inside [`Vector::compiled`], a `#[target_feature]`
//! function that the kernels enter once per task, with the task's loops
//! inlined into it; it runs only where [`Isa::active`] says the CPU has
//! AVX-512F, so one binary runs on both kinds of CPU.
//!
//! `SBFNET_ISA=avx2|avx512` forces a path (for tests and side-by-side timing);
//! asking for AVX-512 on a CPU without it is an error ([`Isa::from_env`]).

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use wide::f32x8;

/// The instruction sets the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// 256-bit AVX2 + FMA, 16 vector registers.
    Avx2,
    /// 512-bit AVX-512F (with VL: 32 vector registers at either width).
    Avx512,
}

impl Isa {
    /// The instruction sets this CPU runs, narrowest first.
    pub fn available() -> Vec<Isa> {
        let mut isas = vec![Isa::Avx2];
        if Isa::Avx512.is_supported() {
            isas.push(Isa::Avx512);
        }
        isas
    }

    /// Whether this CPU runs it.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Avx2 => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 => false,
        }
    }

    /// Panics, naming `op`, unless this CPU runs it (the `_with` kernels' precondition).
    pub fn assert_supported(self, op: &str) {
        assert!(self.is_supported(), "{op}: this CPU does not run {}", self.name());
    }

    /// The widest instruction set this CPU runs.
    pub fn widest() -> Isa {
        *Isa::available().last().unwrap()
    }

    /// `SBFNET_ISA` (`avx2` or `avx512`), or the widest when it is unset.
    /// Errors name the variable: an unknown value, or AVX-512 on a CPU without it.
    pub fn from_env() -> crate::Result<Isa> {
        let Ok(value) = std::env::var("SBFNET_ISA") else {
            return Ok(Isa::widest());
        };
        let isa = match value.to_ascii_lowercase().as_str() {
            "avx2" => Isa::Avx2,
            "avx512" => Isa::Avx512,
            _ => {
                return Err(crate::Error::msg(format!(
                    "SBFNET_ISA={value:?}: expected avx2 or avx512"
                )))
            }
        };
        if !isa.is_supported() {
            return Err(crate::Error::msg(format!(
                "SBFNET_ISA={value}: this CPU has no AVX-512F+VL (it runs avx2)"
            )));
        }
        Ok(isa)
    }

    /// The instruction set the kernels use: [`Isa::from_env`], read once;
    /// where that is an error, the widest the CPU runs (the CLI reports the
    /// error before any kernel runs).
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| Isa::from_env().unwrap_or_else(|_| Isa::widest()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "AVX2+FMA",
            Isa::Avx512 => "AVX-512F",
        }
    }
}

/// The vector a kernel uses for rows of `columns` neighbouring pixels under
/// `isa`: on AVX-512, 16 lanes unless that pads the rows with more unused
/// lanes than 8 would (an 8-pixel row fills half a 16-lane vector), where
/// 8 lanes with AVX-512's 32 registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorKind {
    Avx2Lanes8,
    Avx512Lanes8,
    Avx512Lanes16,
}

impl VectorKind {
    pub fn for_columns(isa: Isa, columns: usize) -> VectorKind {
        match isa {
            Isa::Avx2 => VectorKind::Avx2Lanes8,
            Isa::Avx512 if columns.next_multiple_of(16) <= columns.next_multiple_of(8) => {
                VectorKind::Avx512Lanes16
            }
            Isa::Avx512 => VectorKind::Avx512Lanes8,
        }
    }
}

/// One vector register of f32 lanes and the operations the microkernels use.
///
/// Contract: a type compiled for AVX-512 ([`F32x8<32>`], [`F32x16`]) may only
/// be used on a CPU with AVX-512F+VL, inside [`Vector::compiled`]; the kernels
/// choose it only through [`VectorKind::for_columns`] of [`Isa::active`] (or
/// of an `Isa` checked with [`Isa::is_supported`]).
pub trait Vector: Copy + Send + Sync + 'static {
    /// f32 lanes of one vector.
    const LANES: usize;
    /// Vector registers the microkernel's register tile may plan for.
    const REGISTERS: usize;
    /// What the benchmarks print.
    const NAME: &'static str;
    fn zero() -> Self;
    fn splat(value: f32) -> Self;
    /// Unaligned load of `LANES` floats.
    ///
    /// # Safety
    /// `pointer .. pointer + LANES` must be readable.
    unsafe fn load(pointer: *const f32) -> Self;
    /// Unaligned store of `LANES` floats.
    ///
    /// # Safety
    /// `pointer .. pointer + LANES` must be writable.
    unsafe fn store(self, pointer: *mut f32);
    /// self · factor + addend, fused (one rounding).
    fn mul_add(self, factor: Self, addend: Self) -> Self;
    fn add(self, other: Self) -> Self;
    /// The sum of the lanes.
    fn reduce_add(self) -> f32;
    /// Runs `work` compiled for this vector's instruction set: every
    /// `#[inline(always)]` function it calls (the microkernels, these methods)
    /// is inlined into one function compiled with those features.
    fn compiled<R>(work: impl FnOnce() -> R) -> R;
}

/// The first `lanes` lanes of `vector`, as floats.
#[inline(always)]
pub fn lanes_of<V: Vector>(vector: V) -> [f32; 16] {
    let mut values = [0.0f32; 16];
    // SAFETY: LANES ≤ 16 floats are written into a 16-float array.
    unsafe { vector.store(values.as_mut_ptr()) };
    values
}

/// 8 lanes (256 bits). `REGISTERS` = 16 is compiled for AVX2+FMA, 32 with
/// AVX-512F+VL, whose 32 ymm registers hold larger register tiles.
#[derive(Clone, Copy, Debug)]
pub struct F32x8<const REGISTERS: usize>(f32x8);

impl<const REGISTERS: usize> Vector for F32x8<REGISTERS> {
    const LANES: usize = 8;
    const REGISTERS: usize = REGISTERS;
    const NAME: &'static str = if REGISTERS == 32 {
        "AVX-512VL, 8 lanes"
    } else {
        "AVX2+FMA, 8 lanes"
    };

    #[inline(always)]
    fn zero() -> Self {
        F32x8(f32x8::ZERO)
    }

    #[inline(always)]
    fn splat(value: f32) -> Self {
        F32x8(f32x8::splat(value))
    }

    #[inline(always)]
    unsafe fn load(pointer: *const f32) -> Self {
        F32x8((pointer as *const f32x8).read_unaligned())
    }

    #[inline(always)]
    unsafe fn store(self, pointer: *mut f32) {
        (pointer as *mut f32x8).write_unaligned(self.0)
    }

    #[inline(always)]
    fn mul_add(self, factor: Self, addend: Self) -> Self {
        F32x8(self.0.mul_add(factor.0, addend.0))
    }

    #[inline(always)]
    fn add(self, other: Self) -> Self {
        F32x8(self.0 + other.0)
    }

    #[inline(always)]
    fn reduce_add(self) -> f32 {
        self.0.reduce_add()
    }

    #[inline(always)]
    fn compiled<R>(work: impl FnOnce() -> R) -> R {
        if REGISTERS == 32 {
            // SAFETY: F32x8<32> is chosen only where the CPU has AVX-512F+VL (trait contract).
            unsafe { with_avx512(work) }
        } else {
            work()
        }
    }
}

/// 16 lanes (512 bits), AVX-512F.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub struct F32x16(__m512);

// SAFETY (every `unsafe` below): the intrinsics need AVX-512F, which the trait
// contract guarantees where an F32x16 exists; loads and stores as documented.
#[cfg(target_arch = "x86_64")]
impl Vector for F32x16 {
    const LANES: usize = 16;
    const REGISTERS: usize = 32;
    const NAME: &'static str = "AVX-512F, 16 lanes";

    #[inline(always)]
    fn zero() -> Self {
        F32x16(unsafe { _mm512_setzero_ps() })
    }

    #[inline(always)]
    fn splat(value: f32) -> Self {
        F32x16(unsafe { _mm512_set1_ps(value) })
    }

    #[inline(always)]
    unsafe fn load(pointer: *const f32) -> Self {
        F32x16(unsafe { _mm512_loadu_ps(pointer) })
    }

    #[inline(always)]
    unsafe fn store(self, pointer: *mut f32) {
        unsafe { _mm512_storeu_ps(pointer, self.0) }
    }

    #[inline(always)]
    fn mul_add(self, factor: Self, addend: Self) -> Self {
        F32x16(unsafe { _mm512_fmadd_ps(self.0, factor.0, addend.0) })
    }

    #[inline(always)]
    fn add(self, other: Self) -> Self {
        F32x16(unsafe { _mm512_add_ps(self.0, other.0) })
    }

    #[inline(always)]
    fn reduce_add(self) -> f32 {
        unsafe { _mm512_reduce_add_ps(self.0) }
    }

    #[inline(always)]
    fn compiled<R>(work: impl FnOnce() -> R) -> R {
        // SAFETY: F32x16 is chosen only where the CPU has AVX-512F+VL (trait contract).
        unsafe { with_avx512(work) }
    }
}

/// Runs `work` inside a function compiled with AVX-512F+VL, so that the
/// `#[inline(always)]` code it calls is compiled with them too.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn with_avx512<R>(work: impl FnOnce() -> R) -> R {
    work()
}

/// Elsewhere AVX-512 is never chosen ([`Isa::is_supported`]); these keep the
/// generic code compiling.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn with_avx512<R>(work: impl FnOnce() -> R) -> R {
    work()
}
#[cfg(not(target_arch = "x86_64"))]
pub type F32x16 = F32x8<32>;

/// Evaluates an expression with `V` the vector type of a [`VectorKind`]:
/// `with_vector!(kind, V => kernel::<V>(…))`.
macro_rules! with_vector {
    ($kind:expr, $v:ident => $body:expr) => {
        match $kind {
            $crate::kernels::simd::VectorKind::Avx2Lanes8 => {
                type $v = $crate::kernels::simd::F32x8<16>;
                $body
            }
            $crate::kernels::simd::VectorKind::Avx512Lanes8 => {
                type $v = $crate::kernels::simd::F32x8<32>;
                $body
            }
            $crate::kernels::simd::VectorKind::Avx512Lanes16 => {
                type $v = $crate::kernels::simd::F32x16;
                $body
            }
        }
    };
}
pub(crate) use with_vector;

/// FMA throughput of this thread with V: `steps` steps of 12 independent FMA
/// chains (24 with 32 registers: more than FMA latency × FMA units on every
/// CPU here); returns the FLOPs done. What `sbfnet bench` calls the peak.
pub fn fma_chains<V: Vector>(steps: usize) -> f64 {
    let chains = if V::REGISTERS >= 32 { 24 } else { 12 };
    V::compiled(
        #[inline(always)]
        || {
            let multiplier = V::splat(std::hint::black_box(0.999_999));
            let addend = V::splat(std::hint::black_box(1e-7));
            if chains == 24 {
                run_chains::<V, 24>(steps, multiplier, addend)
            } else {
                run_chains::<V, 12>(steps, multiplier, addend)
            }
        },
    );
    (steps * chains * V::LANES * 2) as f64
}

#[inline(always)]
fn run_chains<V: Vector, const CHAINS: usize>(steps: usize, multiplier: V, addend: V) {
    let mut chains = [V::splat(1.0); CHAINS];
    for _ in 0..std::hint::black_box(steps) {
        for chain in chains.iter_mut() {
            *chain = chain.mul_add(multiplier, addend);
        }
    }
    std::hint::black_box(lanes_of(
        chains.iter().fold(V::zero(), |sum, &chain| sum.add(chain)),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of V against scalar arithmetic (run for each V the CPU has).
    fn operations_match_scalars<V: Vector>() {
        V::compiled(
            #[inline(always)]
            || {
                let a: Vec<f32> = (0..V::LANES).map(|i| i as f32 * 0.5 - 2.0).collect();
                let b: Vec<f32> = (0..V::LANES).map(|i| 1.0 + (i as f32) * 0.25).collect();
                // SAFETY: a and b hold LANES floats.
                let (va, vb) = unsafe { (V::load(a.as_ptr()), V::load(b.as_ptr())) };
                let fused = lanes_of(va.mul_add(vb, V::splat(3.0)));
                let sum = lanes_of(va.add(vb));
                for i in 0..V::LANES {
                    assert_eq!(fused[i], a[i].mul_add(b[i], 3.0), "{} lane {i}", V::NAME);
                    assert_eq!(sum[i], a[i] + b[i], "{} lane {i}", V::NAME);
                }
                let expected: f32 = a.iter().sum();
                assert!((va.reduce_add() - expected).abs() < 1e-5, "{}", V::NAME);
                assert_eq!(lanes_of(V::zero())[..V::LANES], vec![0.0; V::LANES][..]);
            },
        )
    }

    #[test]
    fn every_vector_kind_computes_lane_by_lane() {
        for isa in Isa::available() {
            for columns in [8, 16] {
                with_vector!(VectorKind::for_columns(isa, columns), V => operations_match_scalars::<V>());
            }
        }
        if !Isa::Avx512.is_supported() {
            eprintln!("skipped: AVX-512 vectors (this CPU has no AVX-512F+VL)");
        }
    }

    #[test]
    fn avx512_uses_16_lanes_only_where_they_waste_no_more_lanes() {
        assert_eq!(VectorKind::for_columns(Isa::Avx2, 32), VectorKind::Avx2Lanes8);
        assert_eq!(
            VectorKind::for_columns(Isa::Avx512, 32),
            VectorKind::Avx512Lanes16
        );
        assert_eq!(
            VectorKind::for_columns(Isa::Avx512, 16),
            VectorKind::Avx512Lanes16
        );
        assert_eq!(
            VectorKind::for_columns(Isa::Avx512, 15),
            VectorKind::Avx512Lanes16
        );
        assert_eq!(VectorKind::for_columns(Isa::Avx512, 8), VectorKind::Avx512Lanes8);
        assert_eq!(VectorKind::for_columns(Isa::Avx512, 24), VectorKind::Avx512Lanes8);
    }

    #[test]
    fn fma_chains_count_their_flops() {
        // 12 chains of 8 lanes, 2 flops each: 192 per step.
        assert_eq!(fma_chains::<F32x8<16>>(100), 100.0 * 12.0 * 8.0 * 2.0);
    }
}
