//! Scaled dot-product attention that never keeps the `[B, H, T, T]` probabilities: the
//! forward pass runs over blocks of queries and keeps only each row's log-sum-exp, and the
//! backward pass recomputes one block of probabilities at a time (the FlashAttention-2
//! recurrences, Dao 2023, §3.1, written with tensor ops). Eager attention under candle's
//! autograd keeps several `[B, H, T, T]` tensors per layer until backward, which at a
//! sequence of 1024 is most of a training step's memory.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Tensor, D};

use super::cache::LayerCache;
use super::mask::AttnMask;
use crate::autograd::{accumulate, release, with_backward, with_backward_value, Stash, Value};
use crate::gemm;
use crate::kernels::attention as flash;
use crate::kernels::{self, softmax, Kernel};
use crate::Result;

/// f32 elements of one block of scores: 8 Mi (32 MiB).
const BLOCK_SCORES: usize = 8 << 20;

/// Queries per block at most in a packed row's conversation: a block reads the keys up to its
/// last query, so shorter blocks skip more of the causal mask's upper triangle.
const PACKED_QUERY_BLOCK: usize = 128;

/// Queries per block for `[b, h, _, tk]` scores.
fn query_block(b: usize, h: usize, tk: usize) -> usize {
    (BLOCK_SCORES / (b * h * tk).max(1)).max(1)
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
    let (b, h, _, _) = q.dims4()?;
    let conversations = mask.segments.as_ref().map(|s| Arc::new(s.conversations()));
    let block = match conversations {
        // Packed rows run one conversation at a time; long ones in blocks that skip the keys
        // after their last query.
        Some(_) => query_block(1, h, k.dim(2)?).min(PACKED_QUERY_BLOCK),
        None => query_block(b, h, k.dim(2)?),
    };
    let blocks = Blocks {
        scale,
        softcap,
        mask: mask.additive()?.clone(),
        block,
        causal: Some(Causal {
            offset: mask.offset,
            window: mask.window,
        }),
        conversations,
    };
    let (o, lse) = match kept {
        Some(t) => (t[0].clone(), t[1].clone()),
        None => {
            let (o, lse) = blocks.forward(q, &k, &v)?;
            keep(stash, &o, &lse);
            (o, lse)
        }
    };
    blocks.op(o, lse, q, &k, &v)
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
        mask.segment_starts()?,
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
    let segment_starts = mask.segment_starts()?.cloned();
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
                segment_starts.as_ref(),
                &p,
            )?;
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
    let blocks = Blocks {
        scale,
        softcap,
        mask: mask.clone(),
        block: query_block(b, h, k.dim(2)?),
        causal: None,
        conversations: None,
    };
    blocks.attention(q, k, v)
}

/// Blocked attention's constants: the scale, soft-capping, the additive mask, queries per
/// block, and whether the mask is causal.
#[derive(Clone)]
struct Blocks {
    scale: f64,
    softcap: Option<f64>,
    mask: Tensor,
    block: usize,
    /// `Some` when the mask is causal (see [`Causal`]): a block of queries then reads only the
    /// keys its queries may see, and the products and the softmax skip the rest.
    causal: Option<Causal>,
    /// Packed rows' conversations (token ranges per row, see
    /// [`Segments::conversations`](super::mask::Segments::conversations)): each row then runs
    /// on its own, in blocks within one conversation that read that conversation's keys only.
    conversations: Option<Arc<Vec<Vec<Range<usize>>>>>,
}

/// The work of one pass of [`Blocks`]: groups of rows, each with spans of keys whose
/// gradients are summed apart, each with its blocks of queries. Concatenated in order, a
/// group's blocks are all its queries and its spans all its keys.
struct Group {
    rows: Range<usize>,
    spans: Vec<Span>,
}

/// A block's queries and the keys they read.
type QueryBlock = (Range<usize>, Range<usize>);

struct Span {
    keys: Range<usize>,
    /// The queries of each block, and the keys they read (within `keys`).
    blocks: Vec<QueryBlock>,
}

/// The structure of a causal mask: its first query sits at position `offset` (keys from 0), and
/// with a sliding `window` a query at `p` sees keys after `p - window` only (as
/// [`attention_mask`](super::mask::attention_mask)). A block of queries then reads keys from its
/// first query's window start to its last query's position, since every key outside that range is
/// masked for all of them: about half of a long sequence's work without a window, and with one,
/// every key but the `window + block` or so nearest the block. A query whose every key is masked
/// (padding, nothing reads its result) attends evenly to the keys its block reads, rather than to
/// all keys as eager attention's does.
#[derive(Clone, Debug)]
struct Causal {
    offset: usize,
    window: Option<usize>,
}

impl Blocks {
    /// The keys that queries `start..start + n` of `tk` keys read, none before `first`.
    fn keys(&self, start: usize, n: usize, tk: usize, first: usize) -> Range<usize> {
        match &self.causal {
            Some(Causal { offset, window }) => {
                let end = (offset + start + n).min(tk);
                let first = window
                    .map_or(0, |w| (offset + start + 1).saturating_sub(w))
                    .max(first);
                first.min(end.saturating_sub(1))..end
            }
            None => 0..tk,
        }
    }

    /// The blocks of `queries` of `tk` keys, which read no key before `keys.start`.
    fn span(&self, queries: Range<usize>, keys: Range<usize>, tk: usize) -> Span {
        let blocks = queries
            .clone()
            .step_by(self.block.max(1))
            .map(|start| {
                let n = self.block.min(queries.end - start);
                (start..start + n, self.keys(start, n, tk, keys.start))
            })
            .collect();
        Span { keys, blocks }
    }

    /// A pass over `b` rows of `tq` queries and `tk` keys: all rows at once, or each packed row
    /// on its own, one span per conversation (packed rows have no cache: `tq == tk`).
    fn plan(&self, b: usize, tq: usize, tk: usize) -> Vec<Group> {
        match &self.conversations {
            Some(rows) => rows
                .iter()
                .enumerate()
                .map(|(r, convs)| Group {
                    rows: r..r + 1,
                    spans: convs
                        .iter()
                        .map(|c| self.span(c.clone(), c.clone(), tk))
                        .collect(),
                })
                .collect(),
            None => vec![Group {
                rows: 0..b,
                spans: vec![self.span(0..tq, 0..tk, tk)],
            }],
        }
    }

    /// The rows of [`Blocks::mask`] for `group` of `b` rows: all of a mask broadcast over rows.
    fn group_mask(&self, group: &Group, b: usize) -> Result<Tensor> {
        if self.mask.dim(0)? != b {
            return Ok(self.mask.clone());
        }
        let [mask] = rows_of(&group.rows, b, [&self.mask])?;
        Ok(mask)
    }

    fn attention(self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (o, lse) = self.forward(q, k, v)?;
        self.op(o, lse, q, k, v)
    }

    /// The scores of `queries` (of `q`, whole) against `keys`, after scaling, soft-capping and
    /// masking with `mask` (the group's rows of [`Blocks::mask`]), in f32, and the soft-capped
    /// scores before masking when soft-capping is on (for its derivative).
    fn scores(
        &self,
        q: &Tensor,
        k: &Tensor,
        mask: &Tensor,
        queries: &Range<usize>,
        keys: &Range<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let q = q.narrow(2, queries.start, queries.len())?;
        let mut s = (gemm::matmul(&q, &narrow_keys(k, keys)?.t()?)? * self.scale)?;
        let mut capped = None;
        if let Some(cap) = self.softcap {
            s = ((s / cap)?.tanh()? * cap)?;
            capped = Some(s.to_dtype(DType::F32)?);
        }
        let mask =
            mask.narrow(2, queries.start, queries.len())?
                .narrow(3, keys.start, keys.len())?;
        let s = s.broadcast_add(&mask)?.to_dtype(DType::F32)?;
        Ok((s, capped))
    }

    /// The output over blocks of queries, and each row's softmax statistics `[.., 2]` (row
    /// max and sum of exp).
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, _, tq, _) = q.dims4()?;
        let tk = k.dim(2)?;
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let (mut outs, mut lses) = (Vec::new(), Vec::new());
        for group in self.plan(b, tq, tk) {
            let [q, k, v] = rows_of(&group.rows, b, [&q, &k, &v])?;
            let mask = self.group_mask(&group, b)?;
            let (mut o, mut lse) = (Vec::new(), Vec::new());
            for (queries, keys) in group.spans.iter().flat_map(|s| &s.blocks) {
                let (s, _) = self.scores(&q, &k, &mask, queries, keys)?;
                let (p, stats) = softmax::forward(&s)?;
                lse.push(stats);
                let p = p.to_dtype(v.dtype())?;
                o.push(gemm::matmul(&p, &narrow_keys(&v, keys)?)?);
            }
            outs.push(Tensor::cat(&o, 2)?);
            lses.push(Tensor::cat(&lse, 2)?);
        }
        Ok((Tensor::cat(&outs, 0)?, Tensor::cat(&lses, 0)?))
    }

    /// `o` as the result of the blocked attention op, whose backward recomputes the
    /// probabilities block by block from the statistics `lse`.
    fn op(self, o: Tensor, lse: Tensor, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        with_backward("attention", o, &[q, k, v], move |inputs, grad| {
            self.backward(inputs, grad, &lse)
                .map_err(candle_core::Error::from)
        })
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        grad: &Tensor,
        lse: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (q, k, v) = (inputs[0].detach(), inputs[1].detach(), inputs[2].detach());
        let (b, _, tq, _) = q.dims4()?;
        let tk = k.dim(2)?;
        let kf = k.to_dtype(DType::F32)?;
        let vf = v.to_dtype(DType::F32)?;
        let grad = grad.to_dtype(DType::F32)?;
        let (mut dqs, mut dks, mut dvs) = (Vec::new(), Vec::new(), Vec::new());
        for group in self.plan(b, tq, tk) {
            let [q, k, kf, vf, grad, lse] =
                rows_of(&group.rows, b, [&q, &k, &kf, &vf, &grad, lse])?;
            let mask = self.group_mask(&group, b)?;
            let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
            for span in &group.spans {
                let (mut dk_span, mut dv_span): (Option<Tensor>, Option<Tensor>) = (None, None);
                for (queries, keys) in &span.blocks {
                    let (start, n) = (queries.start, queries.len());
                    let (s, capped) = self.scores(&q, &k, &mask, queries, keys)?;
                    let p = softmax::probs(&s, &lse.narrow(2, start, n)?)?;
                    let go = grad.narrow(2, start, n)?;
                    let dp = gemm::matmul(&go, &narrow_keys(&vf, keys)?.t()?)?;
                    let mut ds = softmax::scores_grad(&p, &dp, self.scale)?;
                    if let (Some(cap), Some(t)) = (self.softcap, capped) {
                        let tanh = (t / cap)?;
                        ds = (ds * (1.0 - tanh.sqr()?)?)?;
                    }
                    dq.push(gemm::matmul(&ds, &narrow_keys(&kf, keys)?)?);
                    let qf = q.narrow(2, start, n)?.to_dtype(DType::F32)?;
                    // The span's keys outside `keys` got nothing from this block.
                    let in_span = |g: Tensor| {
                        g.pad_with_zeros(2, keys.start - span.keys.start, span.keys.end - keys.end)
                    };
                    accumulate(&mut dk_span, in_span(gemm::matmul(&ds.t()?, &qf)?)?)?;
                    accumulate(&mut dv_span, in_span(gemm::matmul(&p.t()?, &go)?)?)?;
                }
                dk.extend(dk_span);
                dv.extend(dv_span);
            }
            dqs.push(Tensor::cat(&dq, 2)?);
            dks.push(Tensor::cat(&dk, 2)?);
            dvs.push(Tensor::cat(&dv, 2)?);
        }
        let back = |parts: Vec<Tensor>, like: &Tensor| -> Result<Option<Tensor>> {
            Ok(Some(Tensor::cat(&parts, 0)?.to_dtype(like.dtype())?))
        };
        Ok(vec![back(dqs, &q)?, back(dks, &k)?, back(dvs, &v)?])
    }
}

/// `xs` narrowed to `rows` of their `b` (each whole when `rows` is).
fn rows_of<const N: usize>(rows: &Range<usize>, b: usize, xs: [&Tensor; N]) -> Result<[Tensor; N]> {
    let mut out = xs.map(Tensor::clone);
    if rows.len() != b {
        for x in out.iter_mut() {
            *x = x.narrow(0, rows.start, rows.len())?;
        }
    }
    Ok(out)
}

/// Keys or values `[.., Tk, D]` at positions `keys`.
fn narrow_keys(x: &Tensor, keys: &Range<usize>) -> Result<Tensor> {
    Ok(x.narrow(2, keys.start, keys.len())?)
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

/// Repeats key/value heads for grouped-query attention: `[B, kv, T, D] -> [B, kv*n, T, D]`.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, t, d))?
        .reshape((b, kv * n_rep, t, d))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mask::attention_mask;
    use crate::testutil::max_abs_diff;
    use candle_core::{Device, Var};

    /// Blocked attention against eager attention, with a sliding window and a left-padded row,
    /// `offset` keys before the queries (as with a KV cache), over blocks of `block` queries,
    /// as a plain mask and as a causal one (whose blocks skip the keys after their last query
    /// and before their first query's window).
    fn check(softcap: Option<f64>, block: Option<usize>, offset: usize) -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 7, 4);
        let tk = offset + t;
        let pad = vec![vec![true; tk], {
            let mut r = vec![false; offset + 2];
            r.extend(vec![true; t - 2]);
            r
        }];
        let window = 4;
        let mask = attention_mask(b, t, offset, Some(&pad), Some(window), DType::F32, &dev)?;
        let mk = |len| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::randn(
                0f32,
                1.,
                (b, h, len, d),
                &dev,
            )?)?)
        };
        let (q, k, v) = (mk(t)?, mk(tk)?, mk(tk)?);
        // The padded row's first two queries see only padding. The plain mask's blocks
        // match eager attention on every row; with the causal one what those two attend to is
        // unspecified (nothing reads their results in a model), so they are left out.
        let mut live = vec![1f32; b * t];
        live[t] = 0.0;
        live[t + 1] = 0.0;
        let live = Tensor::from_vec(live, (b, 1, t, 1), &dev)?;
        let every = live.ones_like()?;
        let w = Tensor::randn(0f32, 1., (b, h, t, d), &dev)?;
        // The output on the `rows` kept, and the gradients of `sum(output · w)` on those rows.
        let run =
            |f: &dyn Fn() -> Result<Tensor>, rows: &Tensor| -> Result<(Tensor, Vec<Tensor>)> {
                let o = f()?.broadcast_mul(rows)?;
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
        let causal = Causal {
            offset,
            window: Some(window),
        };
        for (causal, rows) in [(None, &every), (Some(causal), &live)] {
            let eager = || {
                attention_eager(
                    q.as_tensor(),
                    k.as_tensor(),
                    v.as_tensor(),
                    0.5,
                    softcap,
                    &mask,
                )
            };
            let (oe, ge) = run(&eager, rows)?;
            let blocks = Blocks {
                scale: 0.5,
                softcap,
                mask: mask.clone(),
                block: block.unwrap_or(query_block(b, h, tk)),
                causal: causal.clone(),
                conversations: None,
            };
            // Strict: the key ranges of a block are products CUDA's GEMM takes as they are.
            let (of, gf) = crate::gemm::with_strict_gemm(|| {
                run(
                    &|| {
                        blocks
                            .clone()
                            .attention(q.as_tensor(), k.as_tensor(), v.as_tensor())
                    },
                    rows,
                )
            })?;
            assert!(
                max_abs_diff(&oe, &of)? < 1e-5,
                "outputs differ ({causal:?})"
            );
            for (a, b) in ge.iter().zip(&gf) {
                let diff = max_abs_diff(a, b)?;
                assert!(diff < 1e-5, "gradients differ by {diff} ({causal:?})");
            }
        }
        Ok(())
    }

    #[test]
    fn blocked_attention_matches_eager_values_and_gradients() -> Result<()> {
        check(None, None, 0)
    }

    #[test]
    fn blocked_attention_matches_eager_with_softcap() -> Result<()> {
        check(Some(2.0), Some(2), 0)
    }

    #[test]
    fn uneven_query_blocks_match_eager() -> Result<()> {
        check(None, Some(3), 0)
    }

    #[test]
    fn queries_after_cached_keys_match_eager() -> Result<()> {
        check(None, Some(3), 5)?;
        check(Some(2.0), Some(1), 2)
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

    /// Packed rows through `attend` (blocks of 2 queries that skip the keys before their
    /// conversation) against eager attention under the block-diagonal mask, with and without
    /// a window, grouped heads: outputs and gradients.
    #[test]
    fn packed_blocks_match_eager_attention() -> Result<()> {
        use crate::model::mask::Segments;
        let dev = Device::Cpu;
        let (b, h, kvh, t, d) = (2, 4, 2, 9, 4);
        let seg = Segments::new(
            vec![
                vec![0, 0, 0, 0, 4, 4, 4, 7, 7],
                vec![0, 0, 2, 2, 2, 2, 2, 2, 8],
            ],
            t,
        )?;
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
        for window in [None, Some(2)] {
            let mask = AttnMask::packed(&seg, window, DType::F32, &dev)?;
            let grads = |o: Tensor| -> Result<(Tensor, Vec<Tensor>)> {
                let g = (&o * &w)?.sum_all()?.backward()?;
                let gs = [&q, &k, &v]
                    .iter()
                    .map(|x| {
                        g.get(x.as_tensor())
                            .cloned()
                            .ok_or(crate::Error::Msg("no grad".into()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((o, gs))
            };
            let (kr, vr) = (repeat_kv(k.as_tensor(), 2)?, repeat_kv(v.as_tensor(), 2)?);
            let eager = attention_eager(q.as_tensor(), &kr, &vr, 0.5, None, mask.additive()?)?;
            let (oe, ge) = grads(eager)?;
            let kv = KeyValues::Own((k.as_tensor() * 1.0)?, (v.as_tensor() * 1.0)?);
            let blocked = attend(q.as_tensor(), kv, 0.5, None, &mask, None)?;
            // Conversations of up to 6 tokens in blocks of 3: a conversation's second block
            // reads its first's keys too.
            let small = Blocks {
                scale: 0.5,
                softcap: None,
                mask: mask.additive()?.clone(),
                block: 3,
                causal: Some(Causal { offset: 0, window }),
                conversations: Some(Arc::new(seg.conversations())),
            };
            // Strict: CUDA's GEMM takes the products of one row's blocks as they are.
            let small = crate::gemm::with_strict_gemm(|| {
                grads(small.attention(q.as_tensor(), &kr, &vr)?)
            })?;
            for (how, (ob, gb)) in [("attend", grads(blocked)?), ("blocks of 3", small)] {
                assert!(
                    max_abs_diff(&oe, &ob)? < 1e-5,
                    "{how}: outputs differ ({window:?})"
                );
                for (a, c) in ge.iter().zip(&gb) {
                    let diff = max_abs_diff(a, c)?;
                    assert!(
                        diff < 1e-5,
                        "{how}: gradients differ by {diff} ({window:?})"
                    );
                }
            }
        }
        // Blocks of at most 3 queries within each row's conversations, reading the keys from
        // their conversation's start (or window's) to their last query.
        let blocks = |window| Blocks {
            scale: 1.0,
            softcap: None,
            mask: Tensor::zeros(1, DType::F32, &dev).unwrap(),
            block: 3,
            causal: Some(Causal { offset: 0, window }),
            conversations: Some(Arc::new(seg.conversations())),
        };
        type Tiles = Vec<(Range<usize>, Vec<Range<usize>>, Vec<QueryBlock>)>;
        let tiles = |window| -> Tiles {
            blocks(window)
                .plan(b, t, t)
                .into_iter()
                .map(|g| {
                    let keys = g.spans.iter().map(|s| s.keys.clone()).collect();
                    let blocks = g.spans.into_iter().flat_map(|s| s.blocks).collect();
                    (g.rows, keys, blocks)
                })
                .collect()
        };
        assert_eq!(
            tiles(None),
            vec![
                (
                    0..1,
                    vec![0..4, 4..7, 7..9],
                    vec![(0..3, 0..3), (3..4, 0..4), (4..7, 4..7), (7..9, 7..9)]
                ),
                (
                    1..2,
                    vec![0..2, 2..8, 8..9],
                    vec![(0..2, 0..2), (2..5, 2..5), (5..8, 2..8), (8..9, 8..9)]
                ),
            ]
        );
        assert_eq!(tiles(Some(2))[1].2[2], (5..8, 4..8));
        Ok(())
    }

    #[test]
    fn causal_blocks_read_the_keys_of_their_queries_windows() {
        let blocks = |offset, window| Blocks {
            scale: 1.0,
            softcap: None,
            mask: Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
            block: 4,
            causal: Some(Causal { offset, window }),
            conversations: None,
        };
        // Queries 8..12 at positions 10..14 see keys up to 13; with a window of 3, from 8.
        assert_eq!(blocks(2, None).keys(8, 4, 14, 0), 0..14);
        assert_eq!(blocks(2, Some(3)).keys(8, 4, 14, 0), 8..14);
        assert_eq!(blocks(0, Some(3)).keys(0, 4, 14, 0), 0..4);
        assert_eq!(blocks(0, Some(100)).keys(8, 4, 14, 0), 0..12);
        // A packed conversation's blocks read from its start.
        assert_eq!(blocks(0, Some(100)).keys(8, 4, 14, 6), 6..12);
        // Never an empty range, even for keys that end before the block's queries.
        assert_eq!(blocks(2, Some(1)).keys(8, 4, 5, 0), 4..5);
    }

    #[test]
    fn query_blocks_cover_long_sequences() {
        assert_eq!(query_block(4, 9, 1024), 227);
        assert_eq!(query_block(1, 1, 1 << 30), 1);
    }
}
