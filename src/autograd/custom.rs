//! Ops whose forward value is computed outside the graph and whose backward is a closure: the way
//! to give a computation a cheaper or more memory-frugal gradient than candle's autograd builds.
//! The graph keeps only the op's inputs and the closure. A candle op must return a storage of its
//! own; [`Value`] says how the value gets there (copied, summed into it, zeros made in place, or
//! written by a fused kernel), and [`with_backward_value`] lets the backward read the op's result.
//! See DEVELOPERS.md, "Ops with their own backward".

use std::sync::{Arc, Mutex};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor,
};

use crate::{Error, Result};

/// The gradient of each input from the op's inputs and the gradient of its output.
pub type BackwardFn =
    dyn Fn(&[&Tensor], &Tensor) -> candle_core::Result<Vec<Option<Tensor>>> + Send + Sync;

/// The gradient of each input from the op's inputs, its result and the gradient of its output.
pub type BackwardResFn =
    dyn Fn(&[&Tensor], &Tensor, &Tensor) -> candle_core::Result<Vec<Option<Tensor>>> + Send + Sync;

/// A custom op computing a forward value from the op's inputs (as many as it takes).
pub enum ForwardOp {
    One(Box<dyn CustomOp1 + Send + Sync>),
    Two(Box<dyn CustomOp2 + Send + Sync>),
    Three(Box<dyn CustomOp3 + Send + Sync>),
}

impl ForwardOp {
    fn arity(&self) -> usize {
        match self {
            ForwardOp::One(_) => 1,
            ForwardOp::Two(_) => 2,
            ForwardOp::Three(_) => 3,
        }
    }
}

/// How the op's forward value is made (see the module docs).
pub enum Value {
    Tensor(Tensor),
    /// `a + b`, same shape and dtype. Neither may share storage with an input of the op.
    Sum(Tensor, Tensor),
    Zeros(Shape, DType),
    Op(ForwardOp),
}

/// Returns `value` as the result of an op over `inputs` (1 to 3 tensors) whose backward is
/// `bwd(inputs, grad_of_value)`, which returns one optional gradient per input. When no
/// input tracks gradients, `value` is returned as is (detached).
pub fn with_backward<F>(
    name: &'static str,
    value: Tensor,
    inputs: &[&Tensor],
    bwd: F,
) -> Result<Tensor>
where
    F: Fn(&[&Tensor], &Tensor) -> candle_core::Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
{
    build(
        name,
        Value::Tensor(value),
        inputs,
        Backward::Plain(Arc::new(bwd)),
    )
}

/// [`with_backward`] with the value made as `value` says, and a backward that also gets the
/// op's result: `bwd(inputs, result, grad_of_result)`.
pub fn with_backward_value<F>(
    name: &'static str,
    value: Value,
    inputs: &[&Tensor],
    bwd: F,
) -> Result<Tensor>
where
    F: Fn(&[&Tensor], &Tensor, &Tensor) -> candle_core::Result<Vec<Option<Tensor>>>
        + Send
        + Sync
        + 'static,
{
    build(name, value, inputs, Backward::WithResult(Arc::new(bwd)))
}

enum Backward {
    Plain(Arc<BackwardFn>),
    WithResult(Arc<BackwardResFn>),
}

fn build(name: &'static str, value: Value, inputs: &[&Tensor], bwd: Backward) -> Result<Tensor> {
    if inputs.is_empty() || inputs.len() > 3 {
        return Err(Error::shape(
            name,
            "1 to 3 inputs for a custom backward",
            format!("{} inputs", inputs.len()),
        ));
    }
    let value = match value {
        Value::Tensor(t) => {
            let t = t.detach();
            if !inputs.iter().any(|t| t.track_op()) {
                return Ok(t);
            }
            Value::Tensor(t)
        }
        Value::Sum(a, b) => {
            if a.dims() != b.dims() || a.dtype() != b.dtype() {
                return Err(Error::shape(
                    name,
                    "two terms of one shape and dtype",
                    format!(
                        "{:?} {:?} and {:?} {:?}",
                        a.dims(),
                        a.dtype(),
                        b.dims(),
                        b.dtype()
                    ),
                ));
            }
            Value::Sum(a.detach(), b.detach())
        }
        Value::Op(op) if op.arity() != inputs.len() => {
            return Err(Error::shape(
                name,
                format!("{} inputs for its forward op", op.arity()),
                format!("{} inputs", inputs.len()),
            ))
        }
        v => v,
    };
    let op = PassThrough {
        name,
        value: Mutex::new(Some(value)),
        bwd,
    };
    Ok(match inputs {
        [a] => a.apply_op1(op)?,
        [a, b] => a.apply_op2(b, op)?,
        [a, b, c] => a.apply_op3(b, c, op)?,
        _ => unreachable!("checked above"),
    })
}

struct PassThrough {
    name: &'static str,
    /// Taken by the forward call, so the op holds no activation afterwards.
    value: Mutex<Option<Value>>,
    bwd: Backward,
}

/// One backend's storage inside a [`Storage`], or `None` for another backend's.
type Pick<S> = fn(&Storage) -> Option<&S>;

impl PassThrough {
    fn take(&self) -> candle_core::Result<Value> {
        self.value
            .lock()
            .map_err(|_| Error::Msg(format!("{}: poisoned", self.name)))?
            .take()
            .ok_or_else(|| Error::Msg(format!("{}: forward ran twice", self.name)).into())
    }

    /// The op's storage on the backend of `first` (its first input), with `run` for a
    /// [`Value::Op`].
    fn forward<S>(
        &self,
        first: &S,
        pick: Pick<S>,
        run: impl FnOnce(ForwardOp) -> candle_core::Result<(S, Shape)>,
    ) -> candle_core::Result<(S, Shape)>
    where
        S: BackendStorage,
        S::Device: BackendDevice<Storage = S>,
    {
        let on = |t: &Tensor| -> candle_core::Result<()> {
            if t.device().location() != first.device().location() {
                candle_core::bail!(
                    "{}: the value is on another device than the inputs",
                    self.name
                )
            }
            Ok(())
        };
        match self.take()? {
            Value::Tensor(t) => {
                on(&t)?;
                let (s, l) = t.storage_and_layout();
                let s = pick(&s).ok_or_else(|| self.elsewhere())?;
                Ok((contiguous_copy(s, l)?, l.shape().clone()))
            }
            Value::Sum(a, b) => {
                on(&a)?;
                on(&b)?;
                let ((sa, la), (sb, lb)) = (a.storage_and_layout(), b.storage_and_layout());
                let (sa, sb) = (
                    pick(&sa).ok_or_else(|| self.elsewhere())?,
                    pick(&sb).ok_or_else(|| self.elsewhere())?,
                );
                Ok((
                    sa.binary_impl::<candle_core::op::Add>(sb, la, lb)?,
                    la.shape().clone(),
                ))
            }
            Value::Zeros(shape, dtype) => Ok((first.device().zeros_impl(&shape, dtype)?, shape)),
            Value::Op(op) => run(op),
        }
    }

    fn elsewhere(&self) -> candle_core::Error {
        Error::Msg(format!("{}: the value is on another backend", self.name)).into()
    }

    fn arity_error(&self) -> candle_core::Error {
        Error::Msg(format!("{}: forward op arity mismatch", self.name)).into()
    }

    fn grads(
        &self,
        inputs: &[&Tensor],
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let g = match &self.bwd {
            Backward::Plain(f) => f(inputs, grad)?,
            Backward::WithResult(f) => f(inputs, &res.detach(), grad)?,
        };
        if g.len() != inputs.len() {
            candle_core::bail!(
                "{}: backward returned {} gradients for {} inputs",
                self.name,
                g.len(),
                inputs.len()
            );
        }
        // Candle stores whatever gradient an op returns, also for an input that leads to
        // nothing trainable, and keeps it until the store is dropped: hand back none.
        Ok(g.into_iter()
            .zip(inputs)
            .map(|(g, x)| g.filter(|_| x.track_op()))
            .collect())
    }
}

fn pick_cpu(s: &Storage) -> Option<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Some(c),
        _ => None,
    }
}

#[cfg(feature = "cuda")]
fn pick_cuda(s: &Storage) -> Option<&candle_core::CudaStorage> {
    match s {
        Storage::Cuda(c) => Some(c),
        _ => None,
    }
}

#[cfg(feature = "metal")]
fn pick_metal(s: &Storage) -> Option<&candle_core::MetalStorage> {
    match s {
        Storage::Metal(c) => Some(c),
        _ => None,
    }
}

/// A fresh contiguous copy of the `layout` view of `s`.
fn contiguous_copy<S>(s: &S, layout: &Layout) -> candle_core::Result<S>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: every element of the new buffer is written by `copy_strided_src` below.
    let mut dst = unsafe { s.device().alloc_uninit(layout.shape(), s.dtype())? };
    s.copy_strided_src(&mut dst, 0, layout)?;
    Ok(dst)
}

/// The device forwards of a `PassThrough` of one arity: `$variant` is the [`ForwardOp`] that
/// runs on its inputs.
macro_rules! device_fwds {
    ($variant:ident, $first:ident, $($arg:ident : $lay:ident),*) => {
        fn cpu_fwd(&self, $($arg: &CpuStorage, $lay: &Layout),*) -> candle_core::Result<(CpuStorage, Shape)> {
            self.forward($first, pick_cpu, |op| match op {
                ForwardOp::$variant(op) => op.cpu_fwd($($arg, $lay),*),
                _ => Err(self.arity_error()),
            })
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            $($arg: &candle_core::CudaStorage, $lay: &Layout),*
        ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
            self.forward($first, pick_cuda, |op| match op {
                ForwardOp::$variant(op) => op.cuda_fwd($($arg, $lay),*),
                _ => Err(self.arity_error()),
            })
        }

        #[cfg(feature = "metal")]
        fn metal_fwd(
            &self,
            $($arg: &candle_core::MetalStorage, $lay: &Layout),*
        ) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
            self.forward($first, pick_metal, |op| match op {
                ForwardOp::$variant(op) => op.metal_fwd($($arg, $lay),*),
                _ => Err(self.arity_error()),
            })
        }
    };
}

impl CustomOp1 for PassThrough {
    fn name(&self) -> &'static str {
        self.name
    }

    device_fwds!(One, a, a: la);

    fn bwd(&self, a: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.grads(&[a], res, grad)?.remove(0))
    }
}

impl CustomOp2 for PassThrough {
    fn name(&self) -> &'static str {
        self.name
    }

    device_fwds!(Two, a, a: la, b: lb);

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b], res, grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp3 for PassThrough {
    fn name(&self) -> &'static str {
        self.name
    }

    device_fwds!(Three, a, a: la, b: lb, c: lc);

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b, c], res, grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn value_passes_through_and_backward_is_the_closure() -> Result<()> {
        let x = Var::new(&[1f32, 2., 3.], &Device::Cpu)?;
        let value = (x.as_tensor().detach() * 10.0)?;
        // A deliberately "wrong" gradient (3 instead of 10) shows the closure is what runs.
        let y = with_backward("times-ten", value, &[x.as_tensor()], |_, g| {
            Ok(vec![Some((g * 3.0)?)])
        })?;
        assert_eq!(y.to_vec1::<f32>()?, vec![10., 20., 30.]);
        let grads = y.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).map(|g| g.to_vec1::<f32>());
        assert_eq!(g.transpose()?, Some(vec![3., 3., 3.]));
        Ok(())
    }

    /// An op computing `2x` from its input (forward only).
    struct Double;

    impl CustomOp1 for Double {
        fn name(&self) -> &'static str {
            "double"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            let x: Vec<f32> = match (s, l.contiguous_offsets()) {
                (CpuStorage::F32(v), Some((a, b))) => v[a..b].iter().map(|x| x * 2.0).collect(),
                _ => candle_core::bail!("contiguous f32 only"),
            };
            Ok((CpuStorage::F32(x), l.shape().clone()))
        }
    }

    #[test]
    fn each_kind_of_value_reaches_the_result_and_backward_sees_the_result() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[1f32, 2.], [3., 4.]], &dev)?;
        let xt = x.as_tensor();
        let a = Tensor::new(&[[10f32, 20.], [30., 40.]], &dev)?;
        // A transposed view: the sum reads it through its strides.
        let b = Tensor::new(&[[1f32, 3.], [2., 4.]], &dev)?.t()?;
        let cases: Vec<(Value, Vec<f32>)> = vec![
            (Value::Tensor(a.t()?), vec![10., 30., 20., 40.]),
            (Value::Sum(a.clone(), b), vec![11., 22., 33., 44.]),
            (Value::Zeros((2, 2).into(), DType::F32), vec![0.; 4]),
            (
                Value::Op(ForwardOp::One(Box::new(Double))),
                vec![2., 4., 6., 8.],
            ),
        ];
        for (value, want) in cases {
            // Backward returns the result times the gradient: it must see this op's result.
            let y = with_backward_value("value", value, &[xt], |_, res, g| {
                Ok(vec![Some((res * g)?)])
            })?;
            assert!(y.track_op());
            assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, want);
            let grads = (&y * 3.0)?.sum_all()?.backward()?;
            let g = grads.get(xt).expect("a gradient").flatten_all()?;
            let want3: Vec<f32> = want.iter().map(|v| v * 3.0).collect();
            assert_eq!(g.to_vec1::<f32>()?, want3);
        }
        // A forward op of the wrong arity, and a sum of unlike tensors, are refused.
        let two = ForwardOp::One(Box::new(Double));
        assert!(
            with_backward_value("bad", Value::Op(two), &[xt, xt], |_, _, _| Ok(vec![
                None, None
            ]))
            .is_err()
        );
        let unlike = Value::Sum(a.clone(), a.to_dtype(DType::F64)?);
        assert!(with_backward_value("bad", unlike, &[xt], |_, _, _| Ok(vec![None])).is_err());
        Ok(())
    }

    #[test]
    fn untracked_inputs_skip_the_op() -> Result<()> {
        let x = Tensor::new(&[1f32, 2.], &Device::Cpu)?;
        let y = with_backward("noop", (&x + 1.0)?, &[&x], |_, _| Ok(vec![None]))?;
        assert!(!y.track_op());
        assert_eq!(y.to_vec1::<f32>()?, vec![2., 3.]);
        Ok(())
    }
}
