//! Strided f32 matrix products on the CPU (the `gemm` crate picks SIMD and threads at run time),
//! for the work done on embeddings once they are off the device: search scores and linear probes.

/// A row-major `[rows, cols]` matrix, or the transpose of one, as `gemm` strides.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    /// Element (i, j) is at `i * row_stride + j * col_stride`.
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, row_stride: cols, col_stride: 1 }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self { data, row_stride: 1, col_stride: cols }
    }
}

/// `a · b` for `a` `[m, k]` and `b` `[k, n]`, as a row-major `[m, n]` matrix.
pub fn matmul(a: View, b: View, m: usize, k: usize, n: usize, threads: usize) -> Vec<f32> {
    let last = |v: &View, r: usize, c: usize| {
        if r == 0 || c == 0 {
            0
        } else {
            (r - 1) * v.row_stride + (c - 1) * v.col_stride + 1
        }
    };
    assert!(
        a.data.len() >= last(&a, m, k) && b.data.len() >= last(&b, k, n),
        "matmul: views out of bounds"
    );
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let parallelism =
        if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the assertion above keeps every element the strides address inside `a` and `b`;
    // `out` holds exactly `[m, n]` row-major and does not alias them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    out
}

/// The threads worth using for a product of this size (one for small ones).
pub fn threads_for(flops: usize) -> usize {
    if flops < 1 << 22 {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_of_plain_and_transposed_views_match_the_definition() {
        // a [2, 3], b [3, 2]
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
        assert_eq!(
            matmul(View::rows(&a, 3), View::rows(&b, 2), 2, 3, 2, 1),
            vec![58.0, 64.0, 139.0, 154.0]
        );
        // aᵀ [3, 2] · a [2, 3] = [3, 3]
        let ata = matmul(View::transposed(&a, 3), View::rows(&a, 3), 3, 2, 3, 1);
        assert_eq!(ata, vec![17.0, 22.0, 27.0, 22.0, 29.0, 36.0, 27.0, 36.0, 45.0]);
    }
}
