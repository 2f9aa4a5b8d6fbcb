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
//!   dP[b,g,tap,m,j]  = Σ_{n: m(n)=m} t(n,g,tap) · R[b,n,h,w]
//!   dB[m,i,kh,kw]    = Σ_{b,j} dP[b,g(i),tap,m,j] · X[b,i,y,x]
//!   dX[b,i,y,x]      = Σ_{tap,m} Σ_{j → (y,x)} B[m,i,kh,kw] · dP[b,g(i),tap,m,j]
//! ```
//!
//! # Where to read what
//!
//! 1. here: the geometry ([`SbfShape`]) and the assignment ([`TemplateAssignment`]);
//! 2. `naive.rs`: the reference, P materialised, one loop nest per formula above: the oracle;
//! 3. `fused.rs`: the kernels the op calls. Both stages per register tile of templates × output
//!    pixels, on the dense conv's microkernel and padded images, so P never reaches memory
//!    ([`fused_forward`]); the backward ([`fused_backward`]) takes dX through the maps a tile of
//!    input pixels at a time, and dB and dT from the dense weight gradient;
//! 4. `channels.rs`: the same forward pass and input gradient in the channel layout of small maps
//!    (templates, or the input channels of a group, in the lanes; the taps that read padding
//!    skipped), chosen like the dense conv's layout ([`fused_forward_choice`]);
//! 5. `tests.rs`: the fused kernels against the naive reference over a grid of shapes, and the
//!    two layouts against each other (the same floats).
//!
//! Contract (as for every kernel): forward kernels overwrite their output,
//! gradient kernels accumulate (`+=`), except `gather_maps_grad_naive`, which
//! overwrites dP.

use rayon::prelude::*;

mod channels;
mod fused;
mod naive;
#[cfg(test)]
mod tests;

pub use channels::{fused_forward_choice, fused_input_grad_choice};
pub use fused::*;
pub use naive::*;

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

    pub(super) fn check(&self, name: &str, len: usize, expected: usize) {
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
pub(super) fn mask_value(shape: &SbfShape, masks: &[f32], row: Option<usize>, g: usize, tap: usize) -> f32 {
    match row {
        None => 1.0,
        Some(r) => masks[(r * shape.groups + g) * shape.taps() + tap],
    }
}
