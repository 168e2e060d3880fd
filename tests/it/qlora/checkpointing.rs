//! Gradient checkpointing (both modes) and the fused paths give the plain run's loss and
//! gradients on the tiny Llama and Gemma 3.

use super::*;

/// Both checkpointing modes (attention output kept for the replay, or recomputed) give the
/// plain run's loss and gradients, with and without dropout.
fn check_checkpointing(name: &str) {
    for (dropout, recompute_attention) in [(0.0, false), (0.1, false), (0.0, true), (0.1, true)] {
        let mut m = tiny(name);
        let vocab = m.model.vocab_size() as u32;
        let mut params = adapter(&mut m, dropout);
        let mb = batch(vocab);
        params.set_dropout_seed(if dropout > 0.0 { 99 } else { 0 });
        let (loss_plain, plain) = micro_batch_grads(m.model.as_ref(), &params, &mb, 10).unwrap();
        params.set_gradient_checkpointing(m.model.as_mut(), true, recompute_attention);
        let (loss_ckpt, ckpt) = micro_batch_grads(m.model.as_ref(), &params, &mb, 10).unwrap();
        assert!((loss_plain - loss_ckpt).abs() < 1e-9 * loss_plain.abs().max(1.0));
        let worst = worst_relative_diff(name, "checkpointing", &plain, &ckpt);
        assert!(
            worst < 1e-5,
            "{name} (dropout {dropout}, recompute_attention {recompute_attention}): \
             checkpointed gradients differ by {worst:e} (relative)"
        );
    }
}

#[test]
fn checkpointed_llama_gradients_equal_plain_ones() {
    strict(|| check_checkpointing("tiny-llama"));
}

#[test]
fn checkpointed_gemma3_gradients_equal_plain_ones() {
    strict(|| check_checkpointing("tiny-gemma3"));
}

/// The model's fused paths (RMSNorm, RoPE, GLU and the vocabulary-blocked cross-entropy as
/// one op each, run by their CPU implementations) give the unfused loss and LoRA gradients,
/// plain and checkpointed: on a GPU the same wiring runs the CUDA kernels.
fn check_fused_paths(name: &str) {
    for checkpointing in [false, true] {
        let mut m = tiny(name);
        let vocab = m.model.vocab_size() as u32;
        let mut params = adapter(&mut m, 0.0);
        params.set_gradient_checkpointing(m.model.as_mut(), checkpointing, false);
        let mb = batch(vocab);
        let (loss_ref, want) = micro_batch_grads(m.model.as_ref(), &params, &mb, 10).unwrap();
        let (loss, got) = lora_train::kernels::with_fused_on_cpu(|| {
            micro_batch_grads(m.model.as_ref(), &params, &mb, 10).unwrap()
        });
        assert!(
            (loss - loss_ref).abs() < 1e-5 * loss_ref.abs().max(1.0),
            "{name}: fused loss {loss} vs unfused {loss_ref}"
        );
        let worst = worst_relative_diff(name, "the fused path", &want, &got);
        assert!(
            worst < 1e-4,
            "{name} (checkpointing {checkpointing}): fused gradients differ by {worst:e} (relative)"
        );
    }
}

#[test]
fn fused_llama_paths_give_the_unfused_gradients() {
    strict(|| check_fused_paths("tiny-llama"));
}

#[test]
fn fused_gemma3_paths_give_the_unfused_gradients() {
    strict(|| check_fused_paths("tiny-gemma3"));
}
