//! The gradient of one batch, computed on shards in parallel (the data-parallel
//! half of a training step; [`super::trainer`] describes the whole step).

use super::distillation::Distillation;
use super::evaluate::predictions;
use crate::autograd::{BatchStatistics, Mode, ParamStore, Tape, Var};
use crate::ops;
use crate::tensor::Tensor;
use rayon::prelude::*;

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
/// process calls `all_gather` at the same points, in the same order.
pub trait ShardExchange: Send {
    /// This process's index, 0-based.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn ranks(&self) -> usize;
    /// Every process's `local` floats, concatenated in rank order (the lengths may differ).
    fn all_gather(&self, local: &[f32]) -> Vec<f32>;
    /// Wall seconds spent in `all_gather` so far, waiting for the other processes included.
    fn exchange_seconds(&self) -> f64;
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
/// that exactness, small for CIFAR ResNets on a few processes.)
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
    let image_len = x.len() / batch;
    // Shard s holds images start(s)..start(s + 1): sizes differ by at most one.
    let start = |s: usize| s * batch / shards;
    let shared: &ParamStore = store;
    let first_shard = layout.first;
    let results: Vec<ShardResult> = worker_gradients
        .par_iter_mut()
        .enumerate()
        .map(|(local, gradients)| {
            let s = first_shard + local;
            let (first, end) = (start(s), start(s + 1));
            let mut shape = x.shape.clone();
            shape[0] = end - first;
            let shard = Tensor::from_vec(&shape, x.data[first * image_len..end * image_len].to_vec());
            let teacher_logits = objective.distillation.map(|kd| kd.teacher_logits(&shard));
            let mut tape = Tape::new(shared, Mode::Train);
            let input = tape.input(shard);
            let logits = forward(&mut tape, input);
            let shard_labels = &labels[first..end];
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
            let share = (end - first) as f32 / batch as f32;
            let correct = predictions(tape.value(logits))
                .iter()
                .zip(&labels[first..end])
                .filter(|(p, t)| p == t)
                .count();
            let weighted_loss = share * tape.value(loss).data[0];
            tape.backward_with(loss, Tensor::full(&[1], share));
            for g in gradients.iter_mut() {
                g.data.fill(0.0);
            }
            for (id, g) in tape.param_gradients() {
                gradients[id.0].add_assign(g);
            }
            ShardResult {
                weighted_loss,
                correct,
                statistics: tape.batch_statistics().to_vec(),
            }
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
        message.push(result.weighted_loss);
        message.push(result.correct as f32); // exact below 2^24
        for statistics in &result.statistics {
            message.push(statistics.count as f32);
            message.extend_from_slice(&statistics.mean);
            message.extend_from_slice(&statistics.var);
        }
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
    // Every shard's statistics have the layers of this process's first shard, in its order.
    let template = &results[0].statistics;
    let statistics_len: usize = template.iter().map(|t| 1 + 2 * t.mean.len()).sum();
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
    // Where parameter p's gradient starts in a shard's message.
    let mut offsets = Vec::with_capacity(store.params.len());
    let mut offset = 2 + statistics_len;
    for param in &store.params {
        offsets.push(offset);
        offset += param.grad.data.len();
    }
    sum_in_shard_order(store, shards, |s, p| &shard(s)[offsets[p]..]);
    let loss = (0..shards).map(|s| shard(s)[0]).sum();
    let correct = (0..shards).map(|s| shard(s)[1] as usize).sum();
    (loss, correct, statistics)
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
