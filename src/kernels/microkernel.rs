//! Register-blocked FMA microkernels shared by the fast convolution kernels
//! (`kernels::conv`) and the fused SBF kernels (`kernels::sbf`). Each computes
//! one small tile of a matrix product whose accumulators stay in vector
//! registers for the whole reduction. They are generic over the vector
//! ([`Vector`]: 8 or 16 lanes, 16 or 32 registers), written once and compiled
//! for AVX2 and AVX-512 (see `kernels::simd`).
//!
//! Both read the "B" operand straight out of a prepared source buffer through
//! a table of offsets ("implicit GEMM"): column j of B starts at `bases[j]`,
//! row k is `offsets[k]` further, and the LANES neighbouring columns of one
//! vector are LANES neighbouring floats (the conv kernels arrange this by
//! padding and phase-splitting images). So no im2col matrix is ever built.
//!
//! Register budget: a tile of ROWS × VECTORS accumulators, plus the short side
//! of the tile held in registers and one streamed operand. With 16 registers
//! (AVX2): 6 × 2 and 2 × 6 (12 + 2 + 1 = 15; tiles of 4 × 3, 12 + 3 + 1 = 16,
//! spilled and ran at half speed). With 32 (AVX-512): 12 × 2 and 4 × 6
//! (24 + 2 + 1 and 24 + 4 + 1).

use super::simd::{lanes_of, Vector};

/// The widest vector's lanes.
pub const MAX_LANES: usize = 16;

/// Zeroed floats kept after the last image of a source buffer, so that the
/// unused lanes of a vector that overhangs the last row stay inside the buffer.
pub const SOURCE_SLACK: usize = 2 * MAX_LANES;

/// The register tiles compiled: ROWS × VECTORS accumulators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiling {
    /// 12 × 2 (32 registers only).
    Rows12Vectors2,
    /// 4 × 6 (32 registers only).
    Rows4Vectors6,
    /// 6 × 4 (32 registers only).
    Rows6Vectors4,
    Rows6Vectors2,
    Rows2Vectors6,
}

impl Tiling {
    /// (ROWS, VECTORS).
    pub fn shape(self) -> (usize, usize) {
        match self {
            Tiling::Rows12Vectors2 => (12, 2),
            Tiling::Rows4Vectors6 => (4, 6),
            Tiling::Rows6Vectors4 => (6, 4),
            Tiling::Rows6Vectors2 => (6, 2),
            Tiling::Rows2Vectors6 => (2, 6),
        }
    }

    /// The tiles that fit `registers` vector registers, larger first.
    pub fn candidates(registers: usize) -> &'static [Tiling] {
        if registers >= 32 {
            &[
                Tiling::Rows12Vectors2,
                Tiling::Rows4Vectors6,
                Tiling::Rows6Vectors4,
                Tiling::Rows6Vectors2,
                Tiling::Rows2Vectors6,
            ]
        } else {
            &[Tiling::Rows6Vectors2, Tiling::Rows2Vectors6]
        }
    }

    /// The tile that wastes the fewest padded multiply-adds for `rows` rows of
    /// the product and `vectors` vectors of pixels, with `registers` registers;
    /// of equal ones the first candidate (larger tiles load less per
    /// multiply-add, and tall ones less than wide ones). On 64 channels of an
    /// 8×8 map (8 rows of 8 lanes, or 4 flat vectors of 16) that is 6 × 4 with 32
    /// registers: 12 × 2 pads 64 rows to 72 (and ran the forward pass slower than 6 × 2),
    /// and 6 × 4 loads 4 columns and 6 broadcasts per 24 multiply-adds where 6 × 2 loads 2
    /// and 6 per 12.
    pub fn choose(registers: usize, rows: usize, vectors: usize) -> Tiling {
        let padded = |tiling: &Tiling| {
            let (tile_rows, tile_vectors) = tiling.shape();
            rows.div_ceil(tile_rows) * tile_rows * vectors.div_ceil(tile_vectors) * tile_vectors
        };
        let candidates = Tiling::candidates(registers);
        let least = candidates.iter().map(padded).min().unwrap();
        *candidates.iter().find(|tiling| padded(tiling) == least).unwrap()
    }
}

/// Runs `$body` with the const generics `$rows`, `$vectors` set to the shape of
/// `tiling`: `with_tile!(tiling, R, C => f::<V, R, C>())`. (The 32-register
/// tiles are compiled for every vector type; `Tiling::choose` picks them only
/// for vectors with 32 registers.)
macro_rules! with_tile {
    ($tiling:expr, $rows:ident, $vectors:ident => $body:expr) => {{
        use $crate::kernels::microkernel::Tiling;
        match $tiling {
            Tiling::Rows12Vectors2 => {
                const $rows: usize = 12;
                const $vectors: usize = 2;
                $body
            }
            Tiling::Rows4Vectors6 => {
                const $rows: usize = 4;
                const $vectors: usize = 6;
                $body
            }
            Tiling::Rows6Vectors4 => {
                const $rows: usize = 6;
                const $vectors: usize = 4;
                $body
            }
            Tiling::Rows6Vectors2 => {
                const $rows: usize = 6;
                const $vectors: usize = 2;
                $body
            }
            Tiling::Rows2Vectors6 => {
                const $rows: usize = 2;
                const $vectors: usize = 6;
                $body
            }
        }
    }};
}
pub(crate) use with_tile;

/// B[k, j .. j+LANES] = source[j + `offsets[k]` .. j + `offsets[k]` + LANES]: a matrix read
/// out of `source` through a table of per-row offsets.
///
/// `run`: the rows come in runs of `run` neighbouring floats,
/// offsets[g·run + j] = offsets[g·run] + j (the K taps kw = 0..K of a
/// stride-1 convolution), so a microkernel reads one offset per run.
pub struct GatherMatrix<'a> {
    source: &'a [f32],
    offsets: &'a [usize],
    max_offset: usize,
    run: usize,
}

impl<'a> GatherMatrix<'a> {
    pub fn new(source: &'a [f32], offsets: &'a [usize]) -> Self {
        Self::with_runs(source, offsets, 1)
    }

    /// A matrix whose rows come in runs of `run` neighbouring floats.
    ///
    /// # Panics
    /// If the offsets do not (checked once here, not per tile).
    pub fn with_runs(source: &'a [f32], offsets: &'a [usize], run: usize) -> Self {
        assert!(
            run >= 1 && offsets.len().is_multiple_of(run),
            "GatherMatrix: depth is not a multiple of the run"
        );
        assert!(
            offsets
                .chunks(run)
                .all(|taps| taps.iter().enumerate().all(|(j, &o)| o == taps[0] + j)),
            "GatherMatrix: offsets do not come in runs of neighbouring floats"
        );
        let max_offset = offsets.iter().copied().max().unwrap_or(0);
        GatherMatrix {
            source,
            offsets,
            max_offset,
            run,
        }
    }

    /// Rows of B: the length of the reduction.
    pub fn depth(&self) -> usize {
        self.offsets.len()
    }
}

/// One register tile of C = A · B (forward pass and input gradient):
///
/// ```text
///   tile[r][v] = Σ_k  a[k·ROWS + r] · B[k, bases[v] .. bases[v] + LANES]
/// ```
///
/// `a` is one packed panel of A (ROWS rows interleaved, k-major); each
/// `bases[v]` selects LANES neighbouring columns of B. Each lane sums over k
/// in order with one FMA per k, so the result does not depend on V or the
/// tile shape.
///
/// RUN (= `b`'s run): k goes in runs k = g·RUN + j whose B rows are j floats
/// apart, so the loop reads one offset per run and the j loop is unrolled
/// with constant displacements. Per k the wide 6 × 2 tile then issues 12 FMAs,
/// 2 column loads and 6 broadcasts and little else: with RUN = 1 the offset
/// load and address adds pushed it past the 4 µops/cycle front end.
#[inline(always)]
pub fn gemm_tile<V: Vector, const ROWS: usize, const VECTORS: usize, const RUN: usize>(
    a: &[f32],
    b: &GatherMatrix,
    bases: &[usize; VECTORS],
) -> [[V; VECTORS]; ROWS] {
    assert_eq!(b.run, RUN, "gemm_tile: RUN differs from the matrix's runs");
    let depth = b.depth();
    assert!(a.len() >= depth * ROWS, "gemm_tile: packed panel too short");
    for &base in bases {
        assert!(
            base + b.max_offset + V::LANES <= b.source.len(),
            "gemm_tile: column out of the source"
        );
    }
    let mut tile = [[V::zero(); VECTORS]; ROWS];
    let a = a.as_ptr();
    let source = b.source.as_ptr();
    for first in (0..depth).step_by(RUN) {
        // SAFETY: first < depth = offsets.len().
        let run_offset = unsafe { *b.offsets.get_unchecked(first) };
        for j in 0..RUN {
            let (k, offset) = (first + j, run_offset + j);
            // SAFETY: k < depth (depth is a multiple of RUN); a holds depth·ROWS
            // floats; offset = offsets[k] (runs checked by `with_runs`), and every
            // base + offsets[k] + LANES ≤ source.len() (checked above with max_offset).
            unsafe {
                if ROWS > VECTORS {
                    // Tall tile: keep the VECTORS columns, stream the broadcasts.
                    let mut columns = [V::zero(); VECTORS];
                    for v in 0..VECTORS {
                        columns[v] = V::load(source.add(bases[v] + offset));
                    }
                    for r in 0..ROWS {
                        let a_value = V::splat(*a.add(k * ROWS + r));
                        for v in 0..VECTORS {
                            tile[r][v] = a_value.mul_add(columns[v], tile[r][v]);
                        }
                    }
                } else {
                    // Wide tile: keep the ROWS broadcasts, stream the columns.
                    let mut a_values = [V::zero(); ROWS];
                    for r in 0..ROWS {
                        a_values[r] = V::splat(*a.add(k * ROWS + r));
                    }
                    for v in 0..VECTORS {
                        let column = V::load(source.add(bases[v] + offset));
                        for r in 0..ROWS {
                            tile[r][v] = a_values[r].mul_add(column, tile[r][v]);
                        }
                    }
                }
            }
        }
    }
    tile
}

/// The reduction of a [`broadcast_tile`]: tap t multiplies row `panel_rows[t]` of the packed
/// panel by the source float `sources[t]` past each tile row's base. Built once per set of
/// taps, with the ranges kept for one bounds check per tile.
#[derive(Clone, Debug, Default)]
pub struct TapList {
    panel_rows: Vec<usize>,
    sources: Vec<isize>,
    min_source: isize,
    max_source: isize,
    max_panel_row: usize,
}

impl TapList {
    /// The taps `(panel row, source offset)`, in the order the reduction sums them.
    pub fn new(taps: impl IntoIterator<Item = (usize, isize)>) -> Self {
        let (panel_rows, sources): (Vec<usize>, Vec<isize>) = taps.into_iter().unzip();
        TapList {
            min_source: sources.iter().copied().min().unwrap_or(0),
            max_source: sources.iter().copied().max().unwrap_or(0),
            max_panel_row: panel_rows.iter().copied().max().unwrap_or(0),
            panel_rows,
            sources,
        }
    }

    pub fn len(&self) -> usize {
        self.panel_rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.panel_rows.is_empty()
    }

    /// The taps `(panel row, source offset)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, isize)> + '_ {
        self.panel_rows.iter().copied().zip(self.sources.iter().copied())
    }
}

/// One register tile of C = A · B with the roles of [`gemm_tile`] swapped: the vectors run
/// along B's columns, read from a packed panel, and A's entries are single floats of a source
/// buffer, broadcast:
///
/// ```text
///   tile[r][v] = Σ_t  source[bases[r] + sources[t]] · panel[panel_rows[t]·W + v·LANES .. +LANES]
/// ```
///
/// with W = VECTORS·LANES (`panel` is `[rows][W]`, row-major). Used where B's columns are many
/// (output channels) and A's rows few (the pixels of a small map): every lane does useful work
/// however small the map, and each row of the tile may skip the taps that read zeros, since
/// `taps` lists only the taps summed. Each lane sums over the taps in order with one FMA per
/// tap (`bases[r] + sources[t]` may be any in-bounds index; bases may be negative).
#[inline(always)]
pub fn broadcast_tile<V: Vector, const ROWS: usize, const VECTORS: usize>(
    panel: &[f32],
    source: &[f32],
    bases: &[isize; ROWS],
    taps: &TapList,
) -> [[V; VECTORS]; ROWS] {
    let width = VECTORS * V::LANES;
    let mut tile = [[V::zero(); VECTORS]; ROWS];
    if taps.is_empty() {
        return tile;
    }
    assert!(
        (taps.max_panel_row + 1) * width <= panel.len(),
        "broadcast_tile: packed panel too short"
    );
    for &base in bases {
        assert!(
            base + taps.min_source >= 0 && base + taps.max_source < source.len() as isize,
            "broadcast_tile: tap out of the source"
        );
    }
    let panel = panel.as_ptr();
    let source = source.as_ptr();
    for (&panel_row, &offset) in taps.panel_rows.iter().zip(&taps.sources) {
        // SAFETY: panel_row ≤ max_panel_row and base + offset lies in
        // [base + min_source, base + max_source], inside both buffers (checked above).
        unsafe {
            let row = panel.add(panel_row * width);
            let mut columns = [V::zero(); VECTORS];
            for v in 0..VECTORS {
                columns[v] = V::load(row.add(v * V::LANES));
            }
            for r in 0..ROWS {
                let value = V::splat(*source.offset(bases[r] + offset));
                for v in 0..VECTORS {
                    tile[r][v] = value.mul_add(columns[v], tile[r][v]);
                }
            }
        }
    }
    tile
}

/// Pixel pairs of a reduction over pixels: (index into the output gradient,
/// index into the source image), with their maxima kept for one bounds check.
pub struct PixelPairs {
    pairs: Vec<(usize, usize)>,
    max_grad: usize,
    max_source: usize,
}

impl PixelPairs {
    pub fn new() -> Self {
        PixelPairs {
            pairs: Vec::new(),
            max_grad: 0,
            max_source: 0,
        }
    }

    /// Room for `pairs` pairs, allocated once (a task fills it group by group).
    pub fn with_capacity(pairs: usize) -> Self {
        PixelPairs {
            pairs: Vec::with_capacity(pairs),
            max_grad: 0,
            max_source: 0,
        }
    }

    pub fn clear(&mut self) {
        self.pairs.clear();
        self.max_grad = 0;
        self.max_source = 0;
    }

    pub fn push(&mut self, grad_index: usize, source_index: usize) {
        self.pairs.push((grad_index, source_index));
        self.max_grad = self.max_grad.max(grad_index);
        self.max_source = self.max_source.max(source_index);
    }
}

impl Default for PixelPairs {
    fn default() -> Self {
        Self::new()
    }
}

/// One register tile of the weight gradient dW = dY · Bᵀ, a reduction over
/// pixels, LANES pixels per vector:
///
/// ```text
///   tile[r][j] = Σ_(g, s) in pairs  grad[g + row_starts[r] .. +LANES] ⊙ source[s + tap_offsets[j] .. +LANES]
/// ```
///
/// (lane-wise; the caller sums the lanes once at the end).
#[inline(always)]
pub fn dot_tile<V: Vector, const ROWS: usize, const COLS: usize>(
    grad: &[f32],
    row_starts: &[usize; ROWS],
    source: &[f32],
    tap_offsets: &[usize; COLS],
    pairs: &PixelPairs,
) -> [[V; COLS]; ROWS] {
    if pairs.pairs.is_empty() {
        return [[V::zero(); COLS]; ROWS];
    }
    let max_row = row_starts.iter().copied().max().unwrap_or(0);
    let max_tap = tap_offsets.iter().copied().max().unwrap_or(0);
    assert!(
        pairs.max_grad + max_row + V::LANES <= grad.len(),
        "dot_tile: gradient out of range"
    );
    assert!(
        pairs.max_source + max_tap + V::LANES <= source.len(),
        "dot_tile: source out of range"
    );
    let mut tile = [[V::zero(); COLS]; ROWS];
    let grad = grad.as_ptr();
    let source = source.as_ptr();
    for &(grad_index, source_index) in &pairs.pairs {
        // SAFETY: every index + start + LANES is within its buffer (checked above).
        unsafe {
            if ROWS > COLS {
                // Tall tile: keep the COLS source columns, stream the gradient rows.
                let mut columns = [V::zero(); COLS];
                for j in 0..COLS {
                    columns[j] = V::load(source.add(source_index + tap_offsets[j]));
                }
                for r in 0..ROWS {
                    let row = V::load(grad.add(grad_index + row_starts[r]));
                    for j in 0..COLS {
                        tile[r][j] = row.mul_add(columns[j], tile[r][j]);
                    }
                }
            } else {
                // Wide tile: keep the ROWS gradient rows, stream the source columns.
                let mut rows = [V::zero(); ROWS];
                for r in 0..ROWS {
                    rows[r] = V::load(grad.add(grad_index + row_starts[r]));
                }
                for j in 0..COLS {
                    let column = V::load(source.add(source_index + tap_offsets[j]));
                    for r in 0..ROWS {
                        tile[r][j] = rows[r].mul_add(column, tile[r][j]);
                    }
                }
            }
        }
    }
    tile
}

/// `destination[start + i·step] += values[i]` for the first `lanes` lanes.
#[inline(always)]
pub fn add_lanes<V: Vector>(destination: &mut [f32], start: usize, step: usize, values: V, lanes: usize) {
    if step == 1 && lanes == V::LANES {
        let slot = &mut destination[start..start + V::LANES];
        // SAFETY: slot holds LANES floats.
        unsafe { V::load(slot.as_ptr()).add(values).store(slot.as_mut_ptr()) };
    } else {
        let values = lanes_of(values);
        for i in 0..lanes {
            destination[start + i * step] += values[i];
        }
    }
}

/// `destination[start .. start + lanes] = values[.. lanes]`.
#[inline(always)]
pub fn store_lanes<V: Vector>(destination: &mut [f32], start: usize, values: V, lanes: usize) {
    if lanes == V::LANES {
        let slot = &mut destination[start..start + V::LANES];
        // SAFETY: slot holds LANES floats.
        unsafe { values.store(slot.as_mut_ptr()) };
    } else {
        destination[start..start + lanes].copy_from_slice(&lanes_of(values)[..lanes]);
    }
}

/// `source[start .. start + lanes]`, the lanes past `lanes` zero.
#[inline(always)]
pub fn load_lanes<V: Vector>(source: &[f32], start: usize, lanes: usize) -> V {
    if lanes == V::LANES {
        let values = &source[start..start + V::LANES];
        // SAFETY: values holds LANES floats.
        return unsafe { V::load(values.as_ptr()) };
    }
    let mut values = [0.0f32; MAX_LANES];
    values[..lanes].copy_from_slice(&source[start..start + lanes]);
    // SAFETY: values holds MAX_LANES ≥ LANES floats.
    unsafe { V::load(values.as_ptr()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::F32x8;

    type V = F32x8<16>;

    #[test]
    fn tiling_wastes_the_fewest_padded_multiply_adds_larger_tiles_first() {
        // 64 channels of an 8×8 map, 8 rows or 4 flat vectors: 12 × 2 pads 64 rows to 72,
        // 6 × 4 and 6 × 2 to 66, and 6 × 4 comes first.
        assert_eq!(Tiling::choose(32, 64, 8), Tiling::Rows6Vectors4);
        assert_eq!(Tiling::choose(32, 64, 4), Tiling::Rows6Vectors4);
        assert_eq!(Tiling::choose(16, 64, 8), Tiling::Rows6Vectors2);
        // 32 channels of a 16×16 map, 16 lanes: 12 × 2 and 6 × 2 both pad to 36 rows.
        assert_eq!(Tiling::choose(32, 32, 16), Tiling::Rows12Vectors2);
        // 16 channels, 64 vectors: the wide tiles pad 64 vectors to 66, the tall 16 rows to 18 or 24.
        assert_eq!(Tiling::choose(32, 16, 64), Tiling::Rows4Vectors6);
        assert_eq!(Tiling::choose(16, 16, 64), Tiling::Rows2Vectors6);
        assert!(Tiling::candidates(16)
            .iter()
            .all(|t| t.shape().0 * t.shape().1 <= 12));
    }

    #[test]
    fn gemm_tile_matches_a_scalar_product() {
        // A [3 rows, depth 5], B read with offsets k·11 from a source of 80 floats.
        let source: Vec<f32> = (0..80).map(|i| (i as f32 * 0.37).sin()).collect();
        let offsets: Vec<usize> = (0..5).map(|k| k * 11).collect();
        let a: Vec<f32> = (0..15).map(|i| i as f32 * 0.1 - 0.7).collect(); // [k][r]
        let b = GatherMatrix::new(&source, &offsets);
        let bases = [3, 20];
        let tile = gemm_tile::<V, 3, 2, 1>(&a, &b, &bases);
        for r in 0..3 {
            for v in 0..2 {
                for lane in 0..8 {
                    let expected: f32 = (0..5)
                        .map(|k| a[k * 3 + r] * source[bases[v] + offsets[k] + lane])
                        .sum();
                    assert!((lanes_of(tile[r][v])[lane] - expected).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn gemm_tile_with_runs_of_3_matches_a_scalar_product() {
        // Depth 6 = 2 runs of 3 neighbouring floats, 17 apart: offsets 0,1,2, 17,18,19.
        let source: Vec<f32> = (0..120).map(|i| (i as f32 * 0.29).cos()).collect();
        let offsets: Vec<usize> = (0..6).map(|k| (k / 3) * 17 + k % 3).collect();
        let a: Vec<f32> = (0..36).map(|i| i as f32 * 0.05 - 0.9).collect(); // [k][r], 6 rows
        let b = GatherMatrix::with_runs(&source, &offsets, 3);
        let bases = [1, 40];
        let tile = gemm_tile::<V, 6, 2, 3>(&a, &b, &bases);
        for r in 0..6 {
            for v in 0..2 {
                for lane in 0..8 {
                    let expected: f32 = (0..6)
                        .map(|k| a[k * 6 + r] * source[bases[v] + offsets[k] + lane])
                        .sum();
                    assert!((lanes_of(tile[r][v])[lane] - expected).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn broadcast_tile_matches_a_scalar_product() {
        // Panel [5 rows][2·8], taps in a scrambled order with negative bases.
        let panel: Vec<f32> = (0..80).map(|i| (i as f32 * 0.19).sin()).collect();
        let source: Vec<f32> = (0..50).map(|i| (i as f32 * 0.41).cos()).collect();
        let taps = TapList::new([(3, 12), (0, 20), (4, 7), (1, 30)]);
        let bases = [-5, 0, 17];
        let tile = broadcast_tile::<V, 3, 2>(&panel, &source, &bases, &taps);
        for r in 0..3 {
            for v in 0..2 {
                for lane in 0..8 {
                    let expected: f32 = [(3, 12), (0, 20), (4, 7), (1, 30)]
                        .iter()
                        .map(|&(row, offset)| {
                            source[(bases[r] + offset) as usize] * panel[row * 16 + v * 8 + lane]
                        })
                        .sum();
                    assert!((lanes_of(tile[r][v])[lane] - expected).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "tap out of the source")]
    fn broadcast_tile_refuses_a_tap_outside_the_source() {
        let panel = vec![0.0; 16];
        let source = vec![0.0; 10];
        broadcast_tile::<V, 1, 2>(&panel, &source, &[-3], &TapList::new([(0, 2)]));
    }

    #[test]
    #[should_panic(expected = "runs of neighbouring floats")]
    fn gather_matrix_rejects_offsets_that_are_not_runs() {
        let source = vec![0.0; 64];
        let offsets = [0, 1, 3]; // 3 is not 0 + 2
        GatherMatrix::with_runs(&source, &offsets, 3);
    }

    #[test]
    fn dot_tile_matches_a_scalar_sum() {
        let grad: Vec<f32> = (0..64).map(|i| (i as f32 * 0.21).cos()).collect();
        let source: Vec<f32> = (0..64).map(|i| (i as f32 * 0.13).sin()).collect();
        let mut pairs = PixelPairs::new();
        pairs.push(0, 5);
        pairs.push(16, 30);
        let row_starts = [0, 8];
        let taps = [0, 1, 9];
        let tile = dot_tile::<V, 2, 3>(&grad, &row_starts, &source, &taps, &pairs);
        for r in 0..2 {
            for j in 0..3 {
                let expected: f32 = [(0, 5), (16, 30)]
                    .iter()
                    .flat_map(|&(g, s)| (0..8).map(move |l| (g, s, l)))
                    .map(|(g, s, l)| grad[g + row_starts[r] + l] * source[s + taps[j] + l])
                    .sum();
                assert!((tile[r][j].reduce_add() - expected).abs() < 1e-4);
            }
        }
    }
}
