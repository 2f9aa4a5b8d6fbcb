//! Exchanging the gradients while the backward pass goes on (across processes, as PyTorch's
//! DDP does). The parameters, last layer first, are cut into buckets of about
//! [`BUCKET_FLOATS`] values. A shard hands a bucket to the exchange thread as soon as its
//! backward pass has settled the bucket's gradients, and the exchange thread starts that
//! bucket's all-gather while the backward pass computes the earlier layers.
//!
//! The sums are those of the exchange after the backward pass (`gather_shards`): every
//! shard's gradient, summed in global shard order, so the step is the same bit for bit with
//! or without the overlap.
//!
//! Per step, on every process (S shards, of which L here; the messages travel in this order):
//!   message 0:      per shard, what it reports ([`ShardResult::to_floats`])  L × r floats
//!   message 1 + b:  per shard, the gradients of bucket b's parameters          L × |bucket b|

use super::{merge_shard_results, sum_in_shard_order, ShardExchange, ShardResult};
use crate::autograd::{BatchStatistics, ParamStore, Tape, Var};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};

/// Values a bucket holds at least (but the last): 256 KiB, so a ResNet-20's 0.27 M
/// parameters travel in 5 buckets and VGG-16's 14.7 M in about 200. A smaller model's
/// buckets are a quarter of it, so that it too travels in several.
const BUCKET_FLOATS: usize = 1 << 16;

/// The parameters cut into buckets, in the order the backward pass settles them.
pub(super) struct Buckets {
    /// Each bucket's parameters, in the order their gradients follow one another in its message.
    params: Vec<Vec<usize>>,
    /// Each bucket's floats per shard.
    lengths: Vec<usize>,
    /// Parameter p lies in bucket `place[p].0`, at `place[p].1` in a shard's part of it.
    place: Vec<(usize, usize)>,
}

impl Buckets {
    /// The parameters in reverse store order (the models register them in forward order, so
    /// this is about the order in which the backward pass settles them), a new bucket after
    /// every [`BUCKET_FLOATS`] values (or a quarter of them all, if that is fewer).
    pub(super) fn plan(store: &ParamStore) -> Buckets {
        let values: usize = store.params.iter().map(|p| p.grad.data.len()).sum();
        let bucket_floats = BUCKET_FLOATS.min(values.div_ceil(4)).max(1);
        let mut buckets = Buckets {
            params: vec![Vec::new()],
            lengths: vec![0],
            place: vec![(0, 0); store.params.len()],
        };
        for (p, param) in store.params.iter().enumerate().rev() {
            if *buckets.lengths.last().unwrap() >= bucket_floats {
                buckets.params.push(Vec::new());
                buckets.lengths.push(0);
            }
            let b = buckets.params.len() - 1;
            buckets.place[p] = (b, buckets.lengths[b]);
            buckets.params[b].push(p);
            buckets.lengths[b] += param.grad.data.len();
        }
        buckets
    }

    /// Per bucket, the tape position from which on its gradients are final: the earliest copy
    /// of any of its parameters on `tape` (usize::MAX for a bucket none of whose parameters
    /// is on the tape: its gradients are zero from the start).
    fn settling_positions(&self, tape: &Tape) -> Vec<usize> {
        let mut settles = vec![usize::MAX; self.params.len()];
        for &(var, id) in tape.param_leaves() {
            let bucket = self.place[id.0].0;
            settles[bucket] = settles[bucket].min(var.0);
        }
        settles
    }

    /// Bucket `b`'s gradients on `tape` (a parameter used twice: the sum of its copies'
    /// gradients, in the order they were copied, as `Tape::param_gradients` adds them).
    fn pack(&self, b: usize, tape: &Tape) -> Vec<f32> {
        let mut values = vec![0.0; self.lengths[b]];
        for &(var, id) in tape.param_leaves() {
            let (bucket, offset) = self.place[id.0];
            if bucket != b {
                continue;
            }
            if let Some(gradient) = tape.grad(var) {
                for (value, g) in values[offset..].iter_mut().zip(&gradient.data) {
                    *value += g;
                }
            }
        }
        values
    }
}

/// One of a shard's messages for the exchange thread.
struct Arrival {
    message: usize,
    /// The shard's index among this process's.
    local: usize,
    values: Vec<f32>,
}

/// Runs this process's `local_shards` shards in parallel (`forward_shard(local)` gives one
/// shard's tape, loss, loss share and report) and their backward passes, while an exchange
/// thread gathers every process's messages (the module's table) as they become ready.
/// Returns every message gathered, and this process's first shard's batch statistics (the
/// layout of every shard's).
pub(super) fn exchange_during_backward<'s>(
    exchange: &dyn ShardExchange,
    shards: usize,
    local_shards: usize,
    buckets: &Buckets,
    forward_shard: impl Fn(usize) -> (Tape<'s>, Var, f32, ShardResult) + Sync,
) -> (Vec<Vec<f32>>, Vec<BatchStatistics>) {
    let (sender, receiver) = channel();
    std::thread::scope(|scope| {
        // Dropped when this closure ends, even by a panic: the exchange thread then stops too.
        let sender = sender;
        let gathering =
            scope.spawn(move || gather(exchange, shards, local_shards, &buckets.lengths, receiver));
        let mut statistics: Vec<Vec<BatchStatistics>> = (0..local_shards)
            .into_par_iter()
            .map(|local| {
                let send = |message: usize, values: Vec<f32>| {
                    let arrival = Arrival {
                        message,
                        local,
                        values,
                    };
                    sender.send(arrival).expect("the exchange thread stopped");
                };
                let (mut tape, loss, share, result) = forward_shard(local);
                send(0, result.to_floats());
                let settles = buckets.settling_positions(&tape);
                let mut next = 0;
                tape.backward_with_progress(loss, Tensor::full(&[1], share), |tape, position| {
                    while next < settles.len() && position <= settles[next] {
                        send(1 + next, buckets.pack(next, tape));
                        next += 1;
                    }
                });
                result.statistics
            })
            .collect();
        drop(sender);
        let messages = gathering.join().expect("the exchange thread panicked");
        (messages, statistics.swap_remove(0))
    })
}

/// The exchange thread: hands the shards' messages, as they arrive, to
/// [`ShardExchange::all_gather_stream`] in message order, each message's parts in local shard
/// order.
fn gather(
    exchange: &dyn ShardExchange,
    shards: usize,
    local_shards: usize,
    bucket_lengths: &[usize],
    arrivals: Receiver<Arrival>,
) -> Vec<Vec<f32>> {
    let mut pending: Vec<Vec<Option<Vec<f32>>>> = vec![vec![None; local_shards]; 1 + bucket_lengths.len()];
    // A shard's report comes first; its length (it depends on the batch-norm layers) is
    // every shard's.
    let first = arrivals.recv().expect("no shard reported");
    assert_eq!(first.message, 0, "a shard sent gradients before its report");
    let lengths: Vec<usize> = std::iter::once(first.values.len())
        .chain(bucket_lengths.iter().copied())
        .collect();
    pending[0][first.local] = Some(first.values);
    let mut next_message = 0;
    exchange.all_gather_stream(shards, &lengths, &mut |slot, wait| loop {
        let parts = &mut pending[next_message];
        if parts.iter().all(Option::is_some) {
            let length = lengths[next_message];
            for (local, part) in parts.iter_mut().enumerate() {
                let part = part.take().unwrap();
                assert_eq!(part.len(), length, "the shards' messages differ in size");
                slot[local * length..][..length].copy_from_slice(&part);
            }
            next_message += 1;
            return true;
        }
        match arrivals.recv_timeout(wait) {
            Ok(arrival) => pending[arrival.message][arrival.local] = Some(arrival.values),
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => panic!("a shard stopped before sending its gradients"),
        }
    })
}

/// `store`'s gradients (every shard's, summed in global shard order), the mean loss, the
/// correct count and every shard's batch statistics, from the gathered `messages`.
pub(super) fn sum_gathered(
    store: &mut ParamStore,
    shards: usize,
    buckets: &Buckets,
    messages: &[Vec<f32>],
    template: &[BatchStatistics],
) -> (f32, usize, Vec<BatchStatistics>) {
    for (b, length) in buckets.lengths.iter().enumerate() {
        assert_eq!(
            messages[1 + b].len(),
            shards * length,
            "data_parallel_gradients: the processes' shards differ in size (are they training the same model?)"
        );
    }
    sum_in_shard_order(store, shards, |s, p| {
        let (b, offset) = buckets.place[p];
        &messages[1 + b][s * buckets.lengths[b] + offset..]
    });
    let report_len = messages[0].len() / shards;
    merge_shard_results(shards, |s| &messages[0][s * report_len..][..report_len], template)
}
