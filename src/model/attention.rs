//! Scaled dot-product attention that never keeps the `[B, H, T, T]` probabilities: the
//! forward pass runs over blocks of queries and keeps only each row's log-sum-exp, and the
//! backward pass recomputes one block of probabilities at a time (the FlashAttention-2
//! recurrences, Dao 2023, §3.1, written with tensor ops). Eager attention under candle's
//! autograd keeps several `[B, H, T, T]` tensors per layer until backward, which at a
//! sequence of 1024 is most of a training step's memory.

use candle_core::{DType, Tensor, D};

use super::layers::{repeat_kv, AttnMask, LayerCache};
use crate::autograd::{accumulate, release, with_backward, with_backward_value, Stash, Value};
use crate::gemm;
use crate::kernels::attention as flash;
use crate::kernels::{self, Kernel};
use crate::Result;

/// f32 elements of one block of scores: 8 Mi (32 MiB).
const BLOCK_SCORES: usize = 8 << 20;

/// Queries per block for `[b, h, _, tk]` scores.
fn query_block(b: usize, h: usize, tk: usize) -> usize {
    (BLOCK_SCORES / (b * h * tk).max(1)).max(1)
}

/// The scores of one block of queries after scaling, soft-capping and masking, in f32,
/// and the soft-capped scores before masking when soft-capping is on (for its derivative).
fn block_scores(
    q: &Tensor,
    k: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    mask: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let mut s = (gemm::matmul(q, &k.t()?)? * scale)?;
    let mut capped = None;
    if let Some(cap) = softcap {
        s = ((s / cap)?.tanh()? * cap)?;
        capped = Some(s.to_dtype(DType::F32)?);
    }
    let s = s.broadcast_add(mask)?.to_dtype(DType::F32)?;
    Ok((s, capped))
}

/// Keys and values `[B, KVH, Tk, D]` for [`attend`], and whose they are.
pub enum KeyValues {
    /// The layer's own, made in this pass, which nothing reads after attention (a pass without
    /// a KV cache: training, validation): attention without the flash kernel frees them once it
    /// has repeated them for grouped-query heads, so the graph holds k and v once, not twice.
    Own(Tensor, Tensor),
    /// The KV cache's, which the next decoding step reads again: never freed.
    Cached(Tensor, Tensor),
}

impl KeyValues {
    /// This pass's `k` and `v`, appended to the layer's KV cache when the pass has one.
    pub fn of_pass(k: Tensor, v: Tensor, cache: Option<&mut LayerCache>) -> Result<Self> {
        Ok(match cache {
            Some(c) => {
                let (k, v) = c.append(&k, &v)?;
                KeyValues::Cached(k, v)
            }
            None => KeyValues::Own(k, v),
        })
    }
}

/// Attention for `q: [B, H, Tq, D]` and not yet repeated keys and values: the
/// flash-attention kernel on CUDA when it handles the inputs (bf16/f16, head dim 64/128/256,
/// no soft-capping) and its switch is on, else [`attention`] over repeated key/value heads.
///
/// With a checkpoint `stash`, the first run keeps the output and its log-sum-exp, and the
/// replay takes them back instead of running the forward again: the backward pass, which
/// recomputes the probabilities block by block from the log-sum-exp, is the same either way.
pub fn attend(
    q: &Tensor,
    kv: KeyValues,
    scale: f64,
    softcap: Option<f64>,
    mask: &AttnMask,
    mut stash: Option<&mut Stash>,
) -> Result<Tensor> {
    let (k, v, own) = match &kv {
        KeyValues::Own(k, v) => (k, v, true),
        KeyValues::Cached(k, v) => (k, v, false),
    };
    let kept = stash.as_deref_mut().and_then(|s| s.take(2));
    let keep = |stash: Option<&mut Stash>, o: &Tensor, lse: &Tensor| {
        if let Some(s) = stash {
            s.keep(&[o, lse]);
        }
    };
    if softcap.is_none()
        && kernels::use_fused(Kernel::Attention, q.device())
        && flash::supported(q, k)
    {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let (o, lse) = match kept {
            Some(t) => (t[0].clone(), t[1].clone()),
            None => {
                let (o, lse) = flash_forward(&q, &k, &v, scale, mask)?;
                keep(stash, &o, &lse);
                (o, lse)
            }
        };
        return flash_op(o, lse, &q, &k, &v, scale, mask);
    }
    let n_rep = q.dim(1)? / k.dim(1)?.max(1);
    let (k_in, v_in) = (k, v);
    let k = repeat_kv(k_in, n_rep)?;
    let v = repeat_kv(v_in, n_rep)?;
    if own && n_rep > 1 {
        // The repeats are the un-repeated heads' last readers and read nothing in backward, and
        // their producers (RoPE for k; v's head-major copy or projection) do not read their own
        // results: free them (see `crate::autograd::release`). Never a cache's: the next
        // decoding step reads those.
        release(k_in)?;
        release(v_in)?;
    }
    let additive = mask.additive()?;
    let (b, h, _, _) = q.dims4()?;
    let block = query_block(b, h, k.dim(2)?);
    let (o, lse) = match kept {
        Some(t) => (t[0].clone(), t[1].clone()),
        None => {
            let (o, lse) = blocked_forward(q, &k, &v, scale, softcap, additive, block)?;
            keep(stash, &o, &lse);
            (o, lse)
        }
    };
    blocked_op(o, lse, q, &k, &v, scale, softcap, additive, block)
}

fn flash_params(scale: f64, mask: &AttnMask) -> flash::FlashParams {
    flash::FlashParams {
        scale: scale as f32,
        offset: mask.offset,
        window: mask.window,
    }
}

/// The flash-attention forward kernel: the output and each row's log-sum-exp.
fn flash_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &AttnMask,
) -> Result<(Tensor, Tensor)> {
    flash::flash_fwd(
        &q.detach(),
        &k.detach(),
        &v.detach(),
        mask.key_valid.as_ref(),
        &flash_params(scale, mask),
    )
}

/// `o` as the result of the flash-attention kernels' op: backward reads `o` back from the op's
/// result (which the graph holds anyway, as the input of the ops after it) and keeps the
/// log-sum-exp.
fn flash_op(
    o: Tensor,
    lse: Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &AttnMask,
) -> Result<Tensor> {
    let p = flash_params(scale, mask);
    let key_valid = mask.key_valid.clone();
    with_backward_value(
        "flash-attention",
        Value::Tensor(o),
        &[q, k, v],
        move |inputs, o, g| {
            let (dq, dk, dv) = flash::flash_bwd(
                &inputs[0].detach(),
                &inputs[1].detach(),
                &inputs[2].detach(),
                o,
                &lse,
                &g.to_dtype(o.dtype())?.contiguous()?,
                key_valid.as_ref(),
                &p,
            )
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            Ok(vec![Some(dq), Some(dk), Some(dv)])
        },
    )
}

/// `softmax(q kᵀ · scale (+ softcap) + mask) v` for `q: [B, H, Tq, D]`, `k, v: [B, H, Tk, D]`
/// and an additive `mask: [B | 1, 1, Tq, Tk]`. The softmax runs in f32, as transformers'
/// eager attention does; the result has `v`'s dtype.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    mask: &Tensor,
) -> Result<Tensor> {
    let (b, h, _, _) = q.dims4()?;
    let block = query_block(b, h, k.dim(2)?);
    attention_in_blocks(q, k, v, scale, softcap, mask, block)
}

fn attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    mask: &Tensor,
    block: usize,
) -> Result<Tensor> {
    let (o, lse) = blocked_forward(q, k, v, scale, softcap, mask, block)?;
    blocked_op(o, lse, q, k, v, scale, softcap, mask, block)
}

/// The output over blocks of `block` queries, and each row's softmax statistics
/// `[.., 2]` (row max and sum of exp).
fn blocked_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    mask: &Tensor,
    block: usize,
) -> Result<(Tensor, Tensor)> {
    let tq = q.dim(2)?;
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for start in (0..tq).step_by(block) {
        let n = block.min(tq - start);
        let (s, _) = block_scores(
            &qd.narrow(2, start, n)?,
            &kd,
            scale,
            softcap,
            &mask.narrow(2, start, n)?,
        )?;
        let max = s.max_keepdim(D::Minus1)?;
        let e = s.broadcast_sub(&max)?.exp()?;
        let z = e.sum_keepdim(D::Minus1)?;
        let p = e.broadcast_div(&z)?;
        // Kept apart: for a row whose keys are all masked, `max` is near f32::MIN and
        // `max + log z` would round back to `max`.
        lses.push(Tensor::cat(&[&max, &z], D::Minus1)?);
        outs.push(gemm::matmul(&p.to_dtype(vd.dtype())?, &vd)?);
    }
    Ok((Tensor::cat(&outs, 2)?, Tensor::cat(&lses, 2)?))
}

/// `o` as the result of the blocked attention op, whose backward recomputes the
/// probabilities block by block from the statistics `lse`.
#[allow(clippy::too_many_arguments)]
fn blocked_op(
    o: Tensor,
    lse: Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    mask: &Tensor,
    block: usize,
) -> Result<Tensor> {
    let mask = mask.clone();
    with_backward("attention", o, &[q, k, v], move |inputs, grad| {
        attention_backward(inputs, grad, &lse, &mask, scale, softcap, block)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    })
}

fn attention_backward(
    inputs: &[&Tensor],
    grad: &Tensor,
    lse: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    block: usize,
) -> Result<Vec<Option<Tensor>>> {
    let (q, k, v) = (inputs[0].detach(), inputs[1].detach(), inputs[2].detach());
    let tq = q.dim(2)?;
    let kf = k.to_dtype(DType::F32)?;
    let vf = v.to_dtype(DType::F32)?;
    let grad = grad.to_dtype(DType::F32)?;
    let mut dq = Vec::new();
    let mut dk: Option<Tensor> = None;
    let mut dv: Option<Tensor> = None;
    for start in (0..tq).step_by(block) {
        let n = block.min(tq - start);
        let qc = q.narrow(2, start, n)?;
        let (s, capped) = block_scores(&qc, &k, scale, softcap, &mask.narrow(2, start, n)?)?;
        let stats = lse.narrow(2, start, n)?;
        let (max, z) = (stats.narrow(3, 0, 1)?, stats.narrow(3, 1, 1)?);
        let p = s.broadcast_sub(&max)?.exp()?.broadcast_div(&z)?;
        let go = grad.narrow(2, start, n)?;
        let dp = gemm::matmul(&go, &vf.t()?)?;
        let rowdot = (&p * &dp)?.sum_keepdim(D::Minus1)?;
        let mut ds = (&p * dp.broadcast_sub(&rowdot)?)?;
        if let (Some(cap), Some(t)) = (softcap, capped) {
            let tanh = (t / cap)?;
            ds = (ds * (1.0 - tanh.sqr()?)?)?;
        }
        let ds = (ds * scale)?;
        dq.push(gemm::matmul(&ds, &kf)?);
        let qf = qc.to_dtype(DType::F32)?;
        let dk_c = gemm::matmul(&ds.t()?, &qf)?;
        let dv_c = gemm::matmul(&p.t()?, &go)?;
        accumulate(&mut dk, dk_c)?;
        accumulate(&mut dv, dv_c)?;
    }
    let dq = Tensor::cat(&dq, 2)?;
    let back = |t: Option<Tensor>, like: &Tensor| -> Result<Option<Tensor>> {
        t.map(|t| Ok(t.to_dtype(like.dtype())?)).transpose()
    };
    Ok(vec![
        Some(dq.to_dtype(q.dtype())?),
        back(dk, &k)?,
        back(dv, &v)?,
    ])
}

/// Plain attention under candle's autograd, for tests and as the reference.
pub fn attention_eager(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    mask: &Tensor,
) -> Result<Tensor> {
    let mut scores = (gemm::matmul(q, &k.t()?)? * scale)?;
    if let Some(cap) = softcap {
        scores = ((scores / cap)?.tanh()? * cap)?;
    }
    let scores = scores.broadcast_add(mask)?;
    let probs =
        candle_nn::ops::softmax(&scores.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(v.dtype())?;
    Ok(gemm::matmul(&probs, v)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::attention_mask;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    }

    fn check(softcap: Option<f64>, block: Option<usize>) -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 7, 4);
        let pad = vec![vec![true; t], {
            let mut r = vec![false; 2];
            r.extend(vec![true; t - 2]);
            r
        }];
        let mask = attention_mask(b, t, 0, Some(&pad), Some(4), DType::F32, &dev)?;
        let mk = || -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::randn(
                0f32,
                1.,
                (b, h, t, d),
                &dev,
            )?)?)
        };
        let (q, k, v) = (mk()?, mk()?, mk()?);
        let w = Tensor::randn(0f32, 1., (b, h, t, d), &dev)?;
        let run = |f: &dyn Fn() -> Result<Tensor>| -> Result<(Tensor, Vec<Tensor>)> {
            let o = f()?;
            let g = (&o * &w)?.sum_all()?.backward()?;
            let grads = [&q, &k, &v]
                .iter()
                .map(|x| {
                    g.get(x.as_tensor())
                        .cloned()
                        .ok_or(crate::Error::Msg("no grad".into()))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((o, grads))
        };
        let (oe, ge) = run(&|| {
            attention_eager(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                0.5,
                softcap,
                &mask,
            )
        })?;
        let block = block.unwrap_or(query_block(b, h, t));
        let (of, gf) = run(&|| {
            attention_in_blocks(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                0.5,
                softcap,
                &mask,
                block,
            )
        })?;
        assert!(max_diff(&oe, &of)? < 1e-5, "outputs differ");
        for (a, b) in ge.iter().zip(&gf) {
            let diff = max_diff(a, b)?;
            assert!(diff < 1e-5, "gradients differ by {diff}");
        }
        Ok(())
    }

    #[test]
    fn blocked_attention_matches_eager_values_and_gradients() -> Result<()> {
        check(None, None)
    }

    #[test]
    fn blocked_attention_matches_eager_with_softcap() -> Result<()> {
        check(Some(2.0), Some(2))
    }

    #[test]
    fn uneven_query_blocks_match_eager() -> Result<()> {
        check(None, Some(3))
    }

    /// Grouped heads without the flash kernel: the layer's own k and v are freed once repeated,
    /// a cache's are kept, and the output and gradients are the same either way.
    #[test]
    fn own_keys_and_values_are_freed_once_repeated_and_cached_ones_kept() -> Result<()> {
        use candle_core::Storage;
        let dev = Device::Cpu;
        let (b, h, kvh, t, d) = (2, 4, 2, 5, 4);
        let mask = AttnMask::new(b, t, 0, None, None, DType::F32, &dev)?;
        let var = |heads| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::randn(
                0f32,
                1.,
                (b, heads, t, d),
                &dev,
            )?)?)
        };
        let (q, k, v) = (var(h)?, var(kvh)?, var(kvh)?);
        let w = Tensor::randn(0f32, 1., (b, h, t, d), &dev)?;
        let held = |x: &Tensor| match &*x.storage_and_layout().0 {
            Storage::Cpu(c) => c.as_slice::<f32>().map(|s| s.len()).unwrap_or(0),
            _ => 0,
        };
        let run = |own: bool| -> Result<(Vec<f32>, Vec<Vec<f32>>, usize)> {
            // As a layer makes them: k and v are results of ops on the graph, not leaves.
            let (k1, v1) = ((k.as_tensor() * 1.0)?, (v.as_tensor() * 1.0)?);
            let (k_seen, v_seen) = (k1.clone(), v1.clone());
            let kv = if own {
                KeyValues::Own(k1, v1)
            } else {
                KeyValues::Cached(k1, v1)
            };
            let o = attend(q.as_tensor(), kv, 0.5, None, &mask, None)?;
            let kept = held(&k_seen) + held(&v_seen);
            let g = (&o * &w)?.sum_all()?.backward()?;
            let mut grads = Vec::new();
            for x in [&q, &k, &v] {
                let gx = g
                    .get(x.as_tensor())
                    .ok_or(crate::Error::Msg("no grad".into()))?;
                grads.push(gx.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok((o.flatten_all()?.to_vec1()?, grads, kept))
        };
        let (o_own, g_own, kept_own) = run(true)?;
        let (o_cached, g_cached, kept_cached) = run(false)?;
        assert_eq!(kept_own, 2, "the layer's own k and v were not freed");
        assert_eq!(
            kept_cached,
            2 * b * kvh * t * d,
            "a cache's k and v were freed"
        );
        assert_eq!(o_own, o_cached);
        assert_eq!(g_own, g_cached);
        Ok(())
    }

    #[test]
    fn query_blocks_cover_long_sequences() {
        assert_eq!(query_block(4, 9, 1024), 227);
        assert_eq!(query_block(1, 1, 1 << 30), 1);
    }
}
