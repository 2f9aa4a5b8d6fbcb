//! The SIMD building blocks: load/store, axpy, dot and a register-blocked GEMM.

use wide::f32x8;

// ---------------------------------------------------------------------------------------------
// SIMD building blocks: load/store, axpy, dot and a register-blocked GEMM
// ---------------------------------------------------------------------------------------------

#[inline(always)]
pub(super) fn load(s: &[f32]) -> f32x8 {
    f32x8::from(<[f32; 8]>::try_from(&s[..8]).unwrap())
}

#[inline(always)]
pub(super) fn store(s: &mut [f32], v: f32x8) {
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
pub(super) struct Strides {
    lda: usize,
    ldb: usize,
    ldc: usize,
}

pub(super) fn gemm<const ACCUMULATE: bool>(
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
pub(super) fn gemm_rows<const ROWS: usize, const ACCUMULATE: bool>(
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
pub(super) fn gemm_nt_block<const COLS: usize>(
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
