//! Matrix products for the inference kernels through the `gemm` crate (flex's own GEMM), on
//! strided views of buffers the kernels own: a dense layer writes its output once, onto the
//! bias (and residual) already there, and attention multiplies each head's block of `q`, `k`
//! and `v` in place (`kᵀ` is a view), with none of a flex tensor's copies around them.
#![allow(unsafe_code)] // `gemm::gemm` takes raw pointers and strides; every bound is checked here.

use burn_flex::FlexTensor;

/// Products below this many multiply-adds run on one thread (as flex decides); attention's
/// per-head products, already run one sequence per thread, stay below it.
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

/// The index one past the last element of a `rows × cols` view at `offset` with these strides.
fn end(offset: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        offset
    } else {
        offset + (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// A read-only `[rows, cols]` f32 matrix in a slice, with any non-negative strides.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    /// Element `(i, j)` at `data[offset + i * row_stride + j * col_stride]`; panics when the
    /// view does not fit in `data`.
    pub(crate) fn new(
        data: &'a [f32],
        offset: usize,
        [rows, cols]: [usize; 2],
        [row_stride, col_stride]: [usize; 2],
    ) -> Self {
        assert!(
            end(offset, rows, cols, row_stride, col_stride) <= data.len(),
            "a [{rows}, {cols}] view at {offset} with strides ({row_stride}, {col_stride}) \
             overruns {} elements",
            data.len()
        );
        Self {
            data,
            offset,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A contiguous row-major `[rows, cols]` matrix.
    pub(crate) fn rows(data: &'a [f32], cols: usize) -> Self {
        let rows = data.len().checked_div(cols).unwrap_or(0);
        Self::new(data, 0, [rows, cols], [cols, 1])
    }

    /// The matrix of a 2-D f32 flex tensor, read in place (a transposed weight too); `None`
    /// for another rank or dtype, or negative strides.
    pub(crate) fn of(t: &'a FlexTensor) -> Option<Self> {
        let layout = t.layout();
        let shape = layout.shape();
        if shape.num_dims() != 2 || t.dtype() != burn::tensor::DType::F32 {
            return None;
        }
        let strides = layout.strides();
        let row_stride = usize::try_from(strides[0]).ok()?;
        let col_stride = usize::try_from(strides[1]).ok()?;
        let data: &[f32] = t.storage();
        let (offset, rows, cols) = (layout.start_offset(), shape[0], shape[1]);
        (end(offset, rows, cols, row_stride, col_stride) <= data.len()).then_some(Self {
            data,
            offset,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// Columns.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// The transpose, in place.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// A writable `[rows, cols]` f32 matrix in a slice, rows `row_stride` apart.
pub(crate) struct ViewMut<'a> {
    data: &'a mut [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> ViewMut<'a> {
    /// Element `(i, j)` at `data[offset + i * row_stride + j]`; panics when the view does not
    /// fit in `data`.
    pub(crate) fn new(
        data: &'a mut [f32],
        offset: usize,
        [rows, cols]: [usize; 2],
        row_stride: usize,
    ) -> Self {
        assert!(
            end(offset, rows, cols, row_stride, 1) <= data.len(),
            "a [{rows}, {cols}] view at {offset} with row stride {row_stride} overruns {} \
             elements",
            data.len()
        );
        Self {
            data,
            offset,
            rows,
            cols,
            row_stride,
        }
    }

    /// A contiguous row-major `[rows, cols]` matrix.
    pub(crate) fn rows(data: &'a mut [f32], cols: usize) -> Self {
        let rows = data.len().checked_div(cols).unwrap_or(0);
        Self::new(data, 0, [rows, cols], cols)
    }
}

/// `rows` copies of `bias`, one after the other (a product's output, to accumulate onto).
pub(crate) fn bias_rows(bias: &[f32], rows: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * bias.len());
    for _ in 0..rows {
        out.extend_from_slice(bias);
    }
    out
}

/// `dst = scale · lhs · rhs`, added to what `dst` holds when `accumulate`.
pub(crate) fn product(lhs: View, rhs: View, dst: ViewMut, scale: f32, accumulate: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "lhs [{m}, {k}] times rhs [{}, {n}]", rhs.rows);
    assert_eq!(
        (dst.rows, dst.cols),
        (m, n),
        "the product of [{m}, {k}] and [{k}, {n}]"
    );
    if m == 0 || n == 0 {
        return;
    }
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_THRESHOLD {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let stride = |s: usize| isize::try_from(s).expect("a stride within isize");
    // SAFETY: the three views were checked to lie within their slices (`View::new`,
    // `View::of`, `ViewMut::new`), and gemm touches only their elements: (i, l) of lhs,
    // (l, j) of rhs, (i, j) of dst for i < m, l < k, j < n. dst's slice is borrowed mutably,
    // so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr().add(dst.offset),
            1,
            stride(dst.row_stride),
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.data.as_ptr().add(rhs.offset),
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn naive(x: &[f32], w: &[f32], k: usize, n: usize) -> Vec<f32> {
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| x[i * k + l] * w[l * n + j]).sum();
            }
        }
        out
    }

    /// Into a column block of a wider buffer, onto what it holds or over it, scaled, from a
    /// weight stored transposed (a strided view of a flex tensor) and from a transposed view;
    /// on one thread and on several.
    #[test]
    fn products_of_strided_views_into_a_column_block() {
        for (m, k, n) in [(3, 5, 4), (300, 256, 200)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5) % 11) as f32 / 11.0 - 0.5)
                .collect();
            let want = naive(&x, &w, k, n);
            let mut wt = vec![0f32; n * k];
            for l in 0..k {
                for j in 0..n {
                    wt[j * k + l] = w[l * n + j];
                }
            }
            let stored = FlexTensor::from_data(TensorData::new(wt.clone(), [n, k]));
            let transposed = stored.transpose(0, 1);
            let from_tensor = View::of(&transposed).expect("a 2-D f32 view");
            assert_eq!(from_tensor.cols(), n);
            let from_slice = View::rows(&wt, k).t();
            let stride = n + 3;
            for (rhs, accumulate, scale) in [
                (from_tensor, true, 1.0),
                (from_slice, false, 0.5),
                (from_tensor, true, 2.0),
            ] {
                let mut dst = vec![1f32; m * stride];
                let view = ViewMut::new(&mut dst, 1, [m, n], stride);
                product(View::rows(&x, k), rhs, view, scale, accumulate);
                let base = if accumulate { 1.0 } else { 0.0 };
                for i in 0..m {
                    assert_eq!(dst[i * stride], 1.0, "the column before the block");
                    for j in 0..n {
                        let (got, want) = (dst[i * stride + 1 + j], base + scale * want[i * n + j]);
                        assert!((got - want).abs() < 1e-4, "({i}, {j}): {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "overruns")]
    fn a_view_past_its_slice_panics() {
        let data = [0f32; 10];
        let _ = View::new(&data, 2, [3, 3], [3, 1]);
    }
}
