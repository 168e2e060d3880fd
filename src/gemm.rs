//! Matrix products that run on every backend. Candle's CUDA matmul (cuBLAS strided-batched GEMM)
//! refuses operand layouts its CPU matmul takes (a column range of a wider matrix, a batch layout
//! one stride cannot describe), so such code passes every CPU test and fails on the first GPU run
//! with `MatMulNonContiguous`. Every product goes through [`matmul`] / [`broadcast_matmul`], which
//! copy such an operand on every device; in tests, [`with_strict_gemm`] makes that copy an error.
//! See DEVELOPERS.md, "Matrix products".

use std::cell::Cell;

use candle_core::{Layout, Tensor};

thread_local! {
    static STRICT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with refused layouts reported as errors instead of copied (on this thread only).
pub fn with_strict_gemm<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            STRICT.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(STRICT.with(|c| c.replace(true)));
    f()
}

/// Whether candle's CUDA matmul takes `lhs [.., m, k] · rhs [.., k, n]` in these layouts
/// (the checks of candle-core 0.11.1's `gemm_config`).
pub fn cuda_accepts(lhs: &Layout, rhs: &Layout) -> bool {
    let (ld, rd) = (lhs.dims(), rhs.dims());
    let (ls, rs) = (lhs.stride(), rhs.stride());
    let r = ld.len();
    if r < 2 || rd.len() != r {
        // Candle's own shape check answers this one.
        return true;
    }
    let (m, k, n) = (ld[r - 2], ld[r - 1], rd[r - 1]);
    let (l1, l2, r1, r2) = (ls[r - 1], ls[r - 2], rs[r - 1], rs[r - 2]);
    let rhs_ok = ((r1 == 1 || n == 1) && (r2 == n || k == 1))
        || ((r1 == k || n == 1) && (r2 == 1 || k == 1));
    let lhs_ok = ((l1 == 1 || k == 1) && (l2 == k || m == 1))
        || ((l1 == m || k == 1) && (l2 == 1 || m == 1));
    let batch_ok = |dims: &[usize], stride: &[usize]| match stride[..stride.len() - 2] {
        [] | [_] => true,
        [s1, s] => s1 == s * dims[1] || dims[0] == 1 || dims[1] == 1,
        _ => false,
    };
    rhs_ok && lhs_ok && batch_ok(ld, ls) && batch_ok(rd, rs)
}

/// `(a, b)` as they are, or with a row-major copy of the operand the CUDA GEMM would refuse.
fn usable(a: &Tensor, b: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    if cuda_accepts(a.layout(), b.layout()) {
        return Ok((a.clone(), b.clone()));
    }
    if STRICT.with(|c| c.get()) {
        return Err(crate::Error::unsupported(
            format!(
                "matmul of {:?} (strides {:?}) by {:?} (strides {:?})",
                a.dims(),
                a.stride(),
                b.dims(),
                b.stride()
            ),
            "CUDA's GEMM refuses these layouts, so the product would need a copy",
        )
        .into());
    }
    // Copy only the operand that is refused, if one alone is.
    let a_fixed = a.contiguous()?;
    if cuda_accepts(a_fixed.layout(), b.layout()) {
        return Ok((a_fixed, b.clone()));
    }
    let b_fixed = b.contiguous()?;
    if cuda_accepts(a.layout(), b_fixed.layout()) {
        return Ok((a.clone(), b_fixed));
    }
    Ok((a_fixed, b_fixed))
}

/// `a · b` (candle's `matmul`) in layouts CUDA's GEMM takes.
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (a, b) = usable(a, b)?;
    a.matmul(&b)
}

/// Rows of `x` below which [`matmul_t`] runs the product the other way round on the CPU.
const FEW_ROWS: usize = 256;

/// `x · wᵀ` for `x: [m, k]` and a linear layer's weight `w: [n, k]`, row-major or the view of a
/// row-major `wᵀ` (which the product then reads as it is). With few rows on the CPU (decoding,
/// small batches) and a row-major `w`, the gemm crate packs all of `wᵀ` on every call, which
/// costs as much as the product; `(w · xᵀ)ᵀ` packs only `xᵀ` and runs several times faster.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let wt = w.t()?;
    if wt.is_contiguous() {
        return matmul(x, &wt);
    }
    if x.device().is_cpu() && x.rank() == 2 && x.dim(0)? < FEW_ROWS {
        return matmul(w, &x.t()?)?.t()?.contiguous();
    }
    matmul(x, &wt)
}

/// `a · b` with the batch dimensions broadcast (candle's `broadcast_matmul`), in layouts
/// CUDA's GEMM takes.
pub fn broadcast_matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (a, b) = usable(a, b)?;
    a.broadcast_matmul(&b)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    fn t(shape: &[usize]) -> Tensor {
        Tensor::arange(0f32, shape.iter().product::<usize>() as f32, &Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    #[test]
    fn a_product_with_few_rows_equals_the_plain_one() {
        let w = (t(&[7, 33]) / 100.0).unwrap().sin().unwrap();
        for m in [1, 3, FEW_ROWS - 1, FEW_ROWS, FEW_ROWS + 5] {
            let x = (t(&[m, 33]) / 50.0).unwrap().cos().unwrap();
            let got = matmul_t(&x, &w).unwrap();
            assert!(got.is_contiguous());
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "m = {m}");
        }
    }

    #[test]
    fn row_major_and_transposed_operands_are_taken() {
        let (x, w) = (t(&[5, 8]), t(&[6, 8]));
        assert!(cuda_accepts(x.layout(), w.t().unwrap().layout()));
        assert!(cuda_accepts(x.t().unwrap().layout(), t(&[5, 3]).layout()));
        // Batched, with a transposed view of the last two dims.
        let (q, k) = (t(&[2, 3, 4, 8]), t(&[2, 3, 5, 8]));
        assert!(cuda_accepts(q.layout(), k.t().unwrap().layout()));
    }

    #[test]
    fn a_column_range_is_refused_and_copied_except_in_strict_mode() {
        let (g, w) = (t(&[4, 10]), t(&[3, 7]));
        let part = g.narrow(1, 2, 3).unwrap();
        assert!(!cuda_accepts(part.layout(), w.layout()));
        let want = part.contiguous().unwrap().matmul(&w).unwrap();
        let got = matmul(&part, &w).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(
            diff.to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let err = with_strict_gemm(|| matmul(&part, &w)).unwrap_err();
        assert!(err.to_string().contains("CUDA's GEMM refuses"), "{err}");
        // Strict mode ends with its closure.
        assert!(matmul(&part, &w).is_ok());
    }

    #[test]
    fn a_head_transposed_activation_is_refused() {
        // [B, T, H, D] seen as [B, H, T, D]: rows of D are H·D apart.
        let x = t(&[1, 4, 2, 8]).transpose(1, 2).unwrap();
        let k = t(&[1, 2, 4, 8]);
        assert!(!cuda_accepts(x.layout(), k.t().unwrap().layout()));
        assert!(cuda_accepts(
            x.contiguous().unwrap().layout(),
            k.t().unwrap().layout()
        ));
    }
}
