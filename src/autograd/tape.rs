//! The tape: a define-by-run record of one forward pass, replayed backwards.
//!
//! Every op computes its output value now and pushes it onto the tape together
//! with a closure that knows how to turn the gradient of that output into
//! gradients of its inputs (the chain rule, one op at a time).
//! `backward` walks the records in reverse and lets each closure `+=` into the
//! gradients of its inputs (`ctx.grad`), or hand over a freshly computed one
//! (`ctx.accumulate`), so a value used twice gets both contributions.
//!
//! Parameters do not live on the tape: they live in a [`ParamStore`] that
//! outlives every step. `tape.param(id)` copies a parameter onto the tape as a
//! leaf; after `backward`, [`Tape::param_gradients`] hands out its gradient.

use super::params::{BatchStatistics, ParamId, ParamStore};
use crate::tensor::Tensor;

/// A handle to a value on a tape (an index; cheap to copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(pub(crate) usize);

/// Training (batch statistics, gradients) or evaluation (running statistics, no gradients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch norm uses batch statistics; ops record their backward.
    Train,
    /// Batch norm uses running statistics; nothing is recorded for backward.
    Eval,
}

/// What an op's backward closure is given: the forward values and the
/// gradient slots of the whole tape.
pub struct BackwardContext<'t> {
    values: &'t [Tensor],
    /// The tape position of the op whose backward runs.
    output: usize,
    grads: &'t mut [Option<Tensor>],
    requires_grad: &'t [bool],
}

impl<'t> BackwardContext<'t> {
    /// The forward value of `var` (borrowed for as long as the context lives,
    /// so it can be held while writing gradients).
    pub fn value(&self, var: Var) -> &'t Tensor {
        let values: &'t [Tensor] = self.values;
        &values[var.0]
    }

    /// The forward value of the op's own output (what a ReLU epilogue reads its mask from).
    pub fn output(&self) -> &'t Tensor {
        let values: &'t [Tensor] = self.values;
        &values[self.output]
    }

    /// The gradient accumulator of `var`, created as zeros on first use, or
    /// `None` when nothing upstream of `var` needs a gradient (so the op can
    /// skip that computation). Backward code must `+=` into it; an op whose
    /// gradient is a fresh tensor hands it to [`Self::accumulate`] instead.
    pub fn grad(&mut self, var: Var) -> Option<&mut Tensor> {
        if !self.requires_grad[var.0] {
            return None;
        }
        let shape = &self.values[var.0].shape;
        Some(self.grads[var.0].get_or_insert_with(|| Tensor::zeros(shape)))
    }

    /// Whether anything upstream of `var` needs its gradient.
    pub fn needs_grad(&self, var: Var) -> bool {
        self.requires_grad[var.0]
    }

    /// Adds a freshly computed `contribution` to the gradient of `var`: the
    /// first one becomes the accumulator as it is (no zero-filled buffer, no
    /// addition), later ones are added to it. Ignored when `var` needs no
    /// gradient.
    pub fn accumulate(&mut self, var: Var, contribution: Tensor) {
        if !self.requires_grad[var.0] {
            return;
        }
        match &mut self.grads[var.0] {
            Some(sum) => sum.add_assign(&contribution), // checks the shapes
            slot => {
                assert_eq!(
                    contribution.shape, self.values[var.0].shape,
                    "accumulate: gradient shape differs from the value's"
                );
                *slot = Some(contribution)
            }
        }
    }

    /// Adds `contribution` to the gradient of `var`, copying it in as the
    /// accumulator when it is the first (a copy instead of zeros plus an addition).
    pub fn accumulate_copy(&mut self, var: Var, contribution: &Tensor) {
        match &mut self.grads[var.0] {
            Some(sum) => sum.add_assign(contribution), // checks the shapes
            None if self.requires_grad[var.0] => self.accumulate(var, contribution.clone()),
            None => {}
        }
    }
}

type BackwardFn = Box<dyn FnOnce(&Tensor, &mut BackwardContext)>;

/// One forward pass: values, their backward closures, and their gradients.
pub struct Tape<'s> {
    params: &'s ParamStore,
    mode: Mode,
    values: Vec<Tensor>,
    backward_fns: Vec<Option<BackwardFn>>,
    requires_grad: Vec<bool>,
    grads: Vec<Option<Tensor>>,
    /// Which parameter each leaf is a copy of.
    param_leaves: Vec<(Var, ParamId)>,
    /// Batch statistics measured by batch-norm layers in training mode; the
    /// trainer folds them into the running statistics after the step.
    batch_statistics: Vec<BatchStatistics>,
}

impl<'s> Tape<'s> {
    /// A tape that reads parameters from `params`.
    pub fn new(params: &'s ParamStore, mode: Mode) -> Tape<'s> {
        Tape {
            params,
            mode,
            values: Vec::new(),
            backward_fns: Vec::new(),
            requires_grad: Vec::new(),
            grads: Vec::new(),
            param_leaves: Vec::new(),
            batch_statistics: Vec::new(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn is_training(&self) -> bool {
        self.mode == Mode::Train
    }

    /// The parameter store this tape reads from.
    pub fn params(&self) -> &'s ParamStore {
        self.params
    }

    /// A constant input (no gradient is computed for it).
    pub fn input(&mut self, value: Tensor) -> Var {
        self.push_value(value, false, None)
    }

    /// A leaf whose gradient we want (in training mode), e.g. an input under a gradient check.
    pub fn leaf(&mut self, value: Tensor) -> Var {
        let wants_grad = self.mode == Mode::Train;
        self.push_value(value, wants_grad, None)
    }

    /// Copies parameter `id` onto the tape as a leaf.
    pub fn param(&mut self, id: ParamId) -> Var {
        let value = self.params.value(id).clone();
        let var = self.leaf(value);
        self.param_leaves.push((var, id));
        var
    }

    /// The forward value of `var`.
    ///
    /// # Panics
    /// If `var` was released ([`Tape::release`]).
    pub fn value(&self, var: Var) -> &Tensor {
        let value = &self.values[var.0];
        assert!(
            !value.data.is_empty() || value.shape.contains(&0),
            "tape value {} ({:?}) was released: evaluation frees the activations no later op reads",
            var.0,
            value.shape
        );
        value
    }

    /// `op(input)`, after which `input` is released ([`Tape::release`]): one link of a chain
    /// of ops whose values each feed only the next (airbench94's layers).
    pub fn chain(&mut self, input: Var, op: impl FnOnce(&mut Tape<'s>, Var) -> Var) -> Var {
        let output = op(self, input);
        self.release(input);
        output
    }

    /// Evaluation mode: frees the value of `var`, which no later op reads, so that a forward
    /// pass keeps a few activations in memory instead of all of them (and the allocator hands
    /// the freed, cache-warm buffers to the next ops). Does nothing in training mode, where the
    /// backward pass reads them.
    pub fn release(&mut self, var: Var) {
        if self.mode == Mode::Eval {
            self.values[var.0].data = Vec::new();
        }
    }

    /// The gradient of `var` after `backward` (None if it got none).
    pub fn grad(&self, var: Var) -> Option<&Tensor> {
        self.grads[var.0].as_ref()
    }

    /// Records an op's output. `backward(grad_output, ctx)` is stored only if
    /// some input needs a gradient; it must `+=` into `ctx.grad(input)`.
    pub fn push(
        &mut self,
        value: Tensor,
        inputs: &[Var],
        backward: impl FnOnce(&Tensor, &mut BackwardContext) + 'static,
    ) -> Var {
        let needs = inputs.iter().any(|v| self.requires_grad[v.0]);
        if needs {
            self.push_value(value, true, Some(Box::new(backward)))
        } else {
            self.push_value(value, false, None)
        }
    }

    /// True if some gradient will flow into `var` (ops use this to skip saving
    /// state for backward in evaluation mode).
    pub fn requires_grad(&self, var: Var) -> bool {
        self.requires_grad[var.0]
    }

    fn push_value(&mut self, value: Tensor, requires_grad: bool, f: Option<BackwardFn>) -> Var {
        self.values.push(value);
        self.backward_fns.push(f);
        self.requires_grad.push(requires_grad);
        self.grads.push(None);
        Var(self.values.len() - 1)
    }

    /// Backpropagates from a scalar `loss` (its gradient is seeded with 1).
    pub fn backward(&mut self, loss: Var) {
        let shape = &self.values[loss.0].shape;
        assert_eq!(
            shape.iter().product::<usize>(),
            1,
            "backward: the loss must hold one value, got shape {shape:?}"
        );
        let seed = Tensor::full(shape, 1.0);
        self.backward_with(loss, seed);
    }

    /// Backpropagates from `output`, seeding its gradient with `grad_output`.
    pub fn backward_with(&mut self, output: Var, grad_output: Tensor) {
        self.backward_with_progress(output, grad_output, |_, _| {});
    }

    /// [`Tape::backward_with`], calling `settled(tape, position)` after the op at every tape
    /// position from `output` down to 0: from then on the gradient of every value at
    /// `position` or later is final (only ops recorded after a value read it). A data-parallel
    /// step uses it to send the gradients of the last layers while the backward pass goes on.
    pub fn backward_with_progress(
        &mut self,
        output: Var,
        grad_output: Tensor,
        mut settled: impl FnMut(&Tape, usize),
    ) {
        assert_eq!(
            grad_output.shape, self.values[output.0].shape,
            "backward_with: seed gradient shape differs from the output's"
        );
        match &mut self.grads[output.0] {
            Some(g) => g.add_assign(&grad_output),
            slot => *slot = Some(grad_output),
        }
        for index in (0..=output.0).rev() {
            self.backward_op(index);
            settled(self, index);
        }
    }

    /// Runs the backward function of the op at `index`, if it has one and a gradient flowed
    /// into its output.
    fn backward_op(&mut self, index: usize) {
        let Some(backward) = self.backward_fns[index].take() else {
            return;
        };
        // The gradient of an intermediate value is consumed here and freed.
        let Some(grad_output) = self.grads[index].take() else {
            return; // nothing flowed into this value
        };
        let mut ctx = BackwardContext {
            values: &self.values,
            output: index,
            grads: &mut self.grads,
            requires_grad: &self.requires_grad,
        };
        backward(&grad_output, &mut ctx);
    }

    /// The gradient of every parameter used on this tape (a parameter used
    /// twice appears twice; the store sums them).
    pub fn param_gradients(&self) -> impl Iterator<Item = (ParamId, &Tensor)> + '_ {
        self.param_leaves
            .iter()
            .filter_map(|(var, id)| self.grads[var.0].as_ref().map(|g| (*id, g)))
    }

    /// Every parameter copied onto this tape, in the order it was copied
    /// (forward order): the tape position of its copy and its id.
    pub fn param_leaves(&self) -> &[(Var, ParamId)] {
        &self.param_leaves
    }

    /// Called by batch-norm layers in training mode.
    pub fn record_batch_statistics(&mut self, statistics: BatchStatistics) {
        self.batch_statistics.push(statistics);
    }

    /// The batch statistics measured on this tape.
    pub fn batch_statistics(&self) -> &[BatchStatistics] {
        &self.batch_statistics
    }

    /// Number of values recorded so far.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y = a·b + a: the chain rule accumulates both paths into a.
    #[test]
    fn a_value_used_twice_gets_both_gradients() {
        let store = ParamStore::default();
        let mut tape = Tape::new(&store, Mode::Train);
        let a = tape.leaf(Tensor::from_vec(&[1], vec![3.0]));
        let b = tape.leaf(Tensor::from_vec(&[1], vec![4.0]));
        let ab = crate::ops::shape::mul(&mut tape, a, b);
        let y = crate::ops::shape::add(&mut tape, ab, a);
        tape.backward(y);
        assert_eq!(tape.grad(a).unwrap().data, vec![5.0]); // b + 1
        assert_eq!(tape.grad(b).unwrap().data, vec![3.0]); // a
    }

    /// Gradients handed over whole (ReLU's fresh tensor, add's copied one)
    /// still sum over every use: y = relu(a) + a + a.
    #[test]
    fn handed_over_gradients_sum_over_every_use() {
        let store = ParamStore::default();
        let mut tape = Tape::new(&store, Mode::Train);
        let a = tape.leaf(Tensor::from_vec(&[3], vec![-1.0, 2.0, 0.5]));
        let c = tape.input(Tensor::from_vec(&[3], vec![1.0, 1.0, 1.0]));
        let r = crate::ops::relu::relu(&mut tape, a);
        let ra = crate::ops::shape::add(&mut tape, r, a);
        let raa = crate::ops::shape::add(&mut tape, ra, a);
        let y = crate::ops::shape::add(&mut tape, raa, c);
        tape.backward_with(y, Tensor::from_vec(&[3], vec![1.0, 10.0, 100.0]));
        assert_eq!(tape.grad(a).unwrap().data, vec![2.0, 30.0, 300.0]);
        assert!(tape.grad(c).is_none(), "an input needs no gradient");
    }

    /// `release` frees a value in evaluation mode (a later read panics, naming it) and keeps it
    /// in training mode, where backward needs it.
    #[test]
    fn release_frees_in_evaluation_and_keeps_in_training() {
        let store = ParamStore::default();
        let mut train = Tape::new(&store, Mode::Train);
        let a = train.leaf(Tensor::from_vec(&[2], vec![-1.0, 2.0]));
        let y = crate::ops::relu::relu(&mut train, a);
        train.release(a);
        train.backward_with(y, Tensor::from_vec(&[2], vec![1.0, 1.0]));
        assert_eq!(train.grad(a).unwrap().data, vec![0.0, 1.0]);

        let mut eval = Tape::new(&store, Mode::Eval);
        let a = eval.input(Tensor::from_vec(&[2], vec![-1.0, 2.0]));
        let y = crate::ops::relu::relu(&mut eval, a);
        eval.release(a);
        assert_eq!(eval.value(y).data, vec![0.0, 2.0]);
        assert!(eval.values[a.0].data.capacity() == 0);
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| eval.value(a).data.len()));
        assert!(read.is_err(), "a released value must not be read");
    }

    #[test]
    fn eval_mode_records_no_backward() {
        let store = ParamStore::default();
        let mut tape = Tape::new(&store, Mode::Eval);
        let a = tape.leaf(Tensor::from_vec(&[1], vec![3.0]));
        let y = crate::ops::relu::relu(&mut tape, a);
        assert!(!tape.requires_grad(y));
    }
}
