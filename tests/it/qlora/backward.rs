//! LoRA's own backward: dropout masks redrawn from their key, inputs remade for the replay,
//! and no gradient for a frozen weight.

use super::*;

/// With dropout on, the LoRA projection's own backward (which redraws the mask from its key)
/// gives the gradients of autograd through the same mask applied explicitly, and the fused
/// mask op gives those of the unfused one.
#[test]
fn dropout_lora_gradients_equal_autograd_through_its_mask() {
    use lora_train::kernels::dropout;
    use std::sync::atomic::AtomicU64;
    let w = randn((24, 64), 14);
    let a = Var::from_tensor(&(randn((4, 64), 15) * 0.1).unwrap()).unwrap();
    let b = Var::from_tensor(&(randn((24, 4), 16) * 0.1).unwrap()).unwrap();
    let (x, g) = (randn((3, 64), 17), randn((3, 24), 18));
    let (seed, salt, rate, scale) = (99u64, 5u64, 0.3, 2.0);
    let key = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut lin = Linear::new(w.clone(), None);
    lin.set_salt(salt);
    let mut lora = LoraWeights::frozen(a.as_tensor().clone(), b.as_tensor().clone(), scale);
    lora.dropout = rate;
    lora.dropout_seed = Some(Arc::new(AtomicU64::new(seed)));
    lin.set_lora(Some(lora));
    let grads = |fused: bool| {
        let xv = Var::from_tensor(&x).unwrap();
        let run = || lin.forward(xv.as_tensor()).unwrap();
        let y = if fused {
            lora_train::kernels::with_fused_on_cpu(run)
        } else {
            run()
        };
        let s = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        [xv.as_tensor(), a.as_tensor(), b.as_tensor()].map(|t| s.get(t).unwrap().clone())
    };
    // The reference: y = x Wᵀ + scale · ((x ∘ mask) Aᵀ) Bᵀ by candle's autograd.
    let mask = dropout::apply_unfused(
        &Tensor::ones((3, 64), DType::F32, &Device::Cpu).unwrap(),
        key,
        1.0 - rate,
        DType::F32,
    )
    .unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let xm = (xv.as_tensor() * &mask).unwrap();
    let lora_out = xm
        .matmul(&a.as_tensor().t().unwrap())
        .unwrap()
        .matmul(&b.as_tensor().t().unwrap())
        .unwrap();
    let y = (x_w(xv.as_tensor(), &w) + (lora_out * scale).unwrap()).unwrap();
    let s = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let want = [xv.as_tensor(), a.as_tensor(), b.as_tensor()].map(|t| s.get(t).unwrap().clone());
    let dropped = mask
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .flatten()
        .filter(|v| **v == 0.0)
        .count();
    assert!(dropped > 0, "the mask dropped nothing");
    for fused in [false, true] {
        let got = grads(fused);
        for (name, (a, b)) in ["x", "A", "B"].iter().zip(got.iter().zip(&want)) {
            let d = common::max_abs_diff(a, b);
            assert!(
                d < 1e-5,
                "gradient of {name} (fused {fused}) differs by {d}"
            );
        }
    }
}

/// A projection given a `Recompute` for its input gives the gradients of the one that holds it,
/// with dropout on too, after the input's storage is released (so its backward cannot have read
/// it); and a remake that gives another value changes them (the test can fail).
#[test]
fn a_remade_input_gives_the_held_inputs_gradients() {
    use lora_train::autograd::release;
    use lora_train::lora::Recompute;
    use std::sync::atomic::AtomicU64;
    let w = randn((24, 64), 24);
    let a = Var::from_tensor(&(randn((4, 64), 25) * 0.1).unwrap()).unwrap();
    let b = Var::from_tensor(&(randn((24, 4), 26) * 0.1).unwrap()).unwrap();
    // Rows in two leading dims, as the model passes them.
    let x = randn((6, 64), 27).reshape((2, 3, 64)).unwrap();
    let g = randn((6, 24), 28).reshape((2, 3, 24)).unwrap();
    for rate in [0.0, 0.3] {
        let mut lin = Linear::new(w.clone(), None);
        lin.set_salt(3);
        let mut lora = LoraWeights::frozen(a.as_tensor().clone(), b.as_tensor().clone(), 2.0);
        lora.dropout = rate;
        lora.dropout_seed = Some(Arc::new(AtomicU64::new(41)));
        lin.set_lora(Some(lora));
        // The input is made from x by an op whose backward does not read its result (x·1.5 + 0.25).
        let grads = |remake: Option<f64>| {
            let xv = Var::from_tensor(&x).unwrap();
            let h = xv.as_tensor().affine(1.5, 0.25).unwrap();
            let y = match remake {
                None => lin.forward(&h).unwrap(),
                Some(shift) => {
                    let xd = x.clone();
                    let make: Recompute = Arc::new(move || Ok(xd.affine(1.5, shift)?));
                    let y = lin.forward_recomputed(&h, true, &make).unwrap();
                    release(&h).unwrap();
                    y
                }
            };
            let s = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            [xv.as_tensor(), a.as_tensor(), b.as_tensor()].map(|t| s.get(t).unwrap().clone())
        };
        let (held, remade, wrong) = (grads(None), grads(Some(0.25)), grads(Some(0.5)));
        for (name, (h, r)) in ["x", "A", "B"].iter().zip(held.iter().zip(&remade)) {
            assert_eq!(
                common::max_abs_diff(h, r),
                0.0,
                "gradient of {name} (dropout {rate})"
            );
        }
        // Only A's gradient reads the input.
        assert!(common::max_abs_diff(&held[1], &wrong[1]) > 1e-3);
    }
}

fn x_w(x: &Tensor, w: &Tensor) -> Tensor {
    x.matmul(&w.t().unwrap()).unwrap()
}

#[test]
fn frozen_weights_get_no_gradient() {
    let w = randn((6, 8), 9);
    let x = randn((2, 8), 10);
    let frozen = FrozenWeight::Dense(w.clone());
    let xv = Var::from_tensor(&x).unwrap();
    let y = frozen.matmul_t(xv.as_tensor()).unwrap();
    // `sqr`, not a product with a constant: candle would store a gradient for the constant.
    let store = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(store.get(xv.as_tensor()).is_some());
    assert!(
        store.get(&w).is_none(),
        "a frozen weight got a gradient buffer"
    );
    // Candle's own matmul would also store `[out, in]` for the `wᵀ` view.
    assert_eq!(
        store.get_ids().count(),
        1,
        "a gradient buffer besides the input's"
    );
}
