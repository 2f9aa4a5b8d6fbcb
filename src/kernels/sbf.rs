//! Kernels of the SBF layer (templates + cheap per-tap transformations), as
//! plain loops over slices. Every fast kernel has a naive twin written
//! straight from its formula; the tests compare the two.
//!
//! # Shapes (NCHW, K×K kernel, stride s, zero padding p, G input-channel groups)
//!
//! ```text
//!   input       X [Bt, C, H, W]
//!   templates   B [M, C, K, K]                 M kept filters
//!   masks       T [N−M, G, K, K]               one K×K mask per transformed output and group
//!   maps        P [Bt, G, K², M, plane]        stage-1 output ("template features", one per tap)
//!   output      Y [Bt, N, Ho, Wo]              Ho = (H + 2p − K)/s + 1
//!   Cg = C/G,   g(i) = ⌊i / Cg⌋,   tap = kh·K + kw
//! ```
//!
//! # The two stages
//!
//! Stage 1 is a grouped 1×1 convolution of the input with every tap slice of
//! the templates; stage 2 (the "gather", the paper's TransformGather) sums, for
//! each output, the K²·G maps of its template, each read at its tap's offset
//! and scaled by the output's mask value:
//!
//! ```text
//!   Y[b,n,h,w] = Σ_g Σ_tap t(n,g,tap) · P_tap[b,g,m(n)](h·s+kh−p, w·s+kw−p)
//!   t(n,g,tap) = 1 for the template's identity output, T[row(n),g,tap] otherwise
//! ```
//!
//! Where P lives depends on the stride, so that only positions that are read are computed:
//!
//! - **stride 1: on the input grid** (plane = H·W). `P[b,g,tap,m,y,x] = Σ_{i∈g} X[b,i,y,x]·B[m,i,kh,kw]`:
//!   per image and group ONE GEMM `[K²·M × Cg] · [Cg × H·W]` straight on X. The gather reads
//!   P at (h+kh−p, w+kw−p) (a shifted view; 0 outside the image).
//! - **stride > 1: at the output positions** (plane = Ho·Wo).
//!   `P[b,g,tap,m,h,w] = Σ_{i∈g} X[b,i,h·s+kh−p,w·s+kw−p]·B[m,i,kh,kw]`: per image, group and
//!   tap one GEMM `[M × Cg] · [Cg × Ho·Wo]` on the tap's strided view of X (an im2col of one
//!   tap), so the s² positions that are never read are never computed. The gather then reads
//!   P at (h, w) for every tap (padding reads are stored zeros).
//!
//! `SbfShape::map_position` (output → plane index) and `SbfShape::map_source` (plane index →
//! input pixel) hide the difference from the naive kernels.
//!
//! # Backward (R = ∂L/∂Y)
//!
//! ```text
//!   j = map_position(h,w,kh,kw),   (y,x) = map_source(j,kh,kw)
//!   dT[row(n),g,tap] = Σ_{b,h,w} R[b,n,h,w] · P[b,g,tap,m(n),j]
//!   dP[b,g,tap,m,j]  = Σ_{n: m(n)=m} t(n,g,tap) · R[b,n,h,w]     (a gather over outputs: per map row,
//!                                                                 solve h = y − kh + p; no atomics)
//!   dB[m,i,kh,kw]    = Σ_{b,j} dP[b,g(i),tap,m,j] · X[b,i,y,x]     (transposed stage-1 GEMM)
//!   dX[b,i,y,x]      = Σ_{tap,m} Σ_{j → (y,x)} B[m,i,kh,kw] · dP[b,g(i),tap,m,j]   (GEMM; col2im if strided)
//! ```
//!
//! # Where to read what
//!
//! 1. the geometry ([`SbfShape`]) and the assignment ([`TemplateAssignment`]);
//! 2. SIMD building blocks (axpy, dot, the register-blocked GEMMs);
//! 3. the naive kernels of both stages and their transposes: the oracles;
//! 4. per-image blocks and the whole-batch fast kernels (`stage1_*`, `gather_*`), each tested
//!    against its oracle. At stride 1 with "same" padding the gather reads each tap's map as
//!    one long shifted range and undoes the few reads that wrap around a row end;
//! 5. the fused layer kernels the op calls ([`two_stage_forward`], [`two_stage_backward`]): both
//! ```text
//!    stages per image with P[b] in per-worker scratch (the batch's P is never materialised;
//!    backward recomputes P[b]). Stride-1 "same"-padded layers (the CIFAR ResNet's 3×3 convs) run
//!    in row bands instead ([`two_stage_forward_banded`], [`two_stage_backward_banded`]): per
//!    image and band of output rows, stage 1 of the band plus its ±p halo rows into guarded
//!    planes that stay in cache, then register-accumulated gathers with column masks.
//! ```
//!
//! Contract (as for every kernel): forward kernels overwrite their output,
//! gradient kernels accumulate (`+=`), except `gather_maps_grad`, which
//! overwrites dP (an intermediate owned by the op).

use rayon::prelude::*;
use wide::f32x8;

// ---------------------------------------------------------------------------------------------
// Geometry and the template assignment
// ---------------------------------------------------------------------------------------------

/// The geometry of an SBF layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SbfShape {
    pub batch: usize,
    /// C
    pub in_channels: usize,
    pub in_height: usize,
    pub in_width: usize,
    /// N
    pub out_channels: usize,
    /// M
    pub templates: usize,
    /// K
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// G (divides C)
    pub groups: usize,
}

impl SbfShape {
    /// Ho = (H + 2p − K)/s + 1
    pub fn out_height(&self) -> usize {
        (self.in_height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Wo = (W + 2p − K)/s + 1
    pub fn out_width(&self) -> usize {
        (self.in_width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Ho·Wo
    pub fn out_plane(&self) -> usize {
        self.out_height() * self.out_width()
    }
    /// K²
    pub fn taps(&self) -> usize {
        self.kernel * self.kernel
    }
    /// Cg = C/G, the input channels of one group.
    pub fn group_channels(&self) -> usize {
        self.in_channels / self.groups
    }
    /// N − M
    pub fn transformed(&self) -> usize {
        self.out_channels - self.templates
    }
    /// Elements of X [Bt, C, H, W].
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_height * self.in_width
    }
    /// Elements of B [M, C, K, K].
    pub fn templates_len(&self) -> usize {
        self.templates * self.in_channels * self.taps()
    }
    /// Elements of T [N−M, G, K, K].
    pub fn masks_len(&self) -> usize {
        self.transformed() * self.groups * self.taps()
    }
    /// Whether P lives on the input grid (stride 1: `P[b,g,tap,m,y,x]`, H·W per plane) or at the
    /// output positions (stride > 1: `P[b,g,tap,m,h,w]`, Ho·Wo per plane).
    pub fn maps_on_input_grid(&self) -> bool {
        self.stride == 1
    }
    /// Values per plane of P: H·W (stride 1) or Ho·Wo (stride > 1).
    pub fn map_plane(&self) -> usize {
        if self.maps_on_input_grid() {
            self.in_height * self.in_width
        } else {
            self.out_plane()
        }
    }
    /// Elements of P for one image: G·K²·M·map_plane.
    pub fn maps_per_image(&self) -> usize {
        self.groups * self.taps() * self.templates * self.map_plane()
    }
    /// Elements of P [Bt, G, K², M, map_plane].
    pub fn maps_len(&self) -> usize {
        self.batch * self.maps_per_image()
    }
    /// Elements of Y [Bt, N, Ho, Wo].
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_plane()
    }
    /// Flat index of `P[b,g,tap,m,0]`.
    #[inline]
    pub fn map_offset(&self, b: usize, g: usize, tap: usize, m: usize) -> usize {
        (((b * self.groups + g) * self.taps() + tap) * self.templates + m) * self.map_plane()
    }
    /// The input pixel (y, x) whose stage-1 value sits at index j of a P plane of tap (kh, kw),
    /// or None where that value is a read of the zero padding (strided layout only).
    #[inline]
    pub fn map_source(&self, j: usize, kh: usize, kw: usize) -> Option<(usize, usize)> {
        if self.maps_on_input_grid() {
            Some((j / self.in_width, j % self.in_width))
        } else {
            self.input_position(j / self.out_width(), j % self.out_width(), kh, kw)
        }
    }
    /// The index in a P plane of tap (kh, kw) that output (h, w) reads, or None if it reads the
    /// padding (input-grid layout; in the strided layout the plane holds a stored 0 there).
    #[inline]
    pub fn map_position(&self, h: usize, w: usize, kh: usize, kw: usize) -> Option<usize> {
        if self.maps_on_input_grid() {
            self.input_position(h, w, kh, kw)
                .map(|(y, x)| y * self.in_width + x)
        } else {
            Some(h * self.out_width() + w)
        }
    }
    /// The input pixel read by output (h, w) at tap (kh, kw): (h·s + kh − p, w·s + kw − p), or None in the padding.
    #[inline]
    pub fn input_position(&self, h: usize, w: usize, kh: usize, kw: usize) -> Option<(usize, usize)> {
        let y = (h * self.stride + kh).checked_sub(self.padding)?;
        let x = (w * self.stride + kw).checked_sub(self.padding)?;
        (y < self.in_height && x < self.in_width).then_some((y, x))
    }

    /// Panics, naming `op` and every size, if the geometry is impossible.
    pub fn validate(&self, op: &str) {
        assert!(
            self.groups > 0 && self.in_channels.is_multiple_of(self.groups),
            "{op}: groups G = {} must divide the {} input channels",
            self.groups,
            self.in_channels
        );
        assert!(
            self.templates >= 1 && self.templates <= self.out_channels,
            "{op}: need 1 ≤ M ≤ N templates, got M = {} for N = {} outputs",
            self.templates,
            self.out_channels
        );
        assert!(
            self.kernel > 0 && self.stride > 0,
            "{op}: kernel and stride must be ≥ 1: {self:?}"
        );
        assert!(
            self.in_height + 2 * self.padding >= self.kernel
                && self.in_width + 2 * self.padding >= self.kernel,
            "{op}: input {}×{} with padding {} is smaller than the {k}×{k} kernel",
            self.in_height,
            self.in_width,
            self.padding,
            k = self.kernel
        );
    }

    fn check(&self, name: &str, len: usize, expected: usize) {
        assert_eq!(
            len, expected,
            "sbf kernel: buffer {name} has {len} values, {self:?} needs {expected}"
        );
    }
}

/// Which template each output copies, and which mask row transforms it.
///
/// `template_of[n] = m(n)`; `mask_row[n] = None` for the template's identity
/// output (a plain convolution with B_m) and `Some(r)` for a transformed
/// output, whose mask is `T[r]`. Invariants (checked by [`TemplateAssignment::validate`]):
/// every template has exactly one identity output, and the mask rows of the
/// N−M transformed outputs are exactly 0..N−M.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateAssignment {
    /// `[N]` → template index m(n) < M
    pub template_of: Vec<usize>,
    /// `[N]` → None (identity) or Some(row of T)
    pub mask_row: Vec<Option<usize>>,
}

impl TemplateAssignment {
    /// The paper's default: outputs 0..M are the templates' identity outputs,
    /// output n ≥ M is transformed from template n mod M with mask row n − M.
    pub fn round_robin(outputs: usize, templates: usize) -> TemplateAssignment {
        assert!(
            templates >= 1 && templates <= outputs,
            "TemplateAssignment::round_robin: need 1 ≤ M ≤ N, got M = {templates}, N = {outputs}"
        );
        TemplateAssignment {
            template_of: (0..outputs).map(|n| n % templates).collect(),
            mask_row: (0..outputs).map(|n| n.checked_sub(templates)).collect(),
        }
    }

    /// The assignment after pruning: the kept filters stay at their output
    /// positions (`kept_outputs[k]` becomes template k, identity), the r-th
    /// pruned position (in increasing order) is transformed from template
    /// r mod M with mask row r.
    pub fn from_kept_outputs(outputs: usize, kept_outputs: &[usize]) -> TemplateAssignment {
        let mut template_of = vec![usize::MAX; outputs];
        let mut mask_row = vec![None; outputs];
        for (k, &n) in kept_outputs.iter().enumerate() {
            assert!(
                n < outputs && template_of[n] == usize::MAX,
                "TemplateAssignment::from_kept_outputs: kept output {n} is out of range 0..{outputs} or repeated"
            );
            template_of[n] = k;
        }
        let templates = kept_outputs.len();
        assert!(
            templates >= 1,
            "TemplateAssignment::from_kept_outputs: keep at least one filter"
        );
        let mut row = 0;
        for n in 0..outputs {
            if template_of[n] == usize::MAX {
                template_of[n] = row % templates;
                mask_row[n] = Some(row);
                row += 1;
            }
        }
        TemplateAssignment {
            template_of,
            mask_row,
        }
    }

    /// The assignment with every output's template given: `kept_outputs[k]` is template k's
    /// identity output, output n copies template `template_of[n]`, and the transformed outputs
    /// take the mask rows 0..N−M in increasing order of n. With the templates of
    /// [`TemplateAssignment::from_kept_outputs`] it is that assignment.
    pub fn with_templates(kept_outputs: &[usize], template_of: Vec<usize>) -> TemplateAssignment {
        let outputs = template_of.len();
        let mut mask_row = vec![None; outputs];
        let mut is_kept = vec![false; outputs];
        for (k, &n) in kept_outputs.iter().enumerate() {
            assert!(
                n < outputs && template_of[n] == k && !is_kept[n],
                "TemplateAssignment::with_templates: kept output {n} is out of range 0..{outputs}, repeated, \
                 or not template {k}"
            );
            is_kept[n] = true;
        }
        let mut row = 0;
        for n in 0..outputs {
            assert!(
                template_of[n] < kept_outputs.len(),
                "TemplateAssignment::with_templates: output {n} reads template {}, of {}",
                template_of[n],
                kept_outputs.len()
            );
            if !is_kept[n] {
                mask_row[n] = Some(row);
                row += 1;
            }
        }
        TemplateAssignment {
            template_of,
            mask_row,
        }
    }

    /// N
    pub fn outputs(&self) -> usize {
        self.template_of.len()
    }

    /// M (the number of identity outputs).
    pub fn templates(&self) -> usize {
        self.mask_row.iter().filter(|r| r.is_none()).count()
    }

    /// The identity output of each template: `[M]`.
    pub fn identity_outputs(&self) -> Vec<usize> {
        let mut out = vec![usize::MAX; self.templates()];
        for n in 0..self.outputs() {
            if self.mask_row[n].is_none() {
                out[self.template_of[n]] = n;
            }
        }
        out
    }

    /// The outputs that read each template: `[M]` lists of n with m(n) = m.
    pub fn outputs_of_templates(&self, templates: usize) -> Vec<Vec<usize>> {
        let mut lists = vec![Vec::new(); templates];
        for (n, &m) in self.template_of.iter().enumerate() {
            lists[m].push(n);
        }
        lists
    }

    /// Panics, naming `op`, unless this assignment fits N outputs and M templates (see the type's invariants).
    pub fn validate(&self, op: &str, outputs: usize, templates: usize) {
        assert!(
            self.template_of.len() == outputs && self.mask_row.len() == outputs,
            "{op}: template assignment covers {} outputs, the layer has {outputs}",
            self.template_of.len()
        );
        let mut identity_seen = vec![false; templates];
        let mut row_seen = vec![false; outputs - templates.min(outputs)];
        for n in 0..outputs {
            let m = self.template_of[n];
            assert!(
                m < templates,
                "{op}: output {n} is assigned template {m}, but there are only {templates}"
            );
            match self.mask_row[n] {
                None => {
                    assert!(!identity_seen[m], "{op}: template {m} has two identity outputs");
                    identity_seen[m] = true;
                }
                Some(r) => {
                    assert!(
                        r < row_seen.len() && !row_seen[r],
                        "{op}: output {n} has mask row {r}: rows must be 0..{} (N−M), each used once",
                        row_seen.len()
                    );
                    row_seen[r] = true;
                }
            }
        }
        assert!(
            identity_seen.iter().all(|&s| s),
            "{op}: every one of the {templates} templates needs exactly one identity output"
        );
    }
}

/// t(n,g,tap): 1 for an identity output, T[row,g,tap] for a transformed one.
#[inline]
fn mask_value(shape: &SbfShape, masks: &[f32], row: Option<usize>, g: usize, tap: usize) -> f32 {
    match row {
        None => 1.0,
        Some(r) => masks[(r * shape.groups + g) * shape.taps() + tap],
    }
}

// ---------------------------------------------------------------------------------------------
// SIMD building blocks: load/store, axpy, dot and a register-blocked GEMM
// ---------------------------------------------------------------------------------------------

#[inline(always)]
fn load(s: &[f32]) -> f32x8 {
    f32x8::from(<[f32; 8]>::try_from(&s[..8]).unwrap())
}

#[inline(always)]
fn store(s: &mut [f32], v: f32x8) {
    s[..8].copy_from_slice(&v.to_array());
}

/// y += alpha · x
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let a = f32x8::splat(alpha);
    let mut j = 0;
    while j + 8 <= n {
        let sum = load(&x[j..]).mul_add(a, load(&y[j..]));
        store(&mut y[j..], sum);
        j += 8;
    }
    for j in j..n {
        y[j] += alpha * x[j];
    }
}

/// Σ_j `x[j]·y[j]`
#[inline]
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let (mut acc0, mut acc1) = (f32x8::ZERO, f32x8::ZERO);
    let mut j = 0;
    while j + 16 <= n {
        acc0 = load(&x[j..]).mul_add(load(&y[j..]), acc0);
        acc1 = load(&x[j + 8..]).mul_add(load(&y[j + 8..]), acc1);
        j += 16;
    }
    while j + 8 <= n {
        acc0 = load(&x[j..]).mul_add(load(&y[j..]), acc0);
        j += 8;
    }
    let mut sum = (acc0 + acc1).reduce_add();
    for j in j..n {
        sum += x[j] * y[j];
    }
    sum
}

/// `c[r, j] += Σ_k a[r, k] · b[k, j]`, all row-major: a [rows × inner],
/// b [inner × cols], c [rows × cols].
///
/// Register blocking: a micro-kernel holds a ROWS × 16 block of c (ROWS ≤ 6)
/// in 2·ROWS f32x8 accumulators and streams one row of b (two vectors) and
/// ROWS broadcasts of a per step of k.
pub fn gemm_accumulate(rows: usize, inner: usize, cols: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    let ld = Strides {
        lda: inner,
        ldb: cols,
        ldc: cols,
    };
    gemm::<true>(rows, inner, cols, a, b, c, ld)
}

/// [`gemm_accumulate`] with the rows of b and c `ldb` and `ldc` apart (a is dense).
pub fn gemm_accumulate_strided(
    rows: usize,
    inner: usize,
    cols: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    gemm::<true>(rows, inner, cols, a, b, c, Strides { lda: inner, ldb, ldc })
}

/// [`gemm_overwrite`] with the rows of b and c `ldb` and `ldc` apart (a is dense).
pub fn gemm_overwrite_strided(
    rows: usize,
    inner: usize,
    cols: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    gemm::<false>(rows, inner, cols, a, b, c, Strides { lda: inner, ldb, ldc })
}

/// `c[r, j] = Σ_k a[r, k] · b[k, j]` (overwrites c; saves a pass over c when it starts at zero).
pub fn gemm_overwrite(rows: usize, inner: usize, cols: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    let ld = Strides {
        lda: inner,
        ldb: cols,
        ldc: cols,
    };
    gemm::<false>(rows, inner, cols, a, b, c, ld)
}

/// Row strides: a row r of a starts at r·lda, row k of b at k·ldb, row r of c at r·ldc.
#[derive(Clone, Copy)]
struct Strides {
    lda: usize,
    ldb: usize,
    ldc: usize,
}

fn gemm<const ACCUMULATE: bool>(
    rows: usize,
    inner: usize,
    cols: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ld: Strides,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        a.len() >= (rows - 1) * ld.lda + inner
            && (inner == 0 || b.len() >= (inner - 1) * ld.ldb + cols)
            && c.len() >= (rows - 1) * ld.ldc + cols
    );
    let mut r = 0;
    while r + 6 <= rows {
        gemm_rows::<6, ACCUMULATE>(r, inner, cols, a, b, c, ld);
        r += 6;
    }
    match rows - r {
        5 => gemm_rows::<5, ACCUMULATE>(r, inner, cols, a, b, c, ld),
        4 => gemm_rows::<4, ACCUMULATE>(r, inner, cols, a, b, c, ld),
        3 => gemm_rows::<3, ACCUMULATE>(r, inner, cols, a, b, c, ld),
        2 => gemm_rows::<2, ACCUMULATE>(r, inner, cols, a, b, c, ld),
        1 => gemm_rows::<1, ACCUMULATE>(r, inner, cols, a, b, c, ld),
        _ => {}
    }
}

#[inline(always)]
fn gemm_rows<const ROWS: usize, const ACCUMULATE: bool>(
    r0: usize,
    inner: usize,
    cols: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ld: Strides,
) {
    let a = &a[r0 * ld.lda..];
    let mut j = 0;
    // 16-column blocks: 2·ROWS accumulators.
    while j + 16 <= cols {
        let mut acc = [[f32x8::ZERO; 2]; ROWS];
        for k in 0..inner {
            let b_row = &b[k * ld.ldb + j..];
            let (b0, b1) = (load(b_row), load(&b_row[8..]));
            for r in 0..ROWS {
                let a_rk = f32x8::splat(a[r * ld.lda + k]);
                acc[r][0] = a_rk.mul_add(b0, acc[r][0]);
                acc[r][1] = a_rk.mul_add(b1, acc[r][1]);
            }
        }
        for r in 0..ROWS {
            let c_row = &mut c[(r0 + r) * ld.ldc + j..];
            let (low, high) = if ACCUMULATE {
                (load(c_row) + acc[r][0], load(&c_row[8..]) + acc[r][1])
            } else {
                (acc[r][0], acc[r][1])
            };
            store(c_row, low);
            store(&mut c_row[8..], high);
        }
        j += 16;
    }
    // An 8-column block.
    if j + 8 <= cols {
        let mut acc = [f32x8::ZERO; ROWS];
        for k in 0..inner {
            let b0 = load(&b[k * ld.ldb + j..]);
            for r in 0..ROWS {
                acc[r] = f32x8::splat(a[r * ld.lda + k]).mul_add(b0, acc[r]);
            }
        }
        for r in 0..ROWS {
            let c_row = &mut c[(r0 + r) * ld.ldc + j..];
            let value = if ACCUMULATE { load(c_row) + acc[r] } else { acc[r] };
            store(c_row, value);
        }
        j += 8;
    }
    // Scalar tail columns.
    for jj in j..cols {
        for r in 0..ROWS {
            let mut sum = 0.0;
            for k in 0..inner {
                sum += a[r * ld.lda + k] * b[k * ld.ldb + jj];
            }
            let c_value = &mut c[(r0 + r) * ld.ldc + jj];
            *c_value = if ACCUMULATE { *c_value + sum } else { sum };
        }
    }
}

/// `c[r, q] += Σ_j a[r, j] · b[q, j]` (a · bᵀ): a [rows × inner], b [cols × inner], c [rows × cols].
/// Blocked 4 rows of a × 3 rows of b: 12 f32x8 accumulators of dot products, plus 3 loads of b
/// and one of a per step of j, fill the 16 AVX2 registers. Each c entry's sum runs in the same
/// order whatever the block shape, so the blocking does not change the result. A last block
/// takes the 2 or 1 rows of b left over.
pub fn gemm_nt_accumulate(rows: usize, inner: usize, cols: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_nt_accumulate_strided(rows, inner, cols, a, inner, b, inner, c)
}

/// [`gemm_nt_accumulate`] with the rows of a `lda` apart and those of b `ldb` apart.
pub fn gemm_nt_accumulate_strided(
    rows: usize,
    inner: usize,
    cols: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        a.len() >= (rows - 1) * lda + inner && b.len() >= (cols - 1) * ldb + inner && c.len() >= rows * cols
    );
    let ld = Strides { lda, ldb, ldc: cols };
    for r0 in (0..rows).step_by(4) {
        let nr = (rows - r0).min(4);
        let mut q0 = 0;
        while q0 + 3 <= cols {
            gemm_nt_block::<3>(inner, a, b, c, ld, r0, nr, q0);
            q0 += 3;
        }
        match cols - q0 {
            2 => gemm_nt_block::<2>(inner, a, b, c, ld, r0, nr, q0),
            1 => gemm_nt_block::<1>(inner, a, b, c, ld, r0, nr, q0),
            _ => {}
        }
    }
}

/// One block of [`gemm_nt_accumulate_strided`]: `c[r0 + r, q0 + q] += Σ_j a[r0 + r, j] · b[q0 + q, j]`
/// for r < nr ≤ 4, q < COLS ≤ 3, in 4·COLS f32x8 accumulators.
#[inline(always)]
fn gemm_nt_block<const COLS: usize>(
    inner: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ld: Strides,
    r0: usize,
    nr: usize,
    q0: usize,
) {
    let vec_end = inner / 8 * 8;
    let mut acc = [[f32x8::ZERO; COLS]; 4];
    let mut j = 0;
    while j < vec_end {
        let bv: [f32x8; COLS] = std::array::from_fn(|q| load(&b[(q0 + q) * ld.ldb + j..]));
        for r in 0..nr {
            let av = load(&a[(r0 + r) * ld.lda + j..]);
            for q in 0..COLS {
                acc[r][q] = av.mul_add(bv[q], acc[r][q]);
            }
        }
        j += 8;
    }
    for r in 0..nr {
        for q in 0..COLS {
            let mut sum = acc[r][q].reduce_add();
            for jj in vec_end..inner {
                sum += a[(r0 + r) * ld.lda + jj] * b[(q0 + q) * ld.ldb + jj];
            }
            c[(r0 + r) * ld.ldc + q0 + q] += sum;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: grouped 1×1 convolution with every tap slice of the templates
// ---------------------------------------------------------------------------------------------

/// Copies the shifted, strided view of X that tap (kh, kw) reads, for the Cg
/// channels of group g of image `input_image` [C, H, W]:
/// `columns[i, h·Wo + w] = X[g·Cg + i, h·s + kh − p, w·s + kw − p]` (0 in the padding).
/// columns: [Cg, Ho·Wo]
pub fn tap_columns(
    shape: &SbfShape,
    input_image: &[f32],
    g: usize,
    kh: usize,
    kw: usize,
    columns: &mut [f32],
) {
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let cg = shape.group_channels();
    for i in 0..cg {
        let plane = &input_image[(g * cg + i) * h_in * w_in..][..h_in * w_in];
        let column = &mut columns[i * h_out * w_out..][..h_out * w_out];
        for h in 0..h_out {
            let row = &mut column[h * w_out..][..w_out];
            let Some(y) = (h * shape.stride + kh)
                .checked_sub(shape.padding)
                .filter(|&y| y < h_in)
            else {
                row.fill(0.0);
                continue;
            };
            let src = &plane[y * w_in..][..w_in];
            for w in 0..w_out {
                let x = (w * shape.stride + kw).wrapping_sub(shape.padding);
                row[w] = if x < w_in { src[x] } else { 0.0 };
            }
        }
    }
}

/// The transpose of [`tap_columns`]: `dX[g·Cg + i, h·s+kh−p, w·s+kw−p] += columns[i, h·Wo + w]`
/// (col2im of one tap; positions in the padding are dropped).
pub fn add_tap_columns(
    shape: &SbfShape,
    columns: &[f32],
    g: usize,
    kh: usize,
    kw: usize,
    grad_image: &mut [f32],
) {
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let cg = shape.group_channels();
    for i in 0..cg {
        let plane = &mut grad_image[(g * cg + i) * h_in * w_in..][..h_in * w_in];
        let column = &columns[i * h_out * w_out..][..h_out * w_out];
        for h in 0..h_out {
            let Some(y) = (h * shape.stride + kh)
                .checked_sub(shape.padding)
                .filter(|&y| y < h_in)
            else {
                continue;
            };
            let dst = &mut plane[y * w_in..][..w_in];
            for w in 0..w_out {
                let x = (w * shape.stride + kw).wrapping_sub(shape.padding);
                if x < w_in {
                    dst[x] += column[h * w_out + w];
                }
            }
        }
    }
}

/// Repacks B [M, C, K, K] as per-group GEMM operands `[G, K², M, Cg]`:
/// `packed[g][tap][m][i]` = B[m, g·Cg + i, tap]. Per group this is one [K²·M × Cg] matrix
/// (stride 1) or K² matrices [M × Cg] (one per tap, stride > 1).
pub fn pack_templates(shape: &SbfShape, templates: &[f32]) -> Vec<f32> {
    let (m_count, taps, cg, c) = (
        shape.templates,
        shape.taps(),
        shape.group_channels(),
        shape.in_channels,
    );
    let mut packed = vec![0.0; shape.groups * taps * m_count * cg]; // [G, K², M, Cg]
    for g in 0..shape.groups {
        for tap in 0..taps {
            for m in 0..m_count {
                for i in 0..cg {
                    packed[((g * taps + tap) * m_count + m) * cg + i] =
                        templates[(m * c + g * cg + i) * taps + tap];
                }
            }
        }
    }
    packed
}

/// The transpose of each per-group operand of [`pack_templates`]: `[G, Cg, K², M]`,
/// `packed[g][i][tap][m]` = B[m, g·Cg + i, tap].
pub fn pack_templates_transposed(shape: &SbfShape, templates: &[f32]) -> Vec<f32> {
    let (m_count, taps, cg, c) = (
        shape.templates,
        shape.taps(),
        shape.group_channels(),
        shape.in_channels,
    );
    let mut packed = vec![0.0; shape.groups * cg * taps * m_count]; // [G, Cg, K², M]
    for g in 0..shape.groups {
        for i in 0..cg {
            for tap in 0..taps {
                for m in 0..m_count {
                    packed[((g * cg + i) * taps + tap) * m_count + m] =
                        templates[(m * c + g * cg + i) * taps + tap];
                }
            }
        }
    }
    packed
}

/// Stage 1, naive: `P[b,g,tap,m,j] = Σ_{i∈g} X[b,i,y,x] · B[m,i,kh,kw]` with (y, x) = map_source(j)
/// (0 where j reads the padding). Overwrites maps.
pub fn stage1_forward_naive(shape: &SbfShape, input: &[f32], templates: &[f32], maps: &mut [f32]) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("P", maps.len(), shape.maps_len());
    let (c, k, cg) = (shape.in_channels, shape.kernel, shape.group_channels());
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    for b in 0..shape.batch {
        for g in 0..shape.groups {
            for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                let tap = kh * k + kw;
                for m in 0..shape.templates {
                    let base = shape.map_offset(b, g, tap, m);
                    for j in 0..shape.map_plane() {
                        let mut sum = 0.0;
                        if let Some((y, x)) = shape.map_source(j, kh, kw) {
                            for i in g * cg..(g + 1) * cg {
                                sum += input[((b * c + i) * h_in + y) * w_in + x]
                                    * templates[(m * c + i) * k * k + tap];
                            }
                        }
                        maps[base + j] = sum;
                    }
                }
            }
        }
    }
}

/// dB, naive: `dB[m,i,kh,kw] += Σ_{b,j} dP[b,g(i),tap,m,j] · X[b,i,map_source(j)]`.
pub fn stage1_templates_grad_naive(
    shape: &SbfShape,
    input: &[f32],
    maps_grad: &[f32],
    templates_grad: &mut [f32],
) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("dP", maps_grad.len(), shape.maps_len());
    shape.check("dB", templates_grad.len(), shape.templates_len());
    let (c, k, cg) = (shape.in_channels, shape.kernel, shape.group_channels());
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    for m in 0..shape.templates {
        for i in 0..c {
            let g = i / cg;
            for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                let tap = kh * k + kw;
                let mut sum = 0.0;
                for b in 0..shape.batch {
                    let base = shape.map_offset(b, g, tap, m);
                    for j in 0..shape.map_plane() {
                        if let Some((y, x)) = shape.map_source(j, kh, kw) {
                            sum += maps_grad[base + j] * input[((b * c + i) * h_in + y) * w_in + x];
                        }
                    }
                }
                templates_grad[(m * c + i) * k * k + tap] += sum;
            }
        }
    }
}

/// dX, naive: `dX[b,i,y,x] += Σ_{tap,m} B[m,i,kh,kw] · dP[b,g(i),tap,m,j]` over the plane indices j
/// with map_source(j) = (y, x) (a scatter over j: obviously the transpose of the naive stage 1).
pub fn stage1_input_grad_naive(
    shape: &SbfShape,
    maps_grad: &[f32],
    templates: &[f32],
    input_grad: &mut [f32],
) {
    shape.check("dP", maps_grad.len(), shape.maps_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("dX", input_grad.len(), shape.input_len());
    let (c, k, cg) = (shape.in_channels, shape.kernel, shape.group_channels());
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    for b in 0..shape.batch {
        for i in 0..c {
            let g = i / cg;
            for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                let tap = kh * k + kw;
                for m in 0..shape.templates {
                    let base = shape.map_offset(b, g, tap, m);
                    for j in 0..shape.map_plane() {
                        if let Some((y, x)) = shape.map_source(j, kh, kw) {
                            input_grad[((b * c + i) * h_in + y) * w_in + x] +=
                                templates[(m * c + i) * k * k + tap] * maps_grad[base + j];
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: the gather (TransformGather) and its transposes
// ---------------------------------------------------------------------------------------------

/// For output row h at tap (kh, kw): the row of the P plane it reads and the range of output
/// columns w whose read is inside the plane, with the plane column of the first one:
/// `(plane_row_start, w_begin, w_end)`, or None if the whole row reads padding.
///
/// Input grid (stride 1): row y = h + kh − p, columns x = w + kw − p ∈ [0, W).
/// Strided layout: row h, all columns (padding reads are stored zeros).
#[inline]
fn read_segment(shape: &SbfShape, h: usize, kh: usize, kw: usize) -> Option<(usize, usize, usize)> {
    if !shape.maps_on_input_grid() {
        let w_out = shape.out_width();
        return Some((h * w_out, 0, w_out));
    }
    let (p, w_in, w_out) = (shape.padding, shape.in_width, shape.out_width());
    let y = (h + kh).checked_sub(p).filter(|&y| y < shape.in_height)?;
    let w_begin = p.saturating_sub(kw);
    let w_end = (w_in + p).saturating_sub(kw).min(w_out);
    (w_begin < w_end).then(|| (y * w_in + w_begin + kw - p, w_begin, w_end))
}

/// Stage 2, naive: `Y[b,n,h,w] = Σ_g Σ_tap t(n,g,tap) · P[b,g,tap,m(n), map_position(h,w,kh,kw)]`. Overwrites output.
pub fn gather_forward_naive(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    maps: &[f32],
    output: &mut [f32],
) {
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("P", maps.len(), shape.maps_len());
    shape.check("Y", output.len(), shape.output_len());
    let (k, w_out, plane) = (shape.kernel, shape.out_width(), shape.out_plane());
    for b in 0..shape.batch {
        for n in 0..shape.out_channels {
            for h in 0..shape.out_height() {
                for w in 0..w_out {
                    let mut sum = 0.0;
                    for g in 0..shape.groups {
                        for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                            let Some(j) = shape.map_position(h, w, kh, kw) else {
                                continue;
                            };
                            let t = mask_value(shape, masks, assignment.mask_row[n], g, kh * k + kw);
                            sum +=
                                t * maps[shape.map_offset(b, g, kh * k + kw, assignment.template_of[n]) + j];
                        }
                    }
                    output[(b * shape.out_channels + n) * plane + h * w_out + w] = sum;
                }
            }
        }
    }
}

/// dT, naive: `dT[row(n),g,tap] += Σ_{b,h,w} R[b,n,h,w] · P[b,g,tap,m(n),map_position(h,w,kh,kw)]`.
pub fn gather_masks_grad_naive(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    maps: &[f32],
    grad_output: &[f32],
    masks_grad: &mut [f32],
) {
    shape.check("P", maps.len(), shape.maps_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    shape.check("dT", masks_grad.len(), shape.masks_len());
    let (k, w_out, plane) = (shape.kernel, shape.out_width(), shape.out_plane());
    for n in 0..shape.out_channels {
        let Some(r) = assignment.mask_row[n] else { continue };
        for g in 0..shape.groups {
            for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                let base_of = |b| shape.map_offset(b, g, kh * k + kw, assignment.template_of[n]);
                let mut sum = 0.0;
                for b in 0..shape.batch {
                    for h in 0..shape.out_height() {
                        for w in 0..w_out {
                            if let Some(j) = shape.map_position(h, w, kh, kw) {
                                sum += grad_output[(b * shape.out_channels + n) * plane + h * w_out + w]
                                    * maps[base_of(b) + j];
                            }
                        }
                    }
                }
                masks_grad[(r * shape.groups + g) * shape.taps() + kh * k + kw] += sum;
            }
        }
    }
}

/// dP, naive: `dP[b,g,tap,m(n),map_position(h,w,kh,kw)] += t(n,g,tap) · R[b,n,h,w]` over all n, h, w
/// (a scatter; dP is zeroed first, so it overwrites maps_grad).
pub fn gather_maps_grad_naive(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    grad_output: &[f32],
    maps_grad: &mut [f32],
) {
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    shape.check("dP", maps_grad.len(), shape.maps_len());
    let (k, w_out, plane) = (shape.kernel, shape.out_width(), shape.out_plane());
    maps_grad.fill(0.0);
    for b in 0..shape.batch {
        for n in 0..shape.out_channels {
            for g in 0..shape.groups {
                for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                    let t = mask_value(shape, masks, assignment.mask_row[n], g, kh * k + kw);
                    let base = shape.map_offset(b, g, kh * k + kw, assignment.template_of[n]);
                    for h in 0..shape.out_height() {
                        for w in 0..w_out {
                            if let Some(j) = shape.map_position(h, w, kh, kw) {
                                maps_grad[base + j] +=
                                    t * grad_output[(b * shape.out_channels + n) * plane + h * w_out + w];
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fast kernels, built from per-image blocks
// ---------------------------------------------------------------------------------------------

/// The GEMM operands of stage 1's backward into X: per group, Bᵀ as
/// `[Cg × K²·M]` (stride 1; layout [G, Cg, K², M]) or per tap `[Cg × M]` (stride > 1; layout [G, K², Cg, M]).
fn pack_input_grad_operands(shape: &SbfShape, templates: &[f32]) -> Vec<f32> {
    if shape.maps_on_input_grid() {
        return pack_templates_transposed(shape, templates);
    }
    let (m_count, taps, cg, c) = (
        shape.templates,
        shape.taps(),
        shape.group_channels(),
        shape.in_channels,
    );
    let mut per_tap = vec![0.0f32; shape.groups * taps * cg * m_count]; // [G, K², Cg, M]
    for g in 0..shape.groups {
        for tap in 0..taps {
            for i in 0..cg {
                for m in 0..m_count {
                    per_tap[((g * taps + tap) * cg + i) * m_count + m] =
                        templates[(m * c + g * cg + i) * taps + tap];
                }
            }
        }
    }
    per_tap
}

/// Scratch for the strided layout's tap columns ([Cg, Ho·Wo]); empty at stride 1.
fn columns_scratch(shape: &SbfShape) -> Vec<f32> {
    vec![
        0.0f32;
        if shape.maps_on_input_grid() {
            0
        } else {
            shape.group_channels() * shape.out_plane()
        }
    ]
}

/// Stage 1 of one image (overwrites maps_image [G, K², M, plane]); packed = [`pack_templates`].
fn stage1_image(
    shape: &SbfShape,
    packed: &[f32],
    input_image: &[f32],
    maps_image: &mut [f32],
    columns: &mut [f32],
) {
    let (m_count, cg, plane, k, taps) = (
        shape.templates,
        shape.group_channels(),
        shape.map_plane(),
        shape.kernel,
        shape.taps(),
    );
    for g in 0..shape.groups {
        if shape.maps_on_input_grid() {
            // P[b,g] [K²·M × H·W] = B_g [K²·M × Cg] · X[b, group g] [Cg × H·W]
            let a = &packed[g * taps * m_count * cg..][..taps * m_count * cg];
            let x_group = &input_image[g * cg * plane..][..cg * plane];
            let c = &mut maps_image[g * taps * m_count * plane..][..taps * m_count * plane];
            gemm_overwrite(taps * m_count, cg, plane, a, x_group, c);
            continue;
        }
        for tap in 0..taps {
            // P[b,g,tap] [M × Ho·Wo] = B_{g,tap} [M × Cg] · columns [Cg × Ho·Wo]
            tap_columns(shape, input_image, g, tap / k, tap % k, columns);
            let a = &packed[(g * taps + tap) * m_count * cg..][..m_count * cg];
            let c = &mut maps_image[(g * taps + tap) * m_count * plane..][..m_count * plane];
            gemm_overwrite(m_count, cg, plane, a, columns, c);
        }
    }
}

/// dB of one image, accumulated into packed_grad [G, K², M, Cg] (the transposed stage-1 GEMMs).
fn templates_grad_image(
    shape: &SbfShape,
    input_image: &[f32],
    maps_grad_image: &[f32],
    packed_grad: &mut [f32],
    columns: &mut [f32],
) {
    let (m_count, cg, plane, k, taps) = (
        shape.templates,
        shape.group_channels(),
        shape.map_plane(),
        shape.kernel,
        shape.taps(),
    );
    for g in 0..shape.groups {
        if shape.maps_on_input_grid() {
            // dB_g [K²·M × Cg] += dP[b,g] [K²·M × H·W] · X[b,g]ᵀ
            let dp = &maps_grad_image[g * taps * m_count * plane..][..taps * m_count * plane];
            let x_group = &input_image[g * cg * plane..][..cg * plane];
            let db = &mut packed_grad[g * taps * m_count * cg..][..taps * m_count * cg];
            gemm_nt_accumulate(taps * m_count, plane, cg, dp, x_group, db);
            continue;
        }
        for tap in 0..taps {
            // dB_{g,tap} [M × Cg] += dP[b,g,tap] [M × Ho·Wo] · columnsᵀ
            tap_columns(shape, input_image, g, tap / k, tap % k, columns);
            let dp = &maps_grad_image[(g * taps + tap) * m_count * plane..][..m_count * plane];
            let db = &mut packed_grad[(g * taps + tap) * m_count * cg..][..m_count * cg];
            gemm_nt_accumulate(m_count, plane, cg, dp, columns, db);
        }
    }
}

/// dX of one image, accumulated into grad_image [C, H, W]; operands = [`pack_input_grad_operands`].
fn input_grad_image(
    shape: &SbfShape,
    operands: &[f32],
    maps_grad_image: &[f32],
    grad_image: &mut [f32],
    columns: &mut [f32],
) {
    let (m_count, cg, plane, k, taps) = (
        shape.templates,
        shape.group_channels(),
        shape.map_plane(),
        shape.kernel,
        shape.taps(),
    );
    for g in 0..shape.groups {
        if shape.maps_on_input_grid() {
            // dX[b,g] [Cg × H·W] += Bᵀ_g [Cg × K²·M] · dP[b,g] [K²·M × H·W]
            let a = &operands[g * cg * taps * m_count..][..cg * taps * m_count];
            let dp = &maps_grad_image[g * taps * m_count * plane..][..taps * m_count * plane];
            gemm_accumulate(
                cg,
                taps * m_count,
                plane,
                a,
                dp,
                &mut grad_image[g * cg * plane..][..cg * plane],
            );
            continue;
        }
        for tap in 0..taps {
            // dcolumns [Cg × Ho·Wo] = Bᵀ_{g,tap} [Cg × M] · dP[b,g,tap] [M × Ho·Wo], then col2im
            let a = &operands[(g * taps + tap) * cg * m_count..][..cg * m_count];
            let dp = &maps_grad_image[(g * taps + tap) * m_count * plane..][..m_count * plane];
            gemm_overwrite(cg, m_count, plane, a, dp, columns);
            add_tap_columns(shape, columns, g, tap / k, tap % k, grad_image);
        }
    }
}

/// dB [M, C, K, K] += packed_grad [G, K², M, Cg].
fn unpack_templates_grad(shape: &SbfShape, packed_grad: &[f32], templates_grad: &mut [f32]) {
    let (m_count, cg, taps) = (shape.templates, shape.group_channels(), shape.taps());
    for g in 0..shape.groups {
        for tap in 0..taps {
            for m in 0..m_count {
                for i in 0..cg {
                    templates_grad[(m * shape.in_channels + g * cg + i) * taps + tap] +=
                        packed_grad[((g * taps + tap) * m_count + m) * cg + i];
                }
            }
        }
    }
}

/// "Same" padding at stride 1 (2p + 1 = K): P and Y planes are both H×W with row stride W, so
/// every output j = h·W + w reads P at j + offset, offset = (kh−p)·W + (kw−p), and one long
/// contiguous range of outputs [begin, end) covers all reads of a tap that are inside P.
/// Inside that range the reads of |kw−p| columns per row wrap into the neighbouring row
/// (they should read padding); [`for_each_wrapped_read`] lists them so callers undo them.
#[inline]
fn same_padding_range(shape: &SbfShape, kh: usize, kw: usize) -> Option<(usize, usize, isize)> {
    let (h, w) = (shape.in_height as isize, shape.in_width as isize);
    let (dy, dx) = (
        kh as isize - shape.padding as isize,
        kw as isize - shape.padding as isize,
    );
    let (h_begin, h_end) = ((-dy).max(0), (h - dy).min(h));
    let begin = h_begin * w + (-dx).max(0);
    let end = h_end * w - dx.max(0);
    (begin < end).then_some((begin as usize, end as usize, dy * w + dx))
}

/// Calls `undo(j)` for every output j in [`same_padding_range`] whose read wrapped around a row end.
#[inline]
fn for_each_wrapped_read(shape: &SbfShape, kh: usize, kw: usize, mut undo: impl FnMut(usize)) {
    let Some((begin, end, _)) = same_padding_range(shape, kh, kw) else {
        return;
    };
    let w = shape.in_width;
    let dx = kw as isize - shape.padding as isize;
    let columns = if dx < 0 {
        0..(-dx) as usize
    } else {
        w - dx as usize..w
    };
    for row_start in (begin / w * w..end).step_by(w) {
        for column in columns.clone() {
            let j = row_start + column;
            if j >= begin && j < end {
                undo(j);
            }
        }
    }
}

impl SbfShape {
    /// Stride 1 with 2p + 1 = K: the layout of [`same_padding_range`].
    fn same_padding(&self) -> bool {
        self.stride == 1 && 2 * self.padding + 1 == self.kernel
    }
}

/// Y[b,n] (one output plane, overwritten) = Σ_g Σ_tap t(n,g,tap) · (the read segments of P[b,g,tap,m(n)]).
fn gather_plane(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    maps_image: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let (k, w_out, map_plane) = (shape.kernel, shape.out_width(), shape.map_plane());
    let (m, row) = (assignment.template_of[n], assignment.mask_row[n]);
    y.fill(0.0);
    for g in 0..shape.groups {
        for tap in 0..k * k {
            let t = mask_value(shape, masks, row, g, tap);
            let map = &maps_image[shape.map_offset(0, g, tap, m)..][..map_plane];
            if shape.same_padding() {
                // y[j] += t·P[j + offset] over one long range, then undo the wrapped reads.
                let Some((begin, end, offset)) = same_padding_range(shape, tap / k, tap % k) else {
                    continue;
                };
                let read = (begin as isize + offset) as usize;
                axpy(t, &map[read..read + (end - begin)], &mut y[begin..end]);
                for_each_wrapped_read(shape, tap / k, tap % k, |j| {
                    y[j] -= t * map[(j as isize + offset) as usize];
                });
                continue;
            }
            for h in 0..shape.out_height() {
                let Some((start, w0, w1)) = read_segment(shape, h, tap / k, tap % k) else {
                    continue;
                };
                axpy(
                    t,
                    &map[start..start + (w1 - w0)],
                    &mut y[h * w_out + w0..h * w_out + w1],
                );
            }
        }
    }
}

/// dT[row(n), g, tap] contribution of one image: Σ_{h,w} R[b,n,h,w] · P[b,g,tap,m(n), read position].
fn masks_grad_entry(
    shape: &SbfShape,
    maps_image: &[f32],
    dy_plane: &[f32],
    m: usize,
    g: usize,
    tap: usize,
) -> f32 {
    let (k, w_out) = (shape.kernel, shape.out_width());
    let map = &maps_image[shape.map_offset(0, g, tap, m)..][..shape.map_plane()];
    if shape.same_padding() {
        // Σ_j R[j]·P[j + offset] over one long range, minus the wrapped reads.
        let Some((begin, end, offset)) = same_padding_range(shape, tap / k, tap % k) else {
            return 0.0;
        };
        let read = (begin as isize + offset) as usize;
        let mut sum = dot(&dy_plane[begin..end], &map[read..read + (end - begin)]);
        for_each_wrapped_read(shape, tap / k, tap % k, |j| {
            sum -= dy_plane[j] * map[(j as isize + offset) as usize];
        });
        return sum;
    }
    let mut sum = 0.0;
    for h in 0..shape.out_height() {
        let Some((start, w0, w1)) = read_segment(shape, h, tap / k, tap % k) else {
            continue;
        };
        sum += dot(
            &dy_plane[h * w_out + w0..h * w_out + w1],
            &map[start..start + (w1 - w0)],
        );
    }
    sum
}

/// dP[b,g,tap,m] (one map plane, overwritten) = Σ_{n: m(n)=m} t(n,g,tap) · R[b,n] at the positions it read.
fn maps_grad_plane(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    outputs_of_template: &[usize],
    grad_output_image: &[f32],
    g: usize,
    tap: usize,
    dp: &mut [f32],
) {
    let (plane, k, w_out) = (shape.out_plane(), shape.kernel, shape.out_width());
    dp.fill(0.0);
    for &n in outputs_of_template {
        let t = mask_value(shape, masks, assignment.mask_row[n], g, tap);
        let dy = &grad_output_image[n * plane..][..plane];
        if shape.same_padding() {
            // dP[j + offset] += t·R[j] over one long range, then undo the wrapped writes.
            let Some((begin, end, offset)) = same_padding_range(shape, tap / k, tap % k) else {
                continue;
            };
            let write = (begin as isize + offset) as usize;
            axpy(t, &dy[begin..end], &mut dp[write..write + (end - begin)]);
            for_each_wrapped_read(shape, tap / k, tap % k, |j| {
                dp[(j as isize + offset) as usize] -= t * dy[j];
            });
            continue;
        }
        for h in 0..shape.out_height() {
            let Some((start, w0, w1)) = read_segment(shape, h, tap / k, tap % k) else {
                continue;
            };
            axpy(
                t,
                &dy[h * w_out + w0..h * w_out + w1],
                &mut dp[start..start + (w1 - w0)],
            );
        }
    }
}

/// Stage 1, fast: one image per task (in parallel). Overwrites maps.
///
/// - stride 1: per group, ONE GEMM `P[b,g] [K²·M × H·W] = packed B [K²·M × Cg] · X[b, group g] [Cg × H·W]`
///   (X's channels of a group are already a contiguous [Cg × H·W] matrix: no copy at all);
/// - stride > 1: per group and tap, `P[b,g,tap] [M × Ho·Wo] = packed B_tap [M × Cg] · columns [Cg × Ho·Wo]`,
///   the columns being the tap's strided view of X (only the positions that are read).
pub fn stage1_forward(shape: &SbfShape, input: &[f32], templates: &[f32], maps: &mut [f32]) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("P", maps.len(), shape.maps_len());
    let packed = pack_templates(shape, templates); // [G, K², M, Cg]
    let image_len = shape.in_channels * shape.in_height * shape.in_width;
    maps.par_chunks_mut(shape.maps_per_image())
        .enumerate()
        .for_each_init(
            || columns_scratch(shape),
            |columns, (b, maps_image)| {
                stage1_image(
                    shape,
                    &packed,
                    &input[b * image_len..][..image_len],
                    maps_image,
                    columns,
                )
            },
        );
}

/// dB, fast: per image (in parallel, partial sums in packed layout reduced at the end), the
/// transposed stage-1 GEMMs.
pub fn stage1_templates_grad(shape: &SbfShape, input: &[f32], maps_grad: &[f32], templates_grad: &mut [f32]) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("dP", maps_grad.len(), shape.maps_len());
    shape.check("dB", templates_grad.len(), shape.templates_len());
    let image_len = shape.in_channels * shape.in_height * shape.in_width;
    let packed_len = shape.templates_len();
    let packed_grad = (0..shape.batch)
        .into_par_iter()
        .fold(
            || (vec![0.0f32; packed_len], columns_scratch(shape)),
            |(mut partial, mut columns), b| {
                let maps_grad_image = &maps_grad[b * shape.maps_per_image()..][..shape.maps_per_image()];
                templates_grad_image(
                    shape,
                    &input[b * image_len..][..image_len],
                    maps_grad_image,
                    &mut partial,
                    &mut columns,
                );
                (partial, columns)
            },
        )
        .map(|(partial, _)| partial)
        .reduce(|| vec![0.0f32; packed_len], add_vectors);
    unpack_templates_grad(shape, &packed_grad, templates_grad);
}

fn add_vectors(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
    a
}

/// dX, fast: per image (in parallel): stride 1, one GEMM per group
/// `dX[b,g] [Cg × H·W] += Bᵀ_g [Cg × K²·M] · dP[b,g] [K²·M × H·W]`; stride > 1, per tap
/// `dcolumns [Cg × Ho·Wo] = Bᵀ_tap [Cg × M] · dP[b,g,tap] [M × Ho·Wo]`, then the col2im of the tap into dX.
pub fn stage1_input_grad(shape: &SbfShape, maps_grad: &[f32], templates: &[f32], input_grad: &mut [f32]) {
    shape.check("dP", maps_grad.len(), shape.maps_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("dX", input_grad.len(), shape.input_len());
    let operands = pack_input_grad_operands(shape, templates);
    let image_len = shape.in_channels * shape.in_height * shape.in_width;
    input_grad.par_chunks_mut(image_len).enumerate().for_each_init(
        || columns_scratch(shape),
        |columns, (b, grad_image)| {
            let maps_grad_image = &maps_grad[b * shape.maps_per_image()..][..shape.maps_per_image()];
            input_grad_image(shape, &operands, maps_grad_image, grad_image, columns)
        },
    );
}

/// Stage 2, fast: one output plane per task (in parallel); for each group, tap and output row,
/// one f32x8 axpy of the row segment of the template's map that it reads.
pub fn gather_forward(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    maps: &[f32],
    output: &mut [f32],
) {
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("P", maps.len(), shape.maps_len());
    shape.check("Y", output.len(), shape.output_len());
    let n_out = shape.out_channels;
    output
        .par_chunks_mut(shape.out_plane())
        .enumerate()
        .for_each(|(bn, y)| {
            let (b, n) = (bn / n_out, bn % n_out);
            let maps_image = &maps[b * shape.maps_per_image()..][..shape.maps_per_image()];
            gather_plane(shape, assignment, masks, maps_image, n, y);
        });
}

/// For each mask row r, the transformed output n that uses it.
fn output_of_rows(shape: &SbfShape, assignment: &TemplateAssignment) -> Vec<usize> {
    let mut output_of_row = vec![0; shape.transformed()];
    for n in 0..shape.out_channels {
        if let Some(r) = assignment.mask_row[n] {
            output_of_row[r] = n;
        }
    }
    output_of_row
}

/// dT, fast: one mask row per task (in parallel), f32x8 dot products of the row segments.
pub fn gather_masks_grad(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    maps: &[f32],
    grad_output: &[f32],
    masks_grad: &mut [f32],
) {
    shape.check("P", maps.len(), shape.maps_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    shape.check("dT", masks_grad.len(), shape.masks_len());
    let (plane, taps) = (shape.out_plane(), shape.taps());
    let output_of_row = output_of_rows(shape, assignment);
    let row_len = shape.groups * taps;
    if row_len == 0 {
        return;
    }
    masks_grad
        .par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(r, dt)| {
            let n = output_of_row[r];
            for b in 0..shape.batch {
                let maps_image = &maps[b * shape.maps_per_image()..][..shape.maps_per_image()];
                let dy = &grad_output[(b * shape.out_channels + n) * plane..][..plane];
                for g in 0..shape.groups {
                    for tap in 0..taps {
                        dt[g * taps + tap] +=
                            masks_grad_entry(shape, maps_image, dy, assignment.template_of[n], g, tap);
                    }
                }
            }
        });
}

/// dP, fast: a gather over the outputs of each template (no atomics): one plane `dP[b,g,tap,m]` per
/// task (in parallel); for each output n with m(n) = m and each output row h, one f32x8 axpy of the
/// row of R into the plane segment it read (for stride 1 this is the solve h = y − kh + p).
pub fn gather_maps_grad(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    grad_output: &[f32],
    maps_grad: &mut [f32],
) {
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    shape.check("dP", maps_grad.len(), shape.maps_len());
    let (m_count, taps) = (shape.templates, shape.taps());
    let outputs_of = assignment.outputs_of_templates(m_count);
    let output_image = shape.out_channels * shape.out_plane();
    maps_grad
        .par_chunks_mut(shape.map_plane())
        .enumerate()
        .for_each(|(index, dp)| {
            // index = ((b·G + g)·K² + tap)·M + m
            let m = index % m_count;
            let tap = index / m_count % taps;
            let g = index / (m_count * taps) % shape.groups;
            let b = index / (m_count * taps * shape.groups);
            let dy_image = &grad_output[b * output_image..][..output_image];
            maps_grad_plane(shape, assignment, masks, &outputs_of[m], dy_image, g, tap, dp);
        });
}

// ---------------------------------------------------------------------------------------------
// The fused layer kernels: both stages per image, with P[b] in a per-worker scratch buffer
// ---------------------------------------------------------------------------------------------
//
// The maps P hold K²·G·M planes per image (G·K²·M/N times the output: 9× for 16 channels at
// M = 8, G = 2). The layer never materialises them for the whole batch: the forward computes
// P[b] into a per-worker buffer and gathers it while it is in cache; the backward recomputes
// P[b] (one stage-1 GEMM per image) when dT is wanted, rather than keeping the batch's P
// alive between forward and backward. Peak memory is then one P[b] and one dP[b] per worker.

/// The layer's forward: per image (in parallel) stage 1 into a scratch `P[b]`, then stage 2 from
/// it. Overwrites output [Bt, N, Ho, Wo].
pub fn two_stage_forward(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("Y", output.len(), shape.output_len());
    if shape.uses_row_bands() {
        return two_stage_forward_banded(
            shape,
            assignment,
            input,
            templates,
            masks,
            output,
            shape.band_rows(),
        );
    }
    let packed = pack_templates(shape, templates); // [G, K², M, Cg]
    let (image_len, plane) = (
        shape.in_channels * shape.in_height * shape.in_width,
        shape.out_plane(),
    );
    output
        .par_chunks_mut(shape.out_channels * plane)
        .enumerate()
        .for_each_init(
            // (P[b] [G, K², M, plane], columns)
            || (vec![0.0f32; shape.maps_per_image()], columns_scratch(shape)),
            |(maps_image, columns), (b, output_image)| {
                stage1_image(
                    shape,
                    &packed,
                    &input[b * image_len..][..image_len],
                    maps_image,
                    columns,
                );
                for (n, y) in output_image.chunks_mut(plane).enumerate() {
                    gather_plane(shape, assignment, masks, maps_image, n, y);
                }
            },
        );
}

/// Where [`two_stage_backward`] accumulates; `None` skips that gradient.
pub struct TwoStageGrads<'a> {
    /// dX [Bt, C, H, W]
    pub input: Option<&'a mut [f32]>,
    /// dB [M, C, K, K]
    pub templates: Option<&'a mut [f32]>,
    /// dT [N−M, G, K, K]
    pub masks: Option<&'a mut [f32]>,
}

/// The layer's backward (view B), per image in parallel: dT from a recomputed `P[b]` and `R[b]`;
/// `dP[b]` by the gather over outputs; then dB (partial sums per worker) and `dX[b]` from `dP[b]`.
/// Accumulates into `grads`.
pub fn two_stage_backward(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grads: TwoStageGrads,
) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    if shape.uses_row_bands() {
        let band_rows = shape.band_rows();
        return two_stage_backward_banded(
            shape,
            assignment,
            input,
            templates,
            masks,
            grad_output,
            grads,
            band_rows,
        );
    }
    let (image_len, plane, taps) = (
        shape.in_channels * shape.in_height * shape.in_width,
        shape.out_plane(),
        shape.taps(),
    );
    let output_image = shape.out_channels * plane;
    let (want_masks, want_templates) = (grads.masks.is_some(), grads.templates.is_some());
    let want_maps_grad = want_templates || grads.input.is_some();
    let packed = pack_templates(shape, templates); // [G, K², M, Cg]
    let operands = pack_input_grad_operands(shape, templates);
    let outputs_of = assignment.outputs_of_templates(shape.templates);
    let output_of_row = output_of_rows(shape, assignment);
    let input_grad_images: Vec<Option<&mut [f32]>> = match grads.input {
        Some(dx) => dx.chunks_mut(image_len).map(Some).collect(),
        None => (0..shape.batch).map(|_| None).collect(),
    };
    // Per worker: dB partial [G, K², M, Cg], dT partial [N−M, G, K²], and scratch P[b] / dP[b]
    // [G, K², M, plane] and columns.
    struct Worker {
        templates_grad: Vec<f32>,
        masks_grad: Vec<f32>,
        maps: Vec<f32>,
        maps_grad: Vec<f32>,
        columns: Vec<f32>,
    }
    let new_worker = || Worker {
        templates_grad: vec![0.0; if want_templates { shape.templates_len() } else { 0 }],
        masks_grad: vec![0.0; if want_masks { shape.masks_len() } else { 0 }],
        maps: vec![0.0; if want_masks { shape.maps_per_image() } else { 0 }],
        maps_grad: vec![0.0; if want_maps_grad { shape.maps_per_image() } else { 0 }],
        columns: columns_scratch(shape),
    };
    let total = input_grad_images
        .into_par_iter()
        .enumerate()
        .fold(new_worker, |mut worker, (b, dx_image)| {
            let input_image = &input[b * image_len..][..image_len];
            let dy_image = &grad_output[b * output_image..][..output_image];
            if want_masks {
                // dT[row(n),g,tap] += Σ R[b,n,·]·P[b,g,tap,m(n),·]   (P[b] recomputed)
                stage1_image(shape, &packed, input_image, &mut worker.maps, &mut worker.columns);
                for (r, &n) in output_of_row.iter().enumerate() {
                    let dy = &dy_image[n * plane..][..plane];
                    for g in 0..shape.groups {
                        for tap in 0..taps {
                            worker.masks_grad[(r * shape.groups + g) * taps + tap] +=
                                masks_grad_entry(shape, &worker.maps, dy, assignment.template_of[n], g, tap);
                        }
                    }
                }
            }
            if want_maps_grad {
                // dP[b,g,tap,m,·] = Σ_{n: m(n)=m} t(n,g,tap)·R[b,n,·]
                for (index, dp) in worker.maps_grad.chunks_mut(shape.map_plane()).enumerate() {
                    // index = (g·K² + tap)·M + m
                    let m = index % shape.templates;
                    let (tap, g) = (index / shape.templates % taps, index / (shape.templates * taps));
                    maps_grad_plane(shape, assignment, masks, &outputs_of[m], dy_image, g, tap, dp);
                }
                if want_templates {
                    // dB += dP[b]·X[b]ᵀ
                    templates_grad_image(
                        shape,
                        input_image,
                        &worker.maps_grad,
                        &mut worker.templates_grad,
                        &mut worker.columns,
                    );
                }
                if let Some(dx) = dx_image {
                    // dX[b] += Bᵀ·dP[b]
                    input_grad_image(shape, &operands, &worker.maps_grad, dx, &mut worker.columns);
                }
            }
            worker
        })
        .reduce(new_worker, |mut a, b| {
            a.templates_grad
                .iter_mut()
                .zip(&b.templates_grad)
                .for_each(|(x, y)| *x += y);
            a.masks_grad
                .iter_mut()
                .zip(&b.masks_grad)
                .for_each(|(x, y)| *x += y);
            a
        });
    if let Some(dt) = grads.masks {
        dt.iter_mut().zip(&total.masks_grad).for_each(|(d, p)| *d += p);
    }
    if let Some(db) = grads.templates {
        unpack_templates_grad(shape, &total.templates_grad, db);
    }
}

// ---------------------------------------------------------------------------------------------
// "Same"-padded planes (stride 1, 2p + 1 = K ≤ 8): row bands of guarded planes and
// register-accumulated gathers
// ---------------------------------------------------------------------------------------------
//
// With Ho×Wo = H×W, output j = h·W + w reads P[j + offset(tap)], offset = (kh−p)·W + (kw−p).
// The image is cut into bands of output rows (first..end) small enough that one band of P stays
// in cache (P for a whole 32×32 image at M = 8 is ≈590 KB). The per-worker band of P (and of
// dP, and a copy of R) holds, per plane, the band's rows plus p halo rows above and below (real
// rows, or zeros outside the image) and p guard zeros at each end, so every read of the band's
// outputs is in bounds. Reads that wrap around a row end (|kw−p| columns) are zeroed by a 0/1
// column mask, mask[kw][j] = [0 ≤ (j mod W) + kw − p < W]. Each output vector then sums its
// G·K² terms in a register: one load, one multiply by the mask and one FMA per term. The price
// of a band is its halo: stage 1 computes (rows + 2p)/rows of the band's maps.

/// Plane q of a guarded buffer starts at q·stride + guard.
#[derive(Clone, Copy, Debug)]
struct Guarded {
    guard: usize,
    stride: usize,
}

impl SbfShape {
    /// Guarded planes for bands of up to `rows` output rows: each plane holds the band's rows plus
    /// p halo rows above and below, and p guard elements at each end (for the wrapped column reads).
    fn band_layout(&self, rows: usize) -> Guarded {
        let guard = self.padding * self.in_width + self.padding;
        Guarded {
            guard,
            stride: rows * self.in_width + 2 * guard,
        }
    }

    /// Whether the fused forward takes the banded same-padding path (stride 1, 2p + 1 = K ≤ 8).
    fn uses_row_bands(&self) -> bool {
        self.stride == 1 && 2 * self.padding + 1 == self.kernel && self.kernel <= 8
    }

    /// Output rows per band: as many as keep one image's band of P (G·K²·M planes of
    /// (rows + 2p)·W floats) within [`BAND_MAPS_BYTES`], at least 1, at most H.
    pub fn band_rows(&self) -> usize {
        let row_bytes =
            self.groups * self.taps() * self.templates * self.in_width * std::mem::size_of::<f32>();
        (BAND_MAPS_BYTES / row_bytes.max(1))
            .saturating_sub(2 * self.padding)
            .clamp(1, self.in_height)
    }
}

/// Budget for one worker's band of P in the banded forward. A band recomputes its 2p halo rows
/// (stage 1 costs (rows + 2p)/rows of the plain GEMM), so bands should not be too thin; the
/// gather then reads the band while it is in L2 (512 KiB per core here). Measured with
/// `benchmark::sbf` (see `BAND_MAPS_BYTES` in the commit log / report).
pub const BAND_MAPS_BYTES: usize = 256 * 1024;

/// Output rows `first..end` of an image: one band of the banded forward.
#[derive(Clone, Copy, Debug)]
struct RowBand {
    first: usize,
    end: usize,
}

/// Stage 1 of one band into guarded band planes (layout from [`SbfShape::band_layout`]):
/// P[b,g,tap,m, y, ·] for image rows y in first−p .. end+p; rows outside the image are zeros.
/// Plane-local position of image row y, column x: guard + (y − first)·W + x.
fn stage1_band_guarded(
    shape: &SbfShape,
    packed: &[f32],
    input_image: &[f32],
    maps: &mut [f32],
    layout: Guarded,
    band: RowBand,
) {
    let (rows, cg, w, hw, p) = (
        shape.taps() * shape.templates,
        shape.group_channels(),
        shape.in_width,
        shape.in_height * shape.in_width,
        shape.padding,
    );
    // Image rows first−p .. end+p, clipped to the image: y0 .. y1.
    let top = band.first as isize - p as isize;
    let y0 = top.max(0) as usize;
    let y1 = (band.end + p).min(shape.in_height);
    let row_start = |y: usize| (p as isize + (y as isize - top) * w as isize) as usize;
    for g in 0..shape.groups {
        let group = &mut maps[g * rows * layout.stride..][..rows * layout.stride];
        // P[b,g, rows y0..y1] [K²·M × (y1−y0)·W] = B_g [K²·M × Cg] · X[b, group g, rows y0..y1]
        let a = &packed[g * rows * cg..][..rows * cg];
        let x_rows = &input_image[g * cg * hw + y0 * w..];
        gemm_overwrite_strided(
            rows,
            cg,
            (y1 - y0) * w,
            a,
            x_rows,
            hw,
            &mut group[row_start(y0)..],
            layout.stride,
        );
        // Halo rows outside the image read as zeros.
        let (above, below) = (p..row_start(y0), row_start(y1)..row_start(band.end + p));
        for plane in group.chunks_mut(layout.stride) {
            plane[above.clone()].fill(0.0);
            plane[below.clone()].fill(0.0);
        }
    }
}

/// The banded forward (stride 1, same padding): per image (in parallel) and per band of
/// `band_rows` output rows, stage 1 of the band plus its halo into a per-worker buffer, then the
/// register-accumulated gather of the band's outputs while the band is in cache.
/// Overwrites output [Bt, N, H, W]. [`two_stage_forward`] calls it with [`SbfShape::band_rows`].
pub fn two_stage_forward_banded(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
    band_rows: usize,
) {
    assert!(
        shape.uses_row_bands() && band_rows >= 1,
        "banded forward: stride 1, 2p + 1 = K ≤ 8"
    );
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("Y", output.len(), shape.output_len());
    let band_rows = band_rows.min(shape.in_height);
    let layout = shape.band_layout(band_rows);
    let (packed, table, column_masks) = (
        pack_templates(shape, templates),
        mask_table(shape, assignment, masks),
        column_masks(shape),
    );
    let starts = gather_starts(shape, assignment, layout);
    let image_len = shape.in_channels * shape.in_height * shape.in_width;
    let planes = shape.groups * shape.taps() * shape.templates;
    output
        .par_chunks_mut(shape.out_channels * shape.out_plane())
        .enumerate()
        .for_each_init(
            || vec![0.0f32; planes * layout.stride], // guarded band of P[b] [G, K², M, stride]
            |maps, (b, output_image)| {
                let input_image = &input[b * image_len..][..image_len];
                for first in (0..shape.in_height).step_by(band_rows) {
                    let band = RowBand {
                        first,
                        end: (first + band_rows).min(shape.in_height),
                    };
                    stage1_band_guarded(shape, &packed, input_image, maps, layout, band);
                    gather_image_guarded(shape, &table, &starts, &column_masks, maps, band, output_image);
                }
            },
        );
}

/// mask[kw][j] for kw in 0..K, j in 0..H·W: [K, H·W].
fn column_masks(shape: &SbfShape) -> Vec<f32> {
    let (hw, w) = (shape.in_height * shape.in_width, shape.in_width);
    let mut masks = vec![0.0f32; shape.kernel * hw];
    for kw in 0..shape.kernel {
        for j in 0..hw {
            let x = (j % w + kw) as isize - shape.padding as isize;
            masks[kw * hw + j] = if x >= 0 && (x as usize) < w { 1.0 } else { 0.0 };
        }
    }
    masks
}

/// t(n,g,tap) for every output: [N, G·K²] (1 for identity outputs).
fn mask_table(shape: &SbfShape, assignment: &TemplateAssignment, masks: &[f32]) -> Vec<f32> {
    let per = shape.groups * shape.taps();
    let mut table = vec![0.0f32; shape.out_channels * per];
    for n in 0..shape.out_channels {
        for g in 0..shape.groups {
            for tap in 0..shape.taps() {
                table[n * per + g * shape.taps() + tap] =
                    mask_value(shape, masks, assignment.mask_row[n], g, tap);
            }
        }
    }
    table
}

/// starts[n, g·K² + tap]: where output n's (g, tap) term reads in guarded planes of `layout`
/// (plane start + guard + offset(tap)); the same for every band.
fn gather_starts(shape: &SbfShape, assignment: &TemplateAssignment, layout: Guarded) -> Vec<usize> {
    let (k, p, w, taps) = (shape.kernel, shape.padding, shape.in_width, shape.taps());
    let per = shape.groups * taps;
    let mut starts = vec![0usize; shape.out_channels * per];
    for n in 0..shape.out_channels {
        for g in 0..shape.groups {
            for tap in 0..taps {
                let plane = (g * taps + tap) * shape.templates + assignment.template_of[n];
                starts[n * per + g * taps + tap] = ((plane * layout.stride + layout.guard) as isize
                    + ((tap / k) as isize - p as isize) * w as isize
                    + (tap % k) as isize
                    - p as isize) as usize;
            }
        }
    }
    starts
}

/// Stage 2 of one image from guarded planes: Y[b,n,j] = Σ_{g,tap} t(n,g,tap)·mask[kw][j]·P[b,g,tap,m(n), j + offset].
///
/// On a row band ([`RowBand`]) the guarded planes hold the band's rows plus p halo rows above and
/// below (real image rows, or zeros outside the image): only output rows `band.first..band.end`
/// are written, and j below counts positions from the band's first row (the column masks only
/// depend on j mod W, and a band starts on a row boundary). `starts` = [`gather_starts`].
fn gather_image_guarded(
    shape: &SbfShape,
    table: &[f32],
    starts: &[usize],
    column_masks: &[f32],
    maps: &[f32],
    band: RowBand,
    output_image: &mut [f32],
) {
    // K is a constant inside, so the loops over taps unroll and the per-column sums stay in registers.
    match shape.kernel {
        1 => gather_band::<1>(shape, table, starts, column_masks, maps, band, output_image),
        3 => gather_band::<3>(shape, table, starts, column_masks, maps, band, output_image),
        5 => gather_band::<5>(shape, table, starts, column_masks, maps, band, output_image),
        7 => gather_band::<7>(shape, table, starts, column_masks, maps, band, output_image),
        k => panic!("guarded gather: K = {k} must be 1, 3, 5 or 7"),
    }
}

/// [`gather_image_guarded`] for a K×K kernel (p = K/2). Each block of 16 outputs of output n
/// sums its terms in one pair of accumulators per kernel column kw, then applies the column
/// mask once per kw: Y = Σ_kw mask[kw] · (Σ_{g,kh} t·P).
fn gather_band<const K: usize>(
    shape: &SbfShape,
    table: &[f32],
    starts: &[usize],
    column_masks: &[f32],
    maps: &[f32],
    band: RowBand,
    output_image: &mut [f32],
) {
    let (p, w, plane, groups) = (
        K / 2,
        shape.in_width,
        shape.in_height * shape.in_width,
        shape.groups,
    );
    // Band positions; column_masks rows are `plane` long, outputs start at band.first·W.
    let (hw, out_start) = ((band.end - band.first) * w, band.first * w);
    let per = groups * K * K;
    // Two vectors (16 outputs) per step, so each term's scalar work is shared by 16 lanes.
    let mut j0 = 0;
    while j0 + 16 <= hw {
        let mut mask_vectors = [[f32x8::ZERO; 2]; K];
        for kw in 0..K {
            mask_vectors[kw] = [
                load(&column_masks[kw * plane + j0..]),
                load(&column_masks[kw * plane + j0 + 8..]),
            ];
        }
        for n in 0..shape.out_channels {
            let (starts_n, weights_n) = (&starts[n * per..][..per], &table[n * per..][..per]);
            // acc[kw]: Σ over (g, kh) of t·P for kernel column kw, 16 outputs.
            let mut acc = [[f32x8::ZERO; 2]; K];
            for row in 0..groups * K {
                for kw in 0..K {
                    let q = row * K + kw;
                    let map = &maps[starts_n[q] + j0..][..16];
                    let weight = f32x8::splat(weights_n[q]);
                    acc[kw][0] = weight.mul_add(load(map), acc[kw][0]);
                    acc[kw][1] = weight.mul_add(load(&map[8..]), acc[kw][1]);
                }
            }
            let mut sum = acc[p];
            for kw in 0..K {
                if kw != p {
                    sum[0] = acc[kw][0].mul_add(mask_vectors[kw][0], sum[0]);
                    sum[1] = acc[kw][1].mul_add(mask_vectors[kw][1], sum[1]);
                }
            }
            let out = &mut output_image[n * plane + out_start + j0..][..16];
            store(out, sum[0]);
            store(&mut out[8..], sum[1]);
        }
        j0 += 16;
    }
    while j0 + 8 <= hw {
        let mut mask_vectors = [f32x8::ZERO; K];
        for kw in 0..K {
            mask_vectors[kw] = load(&column_masks[kw * plane + j0..]);
        }
        for n in 0..shape.out_channels {
            let (starts_n, weights_n) = (&starts[n * per..][..per], &table[n * per..][..per]);
            let mut acc = f32x8::ZERO;
            for q in 0..per {
                let weight = f32x8::splat(weights_n[q]) * mask_vectors[q % K];
                acc = weight.mul_add(load(&maps[starts_n[q] + j0..]), acc);
            }
            store(&mut output_image[n * plane + out_start + j0..], acc);
        }
        j0 += 8;
    }
    for j in j0..hw {
        for n in 0..shape.out_channels {
            let mut sum = 0.0;
            for q in 0..per {
                sum += table[n * per + q] * column_masks[(q % K) * plane + j] * maps[starts[n * per + q] + j];
            }
            output_image[n * plane + out_start + j] = sum;
        }
    }
}

/// dT of one image: dT[row(n),g,tap] += Σ_j R[b,n,j]·mask[kw][j]·P[b,g,tap,m(n), j + offset].
fn masks_grad_image_guarded(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    output_of_row: &[usize],
    column_masks: &[f32],
    maps: &[f32],
    layout: Guarded,
    band: RowBand,
    dy_image: &[f32],
    masks_grad: &mut [f32],
) {
    let (k, p, w, plane_len, taps) = (
        shape.kernel,
        shape.padding,
        shape.in_width,
        shape.in_height * shape.in_width,
        shape.taps(),
    );
    // The band's positions (j counts from its first row).
    let (hw, out_start) = ((band.end - band.first) * w, band.first * w);
    for (r, &n) in output_of_row.iter().enumerate() {
        let m = assignment.template_of[n];
        let dy = &dy_image[n * plane_len + out_start..][..hw];
        for g in 0..shape.groups {
            for tap in 0..taps {
                let plane = (g * taps + tap) * shape.templates + m;
                let offset = ((tap / k) as isize - p as isize) * w as isize + (tap % k) as isize - p as isize;
                let start = ((plane * layout.stride + layout.guard) as isize + offset) as usize;
                let (map, mask) = (
                    &maps[start..start + hw],
                    &column_masks[(tap % k) * plane_len..][..hw],
                );
                let mut acc = f32x8::ZERO;
                let mut j = 0;
                while j + 8 <= hw {
                    acc = (load(&dy[j..]) * load(&mask[j..])).mul_add(load(&map[j..]), acc);
                    j += 8;
                }
                let mut sum = acc.reduce_add();
                for j in j..hw {
                    sum += dy[j] * mask[j] * map[j];
                }
                masks_grad[(r * shape.groups + g) * taps + tap] += sum;
            }
        }
    }
}

/// dP of one image into guarded planes (the transpose of the gather, as a gather over outputs):
/// dP[b,g,tap,m,i] = mask[K−1−kw][i] · Σ_{n: m(n)=m} t(n,g,tap)·R[b,n,i − offset],
/// reading R from a guarded copy `dy_guarded` [N planes].
fn maps_grad_image_guarded(
    shape: &SbfShape,
    outputs_of: &[Vec<usize>],
    table: &[f32],
    column_masks: &[f32],
    dy_guarded: &[f32],
    layout: Guarded,
    band: RowBand,
    maps_grad: &mut [f32],
) {
    let (k, p, w, plane_len, taps) = (
        shape.kernel,
        shape.padding,
        shape.in_width,
        shape.in_height * shape.in_width,
        shape.taps(),
    );
    let hw = (band.end - band.first) * w; // the band's positions
    let per = shape.groups * taps;
    for g in 0..shape.groups {
        for tap in 0..taps {
            let offset = ((tap / k) as isize - p as isize) * w as isize + (tap % k) as isize - p as isize;
            // A write to i is valid iff the output i − offset read it without wrapping.
            let mask = &column_masks[(k - 1 - tap % k) * plane_len..][..hw];
            let needs_mask = tap % k != p;
            for m in 0..shape.templates {
                let plane = (g * taps + tap) * shape.templates + m;
                let dp = &mut maps_grad[plane * layout.stride + layout.guard..][..hw];
                let source = |n: usize| ((n * layout.stride + layout.guard) as isize - offset) as usize;
                let mut i = 0;
                while i + 8 <= hw {
                    let mut acc = f32x8::ZERO;
                    for &n in &outputs_of[m] {
                        acc = f32x8::splat(table[n * per + g * taps + tap])
                            .mul_add(load(&dy_guarded[source(n) + i..]), acc);
                    }
                    if needs_mask {
                        acc *= load(&mask[i..]);
                    }
                    store(&mut dp[i..], acc);
                    i += 8;
                }
                for i in i..hw {
                    let mut sum = 0.0;
                    for &n in &outputs_of[m] {
                        sum += table[n * per + g * taps + tap] * dy_guarded[source(n) + i];
                    }
                    dp[i] = sum * mask[i];
                }
            }
        }
    }
}

/// dB (packed [G, K², M, Cg]) += dP[b,g] · X[b,g]ᵀ and dX[b,g] += Bᵀ_g · dP[b,g], from guarded dP planes.
fn stage1_grads_image_guarded(
    shape: &SbfShape,
    operands: &[f32],
    input_image: &[f32],
    maps_grad: &[f32],
    layout: Guarded,
    band: RowBand,
    templates_grad: Option<&mut [f32]>,
    input_grad_image: Option<&mut [f32]>,
) {
    let (rows, cg, plane) = (
        shape.taps() * shape.templates,
        shape.group_channels(),
        shape.in_height * shape.in_width,
    );
    // The band's positions: `len` of them from `start` in every channel plane of X and dX.
    let (start, len) = (
        band.first * shape.in_width,
        (band.end - band.first) * shape.in_width,
    );
    if let Some(db) = templates_grad {
        for g in 0..shape.groups {
            // dB_g [K²·M × Cg] += dP[b,g, band] [K²·M × len] · X[b, group g, band]ᵀ
            let dp = &maps_grad[g * rows * layout.stride + layout.guard..];
            let x_band = &input_image[g * cg * plane + start..];
            gemm_nt_accumulate_strided(
                rows,
                len,
                cg,
                dp,
                layout.stride,
                x_band,
                plane,
                &mut db[g * rows * cg..][..rows * cg],
            );
        }
    }
    if let Some(dx) = input_grad_image {
        for g in 0..shape.groups {
            // dX[b, group g, band] [Cg × len] += Bᵀ_g [Cg × K²·M] · dP[b,g, band]
            let a = &operands[g * cg * rows..][..cg * rows];
            let dp = &maps_grad[g * rows * layout.stride + layout.guard..];
            gemm_accumulate_strided(
                cg,
                rows,
                len,
                a,
                dp,
                layout.stride,
                &mut dx[g * cg * plane + start..],
                plane,
            );
        }
    }
}

/// Copies R[b] rows first−p .. end+p (zeros outside the image) into guarded band planes
/// `dy_band` [N, stride] (same layout as the maps: row y at guard + (y − first)·W).
fn copy_grad_output_band(
    shape: &SbfShape,
    dy_image: &[f32],
    layout: Guarded,
    band: RowBand,
    dy_band: &mut [f32],
) {
    let (p, w, plane) = (shape.padding, shape.in_width, shape.in_height * shape.in_width);
    let top = band.first as isize - p as isize;
    for (n, dst) in dy_band.chunks_mut(layout.stride).enumerate() {
        for r in 0..band.end - band.first + 2 * p {
            let y = top + r as isize;
            let row = &mut dst[p + r * w..][..w];
            if y >= 0 && (y as usize) < shape.in_height {
                row.copy_from_slice(&dy_image[n * plane + y as usize * w..][..w]);
            } else {
                row.fill(0.0);
            }
        }
    }
}

/// [`two_stage_backward`] in row bands (stride 1, same padding), per image and per band of
/// `band_rows` rows:
/// 1. dT: stage 1 of the band plus its halo (recomputed P), dotted with R of the band;
/// 2. dP of the band's input rows, gathered from R rows first−p .. end+p;
/// 3. dB += dP·Xᵀ and dX += Bᵀ·dP over the band's positions.
///
/// Images are split into fixed chunks (four per rayon thread); each chunk sums its dB and dT
/// partials in image order and the chunks' partials are added in chunk order, so the result is
/// bit-identical from run to run at the same thread count.
pub fn two_stage_backward_banded(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grads: TwoStageGrads,
    band_rows: usize,
) {
    assert!(
        shape.uses_row_bands() && band_rows >= 1,
        "banded backward: stride 1, 2p + 1 = K ≤ 8"
    );
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    let band_rows = band_rows.min(shape.in_height);
    let layout = shape.band_layout(band_rows);
    let (image_len, hw) = (
        shape.in_channels * shape.in_height * shape.in_width,
        shape.out_plane(),
    );
    let output_image = shape.out_channels * hw;
    let planes = shape.groups * shape.taps() * shape.templates;
    let (want_masks, want_templates) = (grads.masks.is_some(), grads.templates.is_some());
    let want_maps_grad = want_templates || grads.input.is_some();
    let (packed, table, column_masks) = (
        pack_templates(shape, templates),
        mask_table(shape, assignment, masks),
        column_masks(shape),
    );
    let operands = pack_input_grad_operands(shape, templates); // [G, Cg, K², M]
    let outputs_of = assignment.outputs_of_templates(shape.templates);
    let output_of_row = output_of_rows(shape, assignment);
    let input_grad_images: Vec<Option<&mut [f32]>> = match grads.input {
        Some(dx) => dx.chunks_mut(image_len).map(Some).collect(),
        None => (0..shape.batch).map(|_| None).collect(),
    };
    // Four chunks per thread, so a thread that the OS holds back does not stall the others.
    let chunk_images = shape.batch.div_ceil(4 * rayon::current_num_threads()).max(1);
    // Per chunk: (dB partial packed [G, K², M, Cg], dT partial [N−M, G, K²]).
    let partials: Vec<(Vec<f32>, Vec<f32>)> = input_grad_images
        .into_par_iter()
        .enumerate()
        .chunks(chunk_images)
        .map(|images| {
            let mut templates_grad = vec![0.0f32; if want_templates { shape.templates_len() } else { 0 }];
            let mut masks_grad = vec![0.0f32; if want_masks { shape.masks_len() } else { 0 }];
            // Guarded band planes: P and dP [G, K², M, stride], a copy of R [N, stride].
            let mut maps = vec![0.0f32; if want_masks { planes * layout.stride } else { 0 }];
            let mut maps_grad = vec![0.0f32; if want_maps_grad { planes * layout.stride } else { 0 }];
            let mut dy_band = vec![
                0.0f32;
                if want_maps_grad {
                    shape.out_channels * layout.stride
                } else {
                    0
                }
            ];
            for (b, mut dx_image) in images {
                let input_image = &input[b * image_len..][..image_len];
                let dy_image = &grad_output[b * output_image..][..output_image];
                for first in (0..shape.in_height).step_by(band_rows) {
                    let band = RowBand {
                        first,
                        end: (first + band_rows).min(shape.in_height),
                    };
                    if want_masks {
                        stage1_band_guarded(shape, &packed, input_image, &mut maps, layout, band);
                        masks_grad_image_guarded(
                            shape,
                            assignment,
                            &output_of_row,
                            &column_masks,
                            &maps,
                            layout,
                            band,
                            dy_image,
                            &mut masks_grad,
                        );
                    }
                    if want_maps_grad {
                        copy_grad_output_band(shape, dy_image, layout, band, &mut dy_band);
                        maps_grad_image_guarded(
                            shape,
                            &outputs_of,
                            &table,
                            &column_masks,
                            &dy_band,
                            layout,
                            band,
                            &mut maps_grad,
                        );
                        stage1_grads_image_guarded(
                            shape,
                            &operands,
                            input_image,
                            &maps_grad,
                            layout,
                            band,
                            want_templates.then_some(&mut templates_grad[..]),
                            dx_image.as_deref_mut(),
                        );
                    }
                }
            }
            (templates_grad, masks_grad)
        })
        .collect();
    if let Some(dt) = grads.masks {
        for (_, partial) in &partials {
            dt.iter_mut().zip(partial).for_each(|(d, p)| *d += p);
        }
    }
    if let Some(db) = grads.templates {
        let mut total = vec![0.0f32; shape.templates_len()];
        for (partial, _) in &partials {
            total.iter_mut().zip(partial).for_each(|(d, p)| *d += p);
        }
        unpack_templates_grad(shape, &total, db);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{max_scaled_difference, Tensor};
    use rand::{rngs::StdRng, SeedableRng};

    fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
        Tensor::normal(&[len], 1.0, rng).data
    }

    /// Odd sizes, channels not a multiple of 8, planes with SIMD tails, both strides.
    fn shapes() -> Vec<(SbfShape, TemplateAssignment)> {
        let mut out = Vec::new();
        for (batch, c, h, w, n, m, k, s, p, g) in [
            (2, 6, 7, 5, 5, 2, 3, 1, 1, 2),
            (3, 9, 9, 11, 7, 3, 3, 2, 1, 3),
            (1, 4, 6, 6, 4, 1, 1, 1, 0, 4),
            (2, 10, 8, 9, 6, 5, 5, 2, 2, 1),
            (2, 12, 5, 19, 9, 4, 3, 1, 0, 2),
            (2, 6, 6, 11, 5, 3, 5, 1, 2, 3),
            (1, 8, 3, 9, 6, 2, 3, 1, 1, 2),
            (1, 4, 11, 12, 5, 2, 3, 1, 1, 2),
        ] {
            let shape = SbfShape {
                batch,
                in_channels: c,
                in_height: h,
                in_width: w,
                out_channels: n,
                templates: m,
                kernel: k,
                stride: s,
                padding: p,
                groups: g,
            };
            shape.validate("test");
            // A scattered assignment, as pruning would hand over.
            let kept: Vec<usize> = (0..m).map(|j| (j * n) / m + (n / m) / 2).collect();
            out.push((shape, TemplateAssignment::from_kept_outputs(n, &kept)));
        }
        out
    }

    fn assert_close(name: &str, fast: &[f32], naive: &[f32]) {
        let d = max_scaled_difference(fast, naive, 1e-5, 1e-5);
        assert!(
            d <= 1.0,
            "{name}: fast differs from naive (scaled difference {d})"
        );
    }

    #[test]
    fn gemm_kernels_equal_triple_loops_on_ragged_sizes() {
        let mut rng = StdRng::seed_from_u64(3);
        for (rows, inner, cols) in [
            (1, 1, 1),
            (5, 3, 37),
            (4, 9, 16),
            (7, 13, 25),
            (3, 17, 8),
            (13, 8, 41),
        ] {
            let a = random(rows * inner, &mut rng);
            let b = random(inner * cols, &mut rng);
            let bt = random(cols * inner, &mut rng);
            let start = random(rows * cols, &mut rng);
            let (mut c, mut c_nt) = (start.clone(), start.clone());
            gemm_accumulate(rows, inner, cols, &a, &b, &mut c);
            gemm_nt_accumulate(rows, inner, cols, &a, &bt, &mut c_nt);
            let (mut expect, mut expect_nt) = (start.clone(), start);
            for r in 0..rows {
                for j in 0..cols {
                    for k in 0..inner {
                        expect[r * cols + j] += a[r * inner + k] * b[k * cols + j];
                        expect_nt[r * cols + j] += a[r * inner + k] * bt[j * inner + k];
                    }
                }
            }
            assert_close("gemm", &c, &expect);
            assert_close("gemm_nt", &c_nt, &expect_nt);
            let mut c_over = vec![f32::NAN; rows * cols];
            gemm_overwrite(rows, inner, cols, &a, &b, &mut c_over);
            let mut zero_start = vec![0.0; rows * cols];
            gemm_accumulate(rows, inner, cols, &a, &b, &mut zero_start);
            assert_close("gemm_overwrite", &c_over, &zero_start);
        }
    }

    #[test]
    fn stage1_fast_kernels_equal_naive() {
        let mut rng = StdRng::seed_from_u64(4);
        for (shape, _) in shapes() {
            let x = random(shape.input_len(), &mut rng);
            let b = random(shape.templates_len(), &mut rng);
            let (mut p_fast, mut p_naive) = (vec![7.0; shape.maps_len()], vec![-7.0; shape.maps_len()]);
            stage1_forward(&shape, &x, &b, &mut p_fast);
            stage1_forward_naive(&shape, &x, &b, &mut p_naive);
            assert_close("stage1_forward", &p_fast, &p_naive);

            let dp = random(shape.maps_len(), &mut rng);
            let start_db = random(shape.templates_len(), &mut rng);
            let (mut db_fast, mut db_naive) = (start_db.clone(), start_db);
            stage1_templates_grad(&shape, &x, &dp, &mut db_fast);
            stage1_templates_grad_naive(&shape, &x, &dp, &mut db_naive);
            assert_close("stage1_templates_grad", &db_fast, &db_naive);

            let start_dx = random(shape.input_len(), &mut rng);
            let (mut dx_fast, mut dx_naive) = (start_dx.clone(), start_dx);
            stage1_input_grad(&shape, &dp, &b, &mut dx_fast);
            stage1_input_grad_naive(&shape, &dp, &b, &mut dx_naive);
            assert_close("stage1_input_grad", &dx_fast, &dx_naive);
        }
    }

    #[test]
    fn stage1_input_grad_is_the_transpose_of_stage1_forward() {
        // <stage1(X), dP> = <X, stage1ᵀ(dP)> for the naive pair, so the solved-for (h, w) are right.
        let mut rng = StdRng::seed_from_u64(5);
        for (shape, _) in shapes() {
            let x = random(shape.input_len(), &mut rng);
            let b = random(shape.templates_len(), &mut rng);
            let dp = random(shape.maps_len(), &mut rng);
            let mut p = vec![0.0; shape.maps_len()];
            stage1_forward_naive(&shape, &x, &b, &mut p);
            let mut dx = vec![0.0; shape.input_len()];
            stage1_input_grad_naive(&shape, &dp, &b, &mut dx);
            let lhs: f64 = p.iter().zip(&dp).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                "{lhs} vs {rhs} for {shape:?}"
            );
        }
    }

    #[test]
    fn stage2_fast_kernels_equal_naive() {
        let mut rng = StdRng::seed_from_u64(6);
        for (shape, assignment) in shapes() {
            assignment.validate("test", shape.out_channels, shape.templates);
            let t = random(shape.masks_len(), &mut rng);
            let p = random(shape.maps_len(), &mut rng);
            let (mut y_fast, mut y_naive) = (vec![3.0; shape.output_len()], vec![-3.0; shape.output_len()]);
            gather_forward(&shape, &assignment, &t, &p, &mut y_fast);
            gather_forward_naive(&shape, &assignment, &t, &p, &mut y_naive);
            assert_close("gather_forward", &y_fast, &y_naive);

            let dy = random(shape.output_len(), &mut rng);
            let start_dt = random(shape.masks_len(), &mut rng);
            let (mut dt_fast, mut dt_naive) = (start_dt.clone(), start_dt);
            gather_masks_grad(&shape, &assignment, &p, &dy, &mut dt_fast);
            gather_masks_grad_naive(&shape, &assignment, &p, &dy, &mut dt_naive);
            assert_close("gather_masks_grad", &dt_fast, &dt_naive);

            let (mut dp_fast, mut dp_naive) = (vec![1.0; shape.maps_len()], vec![2.0; shape.maps_len()]);
            gather_maps_grad(&shape, &assignment, &t, &dy, &mut dp_fast);
            gather_maps_grad_naive(&shape, &assignment, &t, &dy, &mut dp_naive);
            assert_close("gather_maps_grad", &dp_fast, &dp_naive);
        }
    }

    #[test]
    fn fused_layer_kernels_equal_the_naive_stages_chained() {
        let mut rng = StdRng::seed_from_u64(7);
        for (shape, assignment) in shapes() {
            let x = random(shape.input_len(), &mut rng);
            let b = random(shape.templates_len(), &mut rng);
            let t = random(shape.masks_len(), &mut rng);
            let dy = random(shape.output_len(), &mut rng);
            // Naive chain: P, Y; dT from P; dP; dB and dX from dP.
            let mut p_naive = vec![0.0; shape.maps_len()];
            stage1_forward_naive(&shape, &x, &b, &mut p_naive);
            let mut y_naive = vec![0.0; shape.output_len()];
            gather_forward_naive(&shape, &assignment, &t, &p_naive, &mut y_naive);
            let mut dt_naive = vec![0.5; shape.masks_len()];
            gather_masks_grad_naive(&shape, &assignment, &p_naive, &dy, &mut dt_naive);
            let mut dp_naive = vec![0.0; shape.maps_len()];
            gather_maps_grad_naive(&shape, &assignment, &t, &dy, &mut dp_naive);
            let mut db_naive = vec![0.5; shape.templates_len()];
            stage1_templates_grad_naive(&shape, &x, &dp_naive, &mut db_naive);
            let mut dx_naive = vec![0.5; shape.input_len()];
            stage1_input_grad_naive(&shape, &dp_naive, &b, &mut dx_naive);
            // Fused.
            let mut y = vec![9.0; shape.output_len()];
            two_stage_forward(&shape, &assignment, &x, &b, &t, &mut y);
            assert_close("two_stage_forward Y", &y, &y_naive);
            let (mut dx, mut db, mut dt) = (
                vec![0.5; shape.input_len()],
                vec![0.5; shape.templates_len()],
                vec![0.5; shape.masks_len()],
            );
            let grads = TwoStageGrads {
                input: Some(&mut dx),
                templates: Some(&mut db),
                masks: Some(&mut dt),
            };
            two_stage_backward(&shape, &assignment, &x, &b, &t, &dy, grads);
            assert_close("two_stage_backward dX", &dx, &dx_naive);
            assert_close("two_stage_backward dB", &db, &db_naive);
            assert_close("two_stage_backward dT", &dt, &dt_naive);
            // Skipped gradients stay untouched.
            let mut db_only = vec![0.5; shape.templates_len()];
            let grads = TwoStageGrads {
                input: None,
                templates: Some(&mut db_only),
                masks: None,
            };
            two_stage_backward(&shape, &assignment, &x, &b, &t, &dy, grads);
            assert_close("two_stage_backward dB alone", &db_only, &db_naive);
        }
    }

    /// The banded forward against the naive stages chained, at band sizes that hit every edge:
    /// one row (smaller than a 2-row halo), H not a multiple of the band, a band of the whole
    /// image and more; batch 1 and 2; K = 1, 3, 5.
    #[test]
    fn banded_forward_equals_naive_at_every_band_size() {
        let mut rng = StdRng::seed_from_u64(11);
        for (batch, c, h, w, n, m, k, g) in [
            (1, 6, 7, 5, 5, 2, 3, 2),
            (2, 4, 9, 11, 6, 3, 5, 2),
            (1, 8, 5, 19, 9, 4, 1, 4),
            (2, 6, 6, 3, 4, 1, 3, 3),
        ] {
            let shape = SbfShape {
                batch,
                in_channels: c,
                in_height: h,
                in_width: w,
                out_channels: n,
                templates: m,
                kernel: k,
                stride: 1,
                padding: k / 2,
                groups: g,
            };
            shape.validate("test");
            let assignment = TemplateAssignment::round_robin(n, m);
            let x = random(shape.input_len(), &mut rng);
            let b = random(shape.templates_len(), &mut rng);
            let t = random(shape.masks_len(), &mut rng);
            let mut p_naive = vec![0.0; shape.maps_len()];
            stage1_forward_naive(&shape, &x, &b, &mut p_naive);
            let mut y_naive = vec![0.0; shape.output_len()];
            gather_forward_naive(&shape, &assignment, &t, &p_naive, &mut y_naive);
            let dy = random(shape.output_len(), &mut rng);
            let mut dt_naive = vec![0.5; shape.masks_len()];
            gather_masks_grad_naive(&shape, &assignment, &p_naive, &dy, &mut dt_naive);
            let mut dp_naive = vec![0.0; shape.maps_len()];
            gather_maps_grad_naive(&shape, &assignment, &t, &dy, &mut dp_naive);
            let mut db_naive = vec![0.5; shape.templates_len()];
            stage1_templates_grad_naive(&shape, &x, &dp_naive, &mut db_naive);
            let mut dx_naive = vec![0.5; shape.input_len()];
            stage1_input_grad_naive(&shape, &dp_naive, &b, &mut dx_naive);
            for band_rows in [1, 2, 3, 4, h - 1, h, h + 3] {
                let name = |what: &str| format!("banded {what}, {h} rows in bands of {band_rows}");
                let mut y = vec![9.0; shape.output_len()];
                two_stage_forward_banded(&shape, &assignment, &x, &b, &t, &mut y, band_rows);
                assert_close(&name("forward"), &y, &y_naive);
                let (mut dx, mut db, mut dt) = (
                    vec![0.5; shape.input_len()],
                    vec![0.5; shape.templates_len()],
                    vec![0.5; shape.masks_len()],
                );
                let grads = TwoStageGrads {
                    input: Some(&mut dx),
                    templates: Some(&mut db),
                    masks: Some(&mut dt),
                };
                two_stage_backward_banded(&shape, &assignment, &x, &b, &t, &dy, grads, band_rows);
                assert_close(&name("dX"), &dx, &dx_naive);
                assert_close(&name("dB"), &db, &db_naive);
                assert_close(&name("dT"), &dt, &dt_naive);
                // dX alone (no P recomputed) and dT alone (no dP).
                let mut dx_only = vec![0.5; shape.input_len()];
                let grads = TwoStageGrads {
                    input: Some(&mut dx_only),
                    templates: None,
                    masks: None,
                };
                two_stage_backward_banded(&shape, &assignment, &x, &b, &t, &dy, grads, band_rows);
                assert_close(&name("dX alone"), &dx_only, &dx_naive);
                let mut dt_only = vec![0.5; shape.masks_len()];
                let grads = TwoStageGrads {
                    input: None,
                    templates: None,
                    masks: Some(&mut dt_only),
                };
                two_stage_backward_banded(&shape, &assignment, &x, &b, &t, &dy, grads, band_rows);
                assert_close(&name("dT alone"), &dt_only, &dt_naive);
            }
        }
    }

    /// The banded backward sums dB and dT in a fixed order: two runs give the same bits.
    #[test]
    fn banded_backward_is_bit_identical_from_run_to_run() {
        let mut rng = StdRng::seed_from_u64(12);
        let shape = SbfShape {
            batch: 7,
            in_channels: 8,
            in_height: 9,
            in_width: 10,
            out_channels: 8,
            templates: 3,
            kernel: 3,
            stride: 1,
            padding: 1,
            groups: 2,
        };
        let assignment = TemplateAssignment::round_robin(8, 3);
        let x = random(shape.input_len(), &mut rng);
        let b = random(shape.templates_len(), &mut rng);
        let t = random(shape.masks_len(), &mut rng);
        let dy = random(shape.output_len(), &mut rng);
        let run = || {
            let (mut db, mut dt) = (vec![0.0; shape.templates_len()], vec![0.0; shape.masks_len()]);
            let grads = TwoStageGrads {
                input: None,
                templates: Some(&mut db),
                masks: Some(&mut dt),
            };
            two_stage_backward_banded(&shape, &assignment, &x, &b, &t, &dy, grads, 2);
            (db, dt)
        };
        let first = run();
        for _ in 0..5 {
            assert_eq!(run(), first);
        }
    }

    #[test]
    fn assignments_put_kept_filters_in_place_and_spread_pruned_ones_round_robin() {
        let a = TemplateAssignment::from_kept_outputs(6, &[1, 4]);
        assert_eq!(a.template_of, vec![0, 0, 1, 0, 1, 1]);
        assert_eq!(a.mask_row, vec![Some(0), None, Some(1), Some(2), None, Some(3)]);
        a.validate("test", 6, 2);
        let r = TemplateAssignment::round_robin(5, 2);
        assert_eq!(r.template_of, vec![0, 1, 0, 1, 0]);
        assert_eq!(r.mask_row, vec![None, None, Some(0), Some(1), Some(2)]);
        assert_eq!(r.identity_outputs(), vec![0, 1]);
    }

    #[test]
    #[should_panic(expected = "two identity outputs")]
    fn an_assignment_with_a_doubled_template_is_rejected() {
        let a = TemplateAssignment {
            template_of: vec![0, 0, 1],
            mask_row: vec![None, None, Some(0)],
        };
        a.validate("sbf_conv2d", 3, 2);
    }
}
