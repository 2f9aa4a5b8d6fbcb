//! The gradient of one batch, computed on shards in parallel (the data-parallel
//! half of a training step; [`super::trainer`] describes the whole step).

mod overlap;

use super::distillation::Distillation;
use super::evaluate::predictions;
use crate::autograd::{BatchStatistics, Mode, ParamStore, Tape, Var};
use crate::ops;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::ops::Range;
use std::time::Duration;

/// Values per parallel task when summing shard gradients.
const REDUCTION_CHUNK: usize = 1 << 14;

/// What one shard returns: its share of the loss (n_s/B · mean loss), its correct count, its BN statistics.
struct ShardResult {
    weighted_loss: f32,
    correct: usize,
    statistics: Vec<BatchStatistics>,
}

/// The loss a training step minimises: mean cross-entropy with label smoothing, or its
/// distillation from a teacher (`ops::distillation`).
#[derive(Clone, Copy)]
pub struct Objective<'a> {
    pub label_smoothing: f32,
    pub distillation: Option<&'a Distillation>,
}

impl Objective<'_> {
    /// Plain cross-entropy with `label_smoothing`.
    pub fn cross_entropy(label_smoothing: f32) -> Objective<'static> {
        Objective {
            label_smoothing,
            distillation: None,
        }
    }
}

/// How a process reaches the shards that other processes compute (data
/// parallelism across processes: MPI ranks, `train::distributed`). Every
/// process calls `all_gather` and `all_gather_stream` at the same points, in the same order.
pub trait ShardExchange: Send + Sync {
    /// This process's index, 0-based.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn ranks(&self) -> usize;
    /// Every process's `local` floats, concatenated in rank order (the lengths may differ).
    fn all_gather(&self, local: &[f32]) -> Vec<f32>;
    /// Wall seconds a step waited for the exchange after this process's backward passes
    /// (waiting for the other processes included).
    fn exchange_seconds(&self) -> f64;
    /// Whether a step exchanges its gradients in buckets while the backward pass goes on
    /// ([`ShardExchange::all_gather_stream`]) rather than all at once after it.
    fn overlaps(&self) -> bool {
        false
    }
    /// A sequence of all-gathers, message m holding `lengths[m]` floats from every one of the
    /// batch's `shards` shards. `next(slot, wait)` fills `slot` with this process's part of the
    /// next message (its shards' parts in shard order) and returns true, or returns false if
    /// that message is not ready within `wait`; meanwhile the earlier messages travel. Returns
    /// every message gathered: every shard's part in global shard order. This version sends
    /// each message when it is ready and waits for it; an exchange that can leave messages in
    /// flight (MPI's non-blocking all-gather) overrides it.
    fn all_gather_stream(
        &self,
        shards: usize,
        lengths: &[usize],
        next: &mut dyn FnMut(&mut [f32], Duration) -> bool,
    ) -> Vec<Vec<f32>> {
        let local = ShardLayout::local_count(shards, self.rank(), self.ranks());
        lengths
            .iter()
            .map(|&length| {
                let mut message = vec![0.0; local * length];
                while !next(&mut message, Duration::from_millis(10)) {}
                self.all_gather(&message)
            })
            .collect()
    }
}

/// Which of a batch's shards this process computes, and how it reaches the others.
#[derive(Clone, Copy)]
pub struct ShardLayout<'a> {
    /// Shards of the whole batch, every process's.
    pub total: usize,
    /// The global index of this process's first shard.
    pub first: usize,
    /// None: this process computes every shard.
    pub exchange: Option<&'a dyn ShardExchange>,
}

impl<'a> ShardLayout<'a> {
    /// Every shard here.
    pub fn whole(total: usize) -> ShardLayout<'static> {
        ShardLayout {
            total,
            first: 0,
            exchange: None,
        }
    }

    /// Rank r of R computes shards ⌊r·S/R⌋ .. ⌊(r+1)·S/R⌋ of S, and reaches the others through `exchange`.
    pub fn across(total: usize, exchange: &'a dyn ShardExchange) -> ShardLayout<'a> {
        let (rank, ranks) = (exchange.rank(), exchange.ranks());
        ShardLayout {
            total,
            first: rank * total / ranks,
            exchange: Some(exchange),
        }
    }

    /// How many shards rank `rank` of `ranks` computes.
    pub fn local_count(total: usize, rank: usize, ranks: usize) -> usize {
        (rank + 1) * total / ranks - rank * total / ranks
    }
}

/// The gradient of the mean loss over the batch `x` [B, 3, 32, 32], computed
/// on `worker_gradients.len()` shards in parallel and written into
/// `store`'s gradients (overwriting them). `worker_gradients[s]` is shard s's
/// reusable buffer, one tensor per parameter. Returns (mean loss, correct
/// count, batch statistics of every shard in shard order).
pub fn data_parallel_gradients(
    store: &mut ParamStore,
    worker_gradients: &mut [Vec<Tensor>],
    x: &Tensor,
    labels: &[usize],
    objective: Objective,
    forward: impl Fn(&mut Tape, Var) -> Var + Sync,
) -> (f32, usize, Vec<BatchStatistics>) {
    let layout = ShardLayout::whole(worker_gradients.len());
    data_parallel_gradients_in(layout, store, worker_gradients, x, labels, objective, forward)
}

/// [`data_parallel_gradients`] where this process computes the shards
/// `layout.first ..` (`worker_gradients.len()` of them) of `layout.total`,
/// and the exchange brings the others': every shard's gradient, loss, correct
/// count and batch statistics reach every process, which sums them in global
/// shard order, so each process ends with the one-process result, bit for bit,
/// whatever the split over processes. (Volume: every shard's gradient to every
/// process, S × |θ| floats a step, not a ring all-reduce's 2|θ|: the price of
/// that exactness, small for CIFAR ResNets on a few processes.) With an exchange
/// that [`ShardExchange::overlaps`], the gradients travel in buckets while the
/// backward pass goes on (`overlap.rs`), to the same sums bit for bit.
pub fn data_parallel_gradients_in(
    layout: ShardLayout,
    store: &mut ParamStore,
    worker_gradients: &mut [Vec<Tensor>],
    x: &Tensor,
    labels: &[usize],
    objective: Objective,
    forward: impl Fn(&mut Tape, Var) -> Var + Sync,
) -> (f32, usize, Vec<BatchStatistics>) {
    let batch = labels.len();
    let shards = layout.total;
    assert!(
        shards >= 1 && batch >= shards,
        "data_parallel_gradients: {batch} images cannot be split into {shards} shards"
    );
    assert!(
        !worker_gradients.is_empty() && layout.first + worker_gradients.len() <= shards,
        "data_parallel_gradients: shards {}..{} are not among the batch's {shards}",
        layout.first,
        layout.first + worker_gradients.len()
    );
    let shard_range = |s: usize| s * batch / shards..(s + 1) * batch / shards;
    if let Some(exchange) = layout.exchange.filter(|exchange| exchange.overlaps()) {
        let buckets = overlap::Buckets::plan(store);
        let shared: &ParamStore = store;
        let (messages, template) =
            overlap::exchange_during_backward(exchange, shards, worker_gradients.len(), &buckets, |local| {
                let range = shard_range(layout.first + local);
                shard_forward(shared, x, labels, range, objective, &forward)
            });
        return overlap::sum_gathered(store, shards, &buckets, &messages, &template);
    }
    let shared: &ParamStore = store;
    let results: Vec<ShardResult> = worker_gradients
        .par_iter_mut()
        .enumerate()
        .map(|(local, gradients)| {
            let range = shard_range(layout.first + local);
            let (mut tape, loss, share, result) =
                shard_forward(shared, x, labels, range, objective, &forward);
            tape.backward_with(loss, Tensor::full(&[1], share));
            for g in gradients.iter_mut() {
                g.data.fill(0.0);
            }
            for (id, g) in tape.param_gradients() {
                gradients[id.0].add_assign(g);
            }
            result
        })
        .collect();
    match layout.exchange {
        None => {
            sum_in_shard_order(store, shards, |s, p| &worker_gradients[s][p].data);
            let loss = results.iter().map(|r| r.weighted_loss).sum();
            let correct = results.iter().map(|r| r.correct).sum();
            let statistics = results.into_iter().flat_map(|r| r.statistics).collect();
            (loss, correct, statistics)
        }
        Some(exchange) => gather_shards(exchange, shards, store, worker_gradients, results),
    }
}

/// The forward pass of the batch's images `range` (one shard): its tape, its loss, the loss's
/// share of the batch's mean (n_s / B, the seed of its backward pass) and what it reports.
fn shard_forward<'s>(
    store: &'s ParamStore,
    x: &Tensor,
    labels: &[usize],
    range: Range<usize>,
    objective: Objective,
    forward: &impl Fn(&mut Tape, Var) -> Var,
) -> (Tape<'s>, Var, f32, ShardResult) {
    let batch = labels.len();
    let image_len = x.len() / batch;
    let mut shape = x.shape.clone();
    shape[0] = range.len();
    let shard = Tensor::from_vec(
        &shape,
        x.data[range.start * image_len..range.end * image_len].to_vec(),
    );
    let teacher_logits = objective.distillation.map(|kd| kd.teacher_logits(&shard));
    let mut tape = Tape::new(store, Mode::Train);
    let input = tape.input(shard);
    let logits = forward(&mut tape, input);
    let shard_labels = &labels[range.clone()];
    let loss = match (objective.distillation, &teacher_logits) {
        (Some(kd), Some(teacher)) => ops::distillation::distillation_loss(
            &mut tape,
            logits,
            teacher,
            shard_labels,
            kd.temperature,
            kd.weight,
            objective.label_smoothing,
        ),
        _ => ops::cross_entropy(&mut tape, logits, shard_labels, objective.label_smoothing),
    };
    let share = range.len() as f32 / batch as f32;
    let correct = predictions(tape.value(logits))
        .iter()
        .zip(shard_labels)
        .filter(|(p, t)| p == t)
        .count();
    let result = ShardResult {
        weighted_loss: share * tape.value(loss).data[0],
        correct,
        statistics: tape.batch_statistics().to_vec(),
    };
    (tape, loss, share, result)
}

impl ShardResult {
    /// What the other processes need of this shard besides its gradient: [loss share,
    /// correct count, then per batch-norm layer its count, means and variances].
    fn to_floats(&self) -> Vec<f32> {
        let mut floats = vec![self.weighted_loss, self.correct as f32]; // exact below 2^24
        for statistics in &self.statistics {
            floats.push(statistics.count as f32);
            floats.extend_from_slice(&statistics.mean);
            floats.extend_from_slice(&statistics.var);
        }
        floats
    }
}

/// The batch's loss, correct count and every shard's batch statistics, from each shard's
/// [`ShardResult::to_floats`] (`shard(s)` starts with shard s's); `template` is a shard's
/// statistics here (every shard has the same layers in the same order).
fn merge_shard_results<'g>(
    shards: usize,
    shard: impl Fn(usize) -> &'g [f32],
    template: &[BatchStatistics],
) -> (f32, usize, Vec<BatchStatistics>) {
    let mut statistics = Vec::with_capacity(shards * template.len());
    for s in 0..shards {
        let mut fields = &shard(s)[2..];
        for layer in template {
            let channels = layer.mean.len();
            statistics.push(BatchStatistics {
                count: fields[0] as usize,
                mean: fields[1..1 + channels].to_vec(),
                var: fields[1 + channels..1 + 2 * channels].to_vec(),
                ..layer.clone()
            });
            fields = &fields[1 + 2 * channels..];
        }
    }
    let loss = (0..shards).map(|s| shard(s)[0]).sum();
    let correct = (0..shards).map(|s| shard(s)[1] as usize).sum();
    (loss, correct, statistics)
}

/// Every process's shards, gathered: each shard sends [loss share, correct count, its batch
/// statistics (count, mean, var per layer), its gradient]; every process then sums them in
/// global shard order, as one process would.
fn gather_shards(
    exchange: &dyn ShardExchange,
    shards: usize,
    store: &mut ParamStore,
    worker_gradients: &[Vec<Tensor>],
    results: Vec<ShardResult>,
) -> (f32, usize, Vec<BatchStatistics>) {
    let mut message = Vec::new();
    for (result, gradients) in results.iter().zip(worker_gradients) {
        message.extend(result.to_floats());
        for gradient in gradients {
            message.extend_from_slice(&gradient.data);
        }
    }
    let shard_len = message.len() / results.len();
    let gathered = exchange.all_gather(&message);
    assert_eq!(
        gathered.len(),
        shards * shard_len,
        "data_parallel_gradients: the processes' shards differ in size (are they training the same model?)"
    );
    let shard = |s: usize| &gathered[s * shard_len..][..shard_len];
    let results_len = results[0].to_floats().len();
    // Where parameter p's gradient starts in a shard's message.
    let mut offsets = Vec::with_capacity(store.params.len());
    let mut offset = results_len;
    for param in &store.params {
        offsets.push(offset);
        offset += param.grad.data.len();
    }
    sum_in_shard_order(store, shards, |s, p| &shard(s)[offsets[p]..]);
    merge_shard_results(shards, shard, &results[0].statistics)
}

/// store.grad[p] = Σ_s gradient(s, p) for s = 0, 1, …, `shards` − 1 in that order
/// (`gradient(s, p)` starts with parameter p's values), in parallel over chunks
/// of each parameter (a few VGG weights hold most of the values).
fn sum_in_shard_order<'g>(
    store: &mut ParamStore,
    shards: usize,
    gradient: impl Fn(usize, usize) -> &'g [f32] + Sync,
) {
    for (p, param) in store.params.iter_mut().enumerate() {
        param
            .grad
            .data
            .par_chunks_mut(REDUCTION_CHUNK)
            .enumerate()
            .for_each(|(chunk, sum)| {
                let range = chunk * REDUCTION_CHUNK..chunk * REDUCTION_CHUNK + sum.len();
                sum.copy_from_slice(&gradient(0, p)[range.clone()]);
                for s in 1..shards {
                    for (total, g) in sum.iter_mut().zip(&gradient(s, p)[range.clone()]) {
                        *total += g;
                    }
                }
            });
    }
}
