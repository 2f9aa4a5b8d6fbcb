//! The trainer across processes: handing it an exchange ([`Trainer::distribute`]), and what
//! changes with one (the shard buffers, the split evaluation).

use super::super::evaluate::Evaluation;
use super::super::parallel::{ShardExchange, ShardLayout};
use super::Trainer;
use crate::data::cifar::Cifar10;
use crate::error::{Error, Result};

impl Trainer {
    /// Trains across processes from now on: of every batch's `shards` shards this process
    /// computes rank r's share (⌊r·S/R⌋ .. ⌊(r+1)·S/R⌋, see [`ShardLayout::across`]) and
    /// `exchange` brings the others'. Every process must hold the same trainer (settings,
    /// data, checkpoint): each then takes the same step as one process would.
    pub fn distribute(&mut self, exchange: Box<dyn ShardExchange>) -> Result<()> {
        let (rank, ranks, shards) = (exchange.rank(), exchange.ranks(), self.config.shards);
        if shards < ranks {
            return Err(Error::msg(format!(
                "`shards` ({shards}) must be at least the number of processes ({ranks}): every process computes at least one shard"
            )));
        }
        let local = ShardLayout::local_count(shards, rank, ranks);
        self.worker_gradients = (0..local).map(|_| self.store.zeros_like_params()).collect();
        self.exchange = Some(exchange);
        Ok(())
    }

    /// Splits every batch into `shards` shards from now on (one process).
    pub fn set_shards(&mut self, shards: usize) {
        self.config.shards = shards;
        self.worker_gradients = (0..shards).map(|_| self.store.zeros_like_params()).collect();
    }

    /// Ends a run across processes on this process (MPI is finalised when its exchange is
    /// dropped); the trainer then computes every shard itself again.
    pub fn leave_processes(&mut self) {
        if self.exchange.take().is_some() {
            self.worker_gradients = (0..self.config.shards)
                .map(|_| self.store.zeros_like_params())
                .collect();
        }
    }

    /// The evaluation of the weights that checkpoints keep ([`Trainer::evaluated_store`]) on
    /// `set`; across processes each evaluates its part of the set (rank r of R: images
    /// ⌊r·n/R⌋ .. ⌊(r+1)·n/R⌋) and the tallies are added in rank order.
    pub fn evaluate_views(
        &self,
        set: &Cifar10,
        batch_size: usize,
        views: crate::train::evaluate::TestViews,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Evaluation {
        use crate::train::evaluate::{evaluate_images, Tally};
        let store = self.evaluated_store();
        let Some(exchange) = &self.exchange else {
            return evaluate_images(&self.model, store, set, 0..set.len(), batch_size, views, progress)
                .evaluation();
        };
        let (rank, ranks, n) = (exchange.rank(), exchange.ranks(), set.len());
        let part = rank * n / ranks..(rank + 1) * n / ranks;
        let local = evaluate_images(&self.model, store, set, part, batch_size, views, progress);
        let mut total = Tally {
            loss_sum: 0.0,
            correct: [0; crate::data::cifar::NUM_CLASSES],
            seen: [0; crate::data::cifar::NUM_CLASSES],
        };
        for tally in Tally::from_floats(&exchange.all_gather(&local.to_floats())) {
            total.add(&tally);
        }
        total.evaluation()
    }

    /// Wall seconds this process spent exchanging shards with the others (0 for one process).
    pub fn exchange_seconds(&self) -> f64 {
        self.exchange.as_ref().map_or(0.0, |e| e.exchange_seconds())
    }

    /// `value` as rank 0 has it, on every process (`value` itself in one process): for the
    /// decisions each process could make differently, such as a time budget's plan, which
    /// reads the process's own clock. Every process must call it at the same point.
    pub fn rank_zero_value(&self, value: usize) -> usize {
        match &self.exchange {
            // Exact: the values agreed on (epoch counts) are far below 2²⁴.
            Some(exchange) => exchange.all_gather(&[value as f32])[0] as usize,
            None => value,
        }
    }

    /// (rank, processes): (0, 1) unless [`Trainer::distribute`]d.
    pub fn process(&self) -> (usize, usize) {
        self.exchange.as_ref().map_or((0, 1), |e| (e.rank(), e.ranks()))
    }
}
