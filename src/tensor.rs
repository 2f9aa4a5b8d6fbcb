//! `Tensor`: a shape plus a contiguous, row-major `Vec<f32>`.
//!
//! Images are NCHW: `x[n, c, h, w]` lives at `((n * C + c) * H + h) * W + w`.
//! Nothing here knows about gradients; the tape (`crate::autograd`) does.

use rand::Rng;
use rayon::prelude::*;

/// Values per parallel task of elementwise loops over activations (64 KiB of f32:
/// big enough that a rayon task costs little beside it, small enough to split
/// a [128, 16, 32, 32] activation into 128 tasks).
pub const PARALLEL_CHUNK: usize = 1 << 14;
use rand_distr_free::standard_normal;

/// A dense f32 tensor, row-major (the last index varies fastest).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// A tensor filled with `value`.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: vec![value; shape.iter().product()],
        }
    }

    /// A tensor whose planes of `plane` values (the last one may be shorter)
    /// are written in parallel, plane p from `values(p)`: every value is
    /// written once, with no zero fill first (a zero fill costs as much as the
    /// writes of a cheap elementwise op). Panics if an iterator runs short.
    pub fn from_planes<I>(shape: &[usize], plane: usize, values: impl Fn(usize) -> I + Sync) -> Tensor
    where
        I: Iterator<Item = f32>,
    {
        let len: usize = shape.iter().product();
        let mut data: Vec<f32> = Vec::with_capacity(len);
        data.spare_capacity_mut()[..len]
            .par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(p, slots)| {
                let mut written = 0;
                for (slot, value) in slots.iter_mut().zip(values(p)) {
                    slot.write(value);
                    written += 1;
                }
                assert_eq!(written, slots.len(), "from_planes: plane {p} ran short");
            });
        // SAFETY: the loop above initialised all `len` slots, each plane
        // checked that it wrote every one of its own (or panicked first).
        unsafe { data.set_len(len) };
        Tensor {
            shape: shape.to_vec(),
            data,
        }
    }

    /// Wraps `data`; panics if its length does not match `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Tensor {
        let expected: usize = shape.iter().product();
        assert_eq!(
            data.len(),
            expected,
            "Tensor::from_vec: shape {shape:?} needs {expected} values, got {}",
            data.len()
        );
        Tensor {
            shape: shape.to_vec(),
            data,
        }
    }

    /// Uniform values in `[low, high)`.
    pub fn uniform(shape: &[usize], low: f32, high: f32, rng: &mut impl Rng) -> Tensor {
        let data = (0..shape.iter().product::<usize>())
            .map(|_| rng.gen_range(low..high))
            .collect();
        Tensor::from_vec(shape, data)
    }

    /// Normal values with the given standard deviation (mean 0).
    pub fn normal(shape: &[usize], std: f32, rng: &mut impl Rng) -> Tensor {
        let data = (0..shape.iter().product::<usize>())
            .map(|_| std * standard_normal(rng))
            .collect();
        Tensor::from_vec(shape, data)
    }

    /// Kaiming (He) normal initialisation for a weight whose first axis is the
    /// output and whose other axes make up the fan-in: std = sqrt(2 / fan_in).
    pub fn kaiming_normal(shape: &[usize], rng: &mut impl Rng) -> Tensor {
        let fan_in: usize = shape[1..].iter().product();
        Tensor::normal(shape, (2.0 / fan_in.max(1) as f32).sqrt(), rng)
    }

    /// Kaiming uniform with bound sqrt(6 / fan_in) (same variance as `kaiming_normal`).
    pub fn kaiming_uniform(shape: &[usize], rng: &mut impl Rng) -> Tensor {
        let fan_in: usize = shape[1..].iter().product();
        let bound = (6.0 / fan_in.max(1) as f32).sqrt();
        Tensor::uniform(shape, -bound, bound, rng)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Size of axis `axis` (panics with the shape if out of range).
    pub fn dim(&self, axis: usize) -> usize {
        *self
            .shape
            .get(axis)
            .unwrap_or_else(|| panic!("tensor of shape {:?} has no axis {axis}", self.shape))
    }

    /// The 4 sizes of an NCHW tensor; panics naming `op` if the rank is not 4.
    pub fn nchw(&self, op: &str) -> [usize; 4] {
        match self.shape[..] {
            [n, c, h, w] => [n, c, h, w],
            _ => panic!("{op}: expected a 4-d NCHW tensor, got shape {:?}", self.shape),
        }
    }

    /// Same data, new shape with the same number of elements.
    pub fn reshape(mut self, shape: &[usize]) -> Tensor {
        let expected: usize = shape.iter().product();
        assert_eq!(
            expected,
            self.data.len(),
            "reshape: cannot view shape {:?} as {shape:?}",
            self.shape
        );
        self.shape = shape.to_vec();
        self
    }

    pub fn sum(&self) -> f32 {
        self.data.iter().sum()
    }

    /// Largest absolute value (0 for an empty tensor).
    pub fn max_abs(&self) -> f32 {
        self.data.iter().fold(0.0f32, |m, v| m.max(v.abs()))
    }

    /// `self += other`, elementwise; panics naming both shapes on mismatch.
    /// Chunks of [`PARALLEL_CHUNK`] values run in parallel (the same sum per element).
    pub fn add_assign(&mut self, other: &Tensor) {
        assert_eq!(
            self.shape, other.shape,
            "add_assign: shapes {:?} and {:?} differ",
            self.shape, other.shape
        );
        self.data
            .par_chunks_mut(PARALLEL_CHUNK)
            .zip(other.data.par_chunks(PARALLEL_CHUNK))
            .for_each(|(a, b)| {
                for (a, b) in a.iter_mut().zip(b) {
                    *a += b;
                }
            });
    }

    /// True if every value is finite (no NaN, no ±inf).
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
}

/// Largest elementwise difference `|a - b| / (atol + rtol·|b|)`; ≤ 1 means "close".
/// Used by tests that compare a fast kernel with its naive oracle.
pub fn max_scaled_difference(a: &[f32], b: &[f32], rtol: f32, atol: f32) -> f32 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (atol + rtol * y.abs()))
        .fold(0.0, f32::max)
}

/// A standard normal sample without pulling in `rand_distr` (Box–Muller).
mod rand_distr_free {
    use rand::Rng;
    pub fn standard_normal(rng: &mut impl Rng) -> f32 {
        let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
        let u2: f32 = rng.gen::<f32>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn seeded_initialisers_are_reproducible_and_scaled() {
        let mut a = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = rand::rngs::StdRng::seed_from_u64(7);
        let x = Tensor::kaiming_normal(&[64, 32, 3, 3], &mut a);
        let y = Tensor::kaiming_normal(&[64, 32, 3, 3], &mut b);
        assert_eq!(x, y);
        let var = x.data.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let expected = 2.0 / (32.0 * 9.0);
        assert!(
            (var / expected - 1.0).abs() < 0.05,
            "variance {var} vs {expected}"
        );
    }

    #[test]
    fn from_planes_writes_every_plane_in_place() {
        // 3 planes of 4 values, the last one short (10 values in all)
        let t = Tensor::from_planes(&[2, 5], 4, |p| (0..4).map(move |i| (10 * p + i) as f32));
        assert_eq!(t.shape, vec![2, 5]);
        assert_eq!(
            t.data,
            vec![0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0, 20.0, 21.0]
        );
        assert!(Tensor::from_planes(&[0, 3], 3, |_| std::iter::empty()).is_empty());
    }

    #[test]
    #[should_panic(expected = "ran short")]
    fn from_planes_refuses_a_short_plane() {
        let _ = Tensor::from_planes(&[8], 4, |p| (0..4 - p).map(|i| i as f32));
    }

    #[test]
    #[should_panic(expected = "cannot view shape")]
    fn reshape_checks_size() {
        let _ = Tensor::zeros(&[2, 3]).reshape(&[7]);
    }
}
