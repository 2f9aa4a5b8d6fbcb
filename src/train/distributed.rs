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
//! With `overlap` (`--overlap-exchange`) the gradients travel in buckets while the backward pass goes
//! on ([`ShardExchange::all_gather_stream`] with MPI's non-blocking `MPI_Iallgatherv`; the
//! sums are the same, bit for bit).
//!
//! A stop (SIGINT or SIGTERM to any rank; mpirun turns Ctrl-C into SIGTERM) is agreed on
//! inside the step's exchange, so every rank stops after the same step and rank 0 saves it.
//! A rank that dies takes the job down through mpirun, which names it; the last checkpoint
//! was written atomically and stays intact.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;
use mpi::Threading;

use super::parallel::{ShardExchange, ShardLayout};
use crate::error::{Error, Result};

/// MPI's world communicator, as the trainer's [`ShardExchange`].
pub struct MpiExchange {
    world: SimpleCommunicator,
    /// Set by this process's signal handler.
    requested: Arc<AtomicBool>,
    /// Set on every rank in the exchange after any rank's `requested`: the flag the run checks.
    agreed: Arc<AtomicBool>,
    /// Whether the gradients travel while the backward pass goes on.
    overlap: bool,
    /// Seconds the steps waited for their exchanges after the backward pass (waiting for the
    /// slowest rank included).
    exchange_seconds: Mutex<f64>,
    // Finalises MPI when dropped, after the communicator.
    _universe: Universe,
}

// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED (overlap needs at least that level),
// and the exchange is used by one thread at a time: the trainer that owns it calls it between
// steps or inside a step (`&mut self`), where one exchange thread alone calls it while the
// other threads compute.
unsafe impl Send for MpiExchange {}
unsafe impl Sync for MpiExchange {}

/// How often the exchange thread looks for a ready bucket, and meanwhile lets MPI move the
/// buckets in flight (Open MPI progresses non-blocking collectives inside MPI calls).
const POLL: Duration = Duration::from_micros(200);

impl MpiExchange {
    /// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun).
    pub fn launched() -> bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
            .iter()
            .any(|name| std::env::var_os(name).is_some())
    }

    /// Initialises MPI. `requested` is the flag this process's signal handler sets; the
    /// returned exchange's [`MpiExchange::stop_flag`] is the one every rank sets together.
    /// With `overlap` the gradients travel while the backward pass goes on, which needs an
    /// MPI that lets a thread other than the main one call it (MPI_THREAD_SERIALIZED).
    pub fn initialize(requested: Arc<AtomicBool>, overlap: bool) -> Result<MpiExchange> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::msg("MPI was already initialised in this process"))?;
        let threads_allowed = matches!(provided, Threading::Serialized | Threading::Multiple);
        if overlap && !threads_allowed {
            return Err(Error::msg(format!(
                "`overlap_exchange` needs an MPI that lets a second thread call it (MPI_THREAD_SERIALIZED); this one offers {provided:?}"
            )));
        }
        Ok(MpiExchange {
            world: universe.world(),
            requested,
            agreed: Arc::new(AtomicBool::new(false)),
            overlap,
            exchange_seconds: Mutex::new(0.0),
            _universe: universe,
        })
    }

    fn add_exchange_seconds(&self, seconds: f64) {
        *self.exchange_seconds.lock().unwrap() += seconds;
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
        *self.exchange_seconds.lock().unwrap()
    }

    fn overlaps(&self) -> bool {
        self.overlap
    }

    /// Every message leaves as soon as `next` hands it over (`MPI_Iallgatherv`); while
    /// waiting for the next one the thread tests the messages in flight, which lets Open MPI
    /// move them. The wait after the last message counts as exchange time.
    fn all_gather_stream(
        &self,
        shards: usize,
        lengths: &[usize],
        next: &mut dyn FnMut(&mut [f32], Duration) -> bool,
    ) -> Vec<Vec<f32>> {
        self.agree_on_stop();
        let (rank, ranks) = (self.rank(), self.ranks());
        let count = |length: usize, rank: usize| {
            Count::try_from(ShardLayout::local_count(shards, rank, ranks) * length)
                .expect("an exchange of more than 2^31 values")
        };
        let counts: Vec<Vec<Count>> = lengths
            .iter()
            .map(|&length| (0..ranks).map(|r| count(length, r)).collect())
            .collect();
        let displacements: Vec<Vec<Count>> = counts.iter().map(|c| displacements(c)).collect();
        let mut sent: Vec<Vec<f32>> = lengths
            .iter()
            .map(|&length| vec![0.0; count(length, rank) as usize])
            .collect();
        let mut gathered: Vec<Vec<f32>> = lengths.iter().map(|&length| vec![0.0; shards * length]).collect();
        let mut partitions: Vec<_> = gathered
            .iter_mut()
            .zip(&counts)
            .zip(&displacements)
            .map(|((buffer, counts), displacements)| {
                PartitionMut::new(&mut buffer[..], &counts[..], &displacements[..])
            })
            .collect();
        let waited = mpi::request::scope(|scope| {
            let mut in_flight = Vec::new();
            for (message, partition) in sent.iter_mut().zip(partitions.iter_mut()) {
                while !next(message, POLL) {
                    in_flight = in_flight
                        .into_iter()
                        .filter_map(|request: mpi::request::Request<'_, _, _>| request.test().err())
                        .collect();
                }
                let message: &[f32] = message;
                in_flight.push(
                    self.world
                        .immediate_all_gather_varcount_into(scope, message, partition),
                );
            }
            let started = Instant::now();
            for request in in_flight {
                request.wait();
            }
            started.elapsed().as_secs_f64()
        });
        drop(partitions);
        self.add_exchange_seconds(waited);
        gathered
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
        self.add_exchange_seconds(started.elapsed().as_secs_f64());
        gathered
    }
}
