//! Quantized frozen weights: their backward equals dequantize-then-matmul, and a GGUF
//! model's blocks give the dequantized model.

use super::*;

#[test]
fn quantized_linear_gradient_equals_dequantize_then_matmul() {
    let w = randn((40, 256), 1);
    let x = randn((5, 256), 2);
    let g = randn((5, 40), 3);
    for format in [Quantize::Nf4, Quantize::Q4_0, Quantize::Q4K, Quantize::Q8_0] {
        // 7 rows per block: the 40 rows span six blocks, the last one short.
        let q = QuantWeight::quantize_in_blocks("w", &w, format, DType::F32, 7).unwrap();
        assert_eq!(q.block_ranges().len(), 6);
        let dense = q.dequantize().unwrap();
        let rel = common::max_abs_diff(&dense, &w) / common::max_abs(&w);
        assert!(rel < 0.2, "{format}: dequantized weight is off by {rel}");
        let frozen = FrozenWeight::Quant(Arc::new(q));
        let (y, gx) = strict(|| input_grad(|x| frozen.matmul_t(x).unwrap(), &x, &g));
        let y_ref = x.matmul(&dense.t().unwrap()).unwrap();
        let gx_ref = g.matmul(&dense).unwrap();
        assert!(common::max_abs_diff(&y, &y_ref) < 1e-4, "{format}: forward");
        assert!(
            common::max_abs_diff(&gx, &gx_ref) < 1e-4,
            "{format}: input gradient"
        );
    }
}

#[test]
fn lora_over_a_quantized_base_trains_like_over_its_dequantized_weight() {
    let w = randn((24, 64), 4);
    let q = QuantWeight::quantize_in_blocks("w", &w, Quantize::Nf4, DType::F32, 10).unwrap();
    let dense = q.dequantize().unwrap();
    let a = Var::from_tensor(&(randn((4, 64), 5) * 0.1).unwrap()).unwrap();
    let b = Var::from_tensor(&(randn((24, 4), 6) * 0.1).unwrap()).unwrap();
    let x = randn((3, 64), 7);
    let g = randn((3, 24), 8);
    let grads = |weight: FrozenWeight| {
        let mut lin = Linear::from_frozen(weight, None);
        lin.set_lora(Some(LoraWeights::frozen(
            a.as_tensor().clone(),
            b.as_tensor().clone(),
            2.0,
        )));
        let xv = Var::from_tensor(&x).unwrap();
        let y = lin.forward(xv.as_tensor()).unwrap();
        let s = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        [xv.as_tensor(), a.as_tensor(), b.as_tensor()].map(|t| s.get(t).unwrap().clone())
    };
    let quant = grads(FrozenWeight::Quant(Arc::new(q)));
    let reference = grads(FrozenWeight::Dense(dense));
    for (name, (a, b)) in ["x", "A", "B"].iter().zip(quant.iter().zip(&reference)) {
        let d = common::max_abs_diff(a, b);
        assert!(d < 1e-4, "gradient of {name} differs by {d}");
    }
}

#[test]
fn gguf_blocks_give_the_dequantized_model() {
    let path = common::real_model(common::SMOLLM2);
    let logits = |quantize| {
        let m = load(
            &path,
            &LoadOptions {
                quantize,
                ..Default::default()
            },
        )
        .unwrap();
        let ids = Tensor::new(&[[1u32, 9690, 28, 1072, 359, 346, 47, 2]], &Device::Cpu).unwrap();
        m.model.forward(&ids, None).unwrap()
    };
    let dense = logits(Quantize::None);
    let blocks = logits(Quantize::Gguf);
    // Same blocks, dequantized once at load or block by block at each product (q/k rows
    // moved to HF order as whole quantized rows): equal up to summation order.
    let d = common::max_abs_diff(&dense, &blocks);
    assert!(
        d < 1e-3,
        "GGUF blocks differ from the dequantized model by {d}"
    );
    for q in [Quantize::Q8_0, Quantize::Q4_0, Quantize::Nf4] {
        let l = logits(q);
        let mean = (&dense - &l)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!(
            "{q}: mean |logit diff| {mean}, max {}",
            common::max_abs_diff(&dense, &l)
        );
        // Re-quantizing a Q4_1 model: 8-bit is nearly lossless, 4-bit grids move logits by a
        // few units on average (measured: q8_0 0.20, q4_0 3.4, nf4 3.7).
        let bound = if q == Quantize::Q8_0 { 0.5 } else { 6.0 };
        assert!(mean > 1e-3 && mean < bound, "{q}: mean logit change {mean}");
    }
    let err = load(
        &path,
        &LoadOptions {
            quantize: Quantize::Q4K,
            ..Default::default()
        },
    )
    .err()
    .expect("576 is not a multiple of 256");
    assert!(err.to_string().contains("multiple of 256"), "{err}");
}
