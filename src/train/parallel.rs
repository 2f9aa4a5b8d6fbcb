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
    let batch = labels.len();
    let shards = worker_gradients.len();
    assert!(
        shards >= 1 && batch >= shards,
        "data_parallel_gradients: {batch} images cannot be split into {shards} shards"
    );
    let image_len = x.len() / batch;
    // Shard s holds images start(s)..start(s + 1): sizes differ by at most one.
    let start = |s: usize| s * batch / shards;
    let shared: &ParamStore = store;
    let results: Vec<ShardResult> = worker_gradients
        .par_iter_mut()
        .enumerate()
        .map(|(s, gradients)| {
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
    // Sum the shards' gradients into the store, in shard order, in parallel
    // over chunks of each parameter (a few VGG weights hold most of the values).
    for (p, param) in store.params.iter_mut().enumerate() {
        param
            .grad
            .data
            .par_chunks_mut(REDUCTION_CHUNK)
            .enumerate()
            .for_each(|(chunk, sum)| {
                let range = chunk * REDUCTION_CHUNK..chunk * REDUCTION_CHUNK + sum.len();
                sum.copy_from_slice(&worker_gradients[0][p].data[range.clone()]);
                for gradients in &worker_gradients[1..] {
                    for (total, g) in sum.iter_mut().zip(&gradients[p].data[range.clone()]) {
                        *total += g;
                    }
                }
            });
    }
    let loss = results.iter().map(|r| r.weighted_loss).sum();
    let correct = results.iter().map(|r| r.correct).sum();
    let statistics = results.into_iter().flat_map(|r| r.statistics).collect();
    (loss, correct, statistics)
}
