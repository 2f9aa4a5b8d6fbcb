//! Data-parallel training across processes over MPI (`cargo build --features mpi`, launched
//! by `mpirun -np R sbfnet train …`).
//!
//! Every rank holds the whole model, reads the same data and draws the same batches; of each
//! batch's S shards rank r computes ⌊r·S/R⌋ .. ⌊(r+1)·S/R⌋ on its threads
//! ([`super::parallel::ShardLayout::across`]). One `MPI_Allgatherv` a step brings every
//! shard's gradient, loss and batch-norm statistics to every rank, which sums them in global
//! shard order: each rank takes the step one process with S shards would take, bit for bit
//! up to the kernels' own thread-count dependence, and the ranks never drift apart. Rank 0
//! alone writes (metrics, learning curve, checkpoints).
//!
//! A stop (SIGINT or SIGTERM to any rank; mpirun turns Ctrl-C into SIGTERM) is agreed on
//! inside the step's exchange, so every rank stops after the same step and rank 0 saves it.
//! A rank that dies takes the job down through mpirun, which names it; the last checkpoint
//! was written atomically and stays intact.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

use super::parallel::ShardExchange;
use crate::error::{Error, Result};

/// MPI's world communicator, as the trainer's [`ShardExchange`].
pub struct MpiExchange {
    world: SimpleCommunicator,
    /// Set by this process's signal handler.
    requested: Arc<AtomicBool>,
    /// Set on every rank in the exchange after any rank's `requested`: the flag the run checks.
    agreed: Arc<AtomicBool>,
    /// Seconds spent in the exchanges so far (waiting for the slowest rank included).
    exchange_seconds: Cell<f64>,
    // Finalises MPI when dropped, after the communicator.
    _universe: Universe,
}

// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED, and the exchange is only used
// through `&self` of the trainer that owns it, one call at a time (the trainer's steps are
// `&mut self`).
unsafe impl Send for MpiExchange {}

impl MpiExchange {
    /// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun).
    pub fn launched() -> bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
            .iter()
            .any(|name| std::env::var_os(name).is_some())
    }

    /// Initialises MPI. `requested` is the flag this process's signal handler sets; the
    /// returned exchange's [`MpiExchange::stop_flag`] is the one every rank sets together.
    pub fn initialize(requested: Arc<AtomicBool>) -> Result<MpiExchange> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| Error::msg("MPI was already initialised in this process"))?;
        Ok(MpiExchange {
            world: universe.world(),
            requested,
            agreed: Arc::new(AtomicBool::new(false)),
            exchange_seconds: Cell::new(0.0),
            _universe: universe,
        })
    }

    /// The flag set on every rank once any rank was asked to stop (checked between steps).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.agreed.clone()
    }

    /// Checks that every rank describes its run with the same `text` (settings, data,
    /// checkpoint); the error names the first rank that differs and what differs.
    pub fn check_same(&self, what: &str, text: &str) -> Result<()> {
        let gathered = self.all_gather_bytes(text.as_bytes());
        for (rank, theirs) in gathered.iter().enumerate() {
            if theirs.as_slice() != text.as_bytes() {
                let theirs = String::from_utf8_lossy(theirs);
                let difference = text
                    .lines()
                    .zip(theirs.lines())
                    .find(|(a, b)| a != b)
                    .map_or_else(String::new, |(a, b)| {
                        let field = |line: &str| line.trim().trim_end_matches(',').to_string();
                        format!(": {:?} here, {:?} there", field(a), field(b))
                    });
                return Err(Error::msg(format!(
                    "rank {} and rank {rank} differ in their {what}{difference}",
                    self.world.rank()
                )));
            }
        }
        Ok(())
    }

    /// Every rank's `local` bytes, in rank order.
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
        let counts = self.counts(local.len());
        let displacements = displacements(&counts);
        let total = counts.iter().map(|&c| c as usize).sum();
        let mut gathered = vec![0u8; total];
        {
            let mut partition = PartitionMut::new(&mut gathered[..], &counts[..], &displacements[..]);
            self.world.all_gather_varcount_into(local, &mut partition);
        }
        counts
            .iter()
            .zip(&displacements)
            .map(|(&count, &start)| gathered[start as usize..][..count as usize].to_vec())
            .collect()
    }

    /// Every rank's length.
    fn counts(&self, len: usize) -> Vec<Count> {
        let len = Count::try_from(len).expect("an exchange of more than 2^31 values");
        let mut counts = vec![0 as Count; self.ranks()];
        self.world.all_gather_into(&len, &mut counts[..]);
        counts
    }

    /// Whether any rank was asked to stop; sets the agreed flag on every rank if so.
    fn agree_on_stop(&self) {
        let local = i32::from(self.requested.load(Ordering::Relaxed));
        let mut any = 0i32;
        self.world
            .all_reduce_into(&local, &mut any, SystemOperation::max());
        if any != 0 {
            self.agreed.store(true, Ordering::Relaxed);
        }
    }
}

/// Where each rank's values start: the running sum of the counts before it.
fn displacements(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0, |sum, &count| {
            let start = *sum;
            *sum += count;
            Some(start)
        })
        .collect()
}

impl ShardExchange for MpiExchange {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn ranks(&self) -> usize {
        self.world.size() as usize
    }

    fn exchange_seconds(&self) -> f64 {
        self.exchange_seconds.get()
    }

    fn all_gather(&self, local: &[f32]) -> Vec<f32> {
        let started = Instant::now();
        self.agree_on_stop();
        let counts = self.counts(local.len());
        let displacements = displacements(&counts);
        let total = counts.iter().map(|&c| c as usize).sum();
        let mut gathered = vec![0f32; total];
        {
            let mut partition = PartitionMut::new(&mut gathered[..], &counts[..], &displacements[..]);
            self.world.all_gather_varcount_into(local, &mut partition);
        }
        self.exchange_seconds
            .set(self.exchange_seconds.get() + started.elapsed().as_secs_f64());
        gathered
    }
}
