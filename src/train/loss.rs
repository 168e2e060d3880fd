//! The training loss of a micro-batch: summed cross-entropy over its target tokens.
//!
//! The caller divides by the target count of the whole optimizer step, which is how
//! gradient accumulation must normalise (transformers#34191, trl#2175).

use candle_core::Tensor;

use crate::data::batch::MicroBatch;
use crate::eval::loss::nll_rows;
use crate::model::mask::Segments;
use crate::model::CausalLm;
use crate::Result;

/// Sum of target-token NLLs of `batch` (a scalar f32 tensor that carries gradients); packed
/// rows run with attention kept inside each conversation.
pub fn micro_batch_nll_sum(model: &dyn CausalLm, batch: &MicroBatch) -> Result<Tensor> {
    let hidden = match &batch.segment_starts {
        Some(starts) => {
            let segments = Segments::new(starts.clone(), batch.input_ids.dim(1)?)?;
            model.forward_hidden_packed(&batch.input_ids, &segments)?
        }
        None => model.forward_hidden(&batch.input_ids, batch.attention_mask.as_ref())?,
    };
    let (b, t, h) = hidden.dims3()?;
    let flat = hidden.reshape((b * t, h))?;
    Ok(nll_rows(model, &flat, &batch.pred_rows, &batch.target_ids)?.sum_all()?)
}
