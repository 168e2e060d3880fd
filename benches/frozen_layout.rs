//! A frozen projection's forward product and input gradient (`FrozenWeight::product_t`,
//! `grad_input`) with the weight row-major against `FrozenWeight::dense`'s layout, for
//! SmolLM2-135M's projection shapes in f32 on the CPU, from one decoded token to a 1024-token
//! batch. Prints milliseconds per call and the ratio. `cargo bench --bench frozen_layout`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use lora_train::quant::FrozenWeight;

fn millis(f: &dyn Fn() -> lora_train::Result<Tensor>) -> lora_train::Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let n = 30;
    let clock = Instant::now();
    for _ in 0..n {
        f()?;
    }
    Ok(clock.elapsed().as_secs_f64() / n as f64 * 1e3)
}

fn main() -> lora_train::Result<()> {
    lora_train::threads::settle();
    let dev = Device::Cpu;
    println!("| out × in | rows | forward: row-major / dense() ms | input gradient: row-major / dense() ms | both, dense() / row-major |");
    println!("|---|---|---|---|---|");
    for (out, inp) in [(576, 1536), (1536, 576), (576, 576), (192, 576)] {
        let w = Tensor::randn(0f32, 1., (out, inp), &dev)?;
        let (rows, dense) = (FrozenWeight::Dense(w.clone()), FrozenWeight::dense(w)?);
        for m in [1, 16, 265, 340, 1024] {
            let x = Tensor::randn(0f32, 1., (m, inp), &dev)?;
            let g = Tensor::randn(0f32, 1., (m, out), &dev)?;
            let (f0, f1) = (
                millis(&|| rows.product_t(&x))?,
                millis(&|| dense.product_t(&x))?,
            );
            let (b0, b1) = (
                millis(&|| rows.grad_input(&g))?,
                millis(&|| dense.grad_input(&g))?,
            );
            println!(
                "| {out} × {inp} | {m} | {f0:.3} / {f1:.3} | {b0:.3} / {b1:.3} | {:.2}× |",
                (f1 + b1) / (f0 + b0)
            );
        }
    }
    Ok(())
}
