//! Data-parallel training (issue 24, "beyond one machine"): the communicator `cria pretrain` and
//! `cria finetune` use, over an existing engine (MPI), never a home-made one.
//!
//! - [`Comm`]: rank, size, all-reduce (sum) of f32 and f64 buffers, broadcast of bytes, barrier,
//!   abort with a message. [`Single`] is the one-process communicator (every collective a no-op);
//!   `MpiComm` (cargo feature `mpi`: the `mpi` crate over the system's OpenMPI / MPICH) is the
//!   real one, made by [`world`] when the process was launched by `mpirun`.
//! - Collectives run in the order they are started, which must be the same on every rank (each
//!   rank runs the same program over the same step structure, so it is).
//! - Overlap: [`Comm::start_all_reduce`] takes an owned buffer and returns a [`Pending`] at once;
//!   the sum comes back from [`Pending::wait`]. `FullModel::forward_backward_hooked` hands each
//!   layer's finished gradient range to such a start while the backward pass goes on to the
//!   layers below, so the all-reduce of layer `l` runs while layer `l-1` is differentiated.
//!
//! ## The MPI design: one MPI thread (funneled)
//! `MpiComm` starts ONE thread that initialises MPI (`MPI_THREAD_FUNNELED` is all it asks: only
//! that thread ever calls MPI), owns the world communicator, and runs the collectives it is sent
//! over a channel, in order. The training threads never call MPI: they send requests (an owned
//! buffer and a reply channel) and go on computing. This needs no `MPI_THREAD_MULTIPLE` (which
//! some MPI builds lack or run slower), keeps `MPI_Comm` handles (not `Send` in rsmpi) on one
//! thread, and gives the overlap: while the compute threads run the backward of layer `l-1`, the
//! MPI thread all-reduces layer `l`'s gradients. The cost is one copy of the gradients out and
//! back per step (memcpy speed, small beside the step). Dropping the `MpiComm` finalises MPI and
//! joins the thread.
//!
//! A rank that fails (an `Err` anywhere) calls [`Comm::abort`]: its message on stderr, then
//! `MPI_Abort`, which ends every rank (no rank is left waiting in a collective). A rank that dies
//! without a word (killed, `exit(1)`) is seen by `mpirun`, which ends the others and says which
//! rank exited; checkpoints are written by rank 0 into a temp folder and renamed, so the last
//! completed one stays loadable whatever happens mid-step.
//!
//! ## GPUs later: NCCL through the same trait
//! One process per GPU (`mpirun -np 8` on an 8-GPU machine, or per node x GPUs), the rank picks
//! its device as `local_rank % gpus`. A `NcclComm` would implement [`Comm`]: rank 0 makes an
//! `ncclUniqueId` and sends it to the others with [`Comm::broadcast`] of the MPI communicator
//! (that is what the byte broadcast is for), each rank calls `ncclCommInitRank`;
//! `start_all_reduce` becomes `ncclAllReduce(sum)` on a dedicated CUDA stream over the device
//! gradient buffer of the layer, ordered after the backward kernels of that layer by a CUDA event
//! (so the overlap is the same: the layer below keeps computing on the compute stream), and
//! `Pending::wait` is a stream synchronisation before clipping/AdamW. The gradients would stay on
//! the device (the trait's owned `Vec<f32>` would become a device-buffer handle); the bucket
//! boundaries (one per layer, the head and norm, the embedding last) and the scale
//! `1 / global trained tokens` stay as they are. Loss sums, barrier and abort can stay on MPI.

use crate::{Error, Result};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

/// A communicator among the ranks of a data-parallel run.
pub trait Comm: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Starts an all-reduce (sum over ranks) of `buf`; the summed buffer comes back from
    /// [`Pending::wait`]. Returns at once.
    fn start_all_reduce(&self, buf: Vec<f32>) -> Pending;
    /// All-reduce (sum) of a few f64 (loss sums and counts), blocking.
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Rank `root`'s bytes into every rank's `buf` (resized to them).
    fn broadcast(&self, root: usize, buf: &mut Vec<u8>) -> Result<()>;
    fn barrier(&self) -> Result<()>;
    /// Prints `msg` (with the rank) and ends every rank of the run.
    fn abort(&self, msg: &str) -> !;

    /// All-reduce (sum) of `buf` in place, blocking.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let out = self.start_all_reduce(buf.to_vec()).wait()?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    /// True on the rank that writes files and prints.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// An all-reduce under way.
pub struct Pending(PendingInner);

enum PendingInner {
    Ready(Vec<f32>),
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    Wait(Receiver<Result<Vec<f32>>>),
}

impl Pending {
    pub fn ready(buf: Vec<f32>) -> Pending {
        Pending(PendingInner::Ready(buf))
    }

    pub fn wait(self) -> Result<Vec<f32>> {
        match self.0 {
            PendingInner::Ready(v) => Ok(v),
            PendingInner::Wait(rx) => rx
                .recv()
                .map_err(|_| Error("the MPI thread ended before the all-reduce".into()))?,
        }
    }
}

/// One process: rank 0 of 1, every collective a no-op.
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn start_all_reduce(&self, buf: Vec<f32>) -> Pending {
        Pending::ready(buf)
    }
    fn all_reduce_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: usize, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, msg: &str) -> ! {
        eprintln!("error: {msg}");
        std::process::exit(1)
    }
}

/// The single-process communicator.
pub fn single() -> Arc<dyn Comm> {
    Arc::new(Single)
}

/// The world size the launcher announced (`mpirun` of OpenMPI: OMPI_COMM_WORLD_SIZE; MPICH,
/// Intel MPI, Slurm's PMI: PMI_SIZE), None when not launched by one.
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// Ranks on this machine as the launcher says (OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS), 1
/// when not launched by one: the default thread count is the cores divided by it.
pub fn local_size() -> usize {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
        .unwrap_or(1usize)
        .max(1)
}

/// Whether this build has MPI (cargo feature `mpi`).
pub const HAS_MPI: bool = cfg!(feature = "mpi");

/// The run's communicator: MPI's world when launched by `mpirun` (feature `mpi`), else
/// [`Single`]. Launched with several ranks by a build without MPI is an error (else each rank
/// would silently train its own copy of the model).
pub fn world() -> Result<Arc<dyn Comm>> {
    match launched_size() {
        None => Ok(single()),
        Some(n) if !HAS_MPI => {
            if n > 1 {
                Err(Error(format!(
                    "launched by mpirun with {n} ranks, but this cria was built without MPI: \
                     rebuild with `cargo build --release --features cria/mpi` (needs an MPI, \
                     e.g. `apt-get install openmpi-bin libopenmpi-dev libclang-dev`), or run \
                     one process"
                )))
            } else {
                Ok(single())
            }
        }
        Some(_) => {
            #[cfg(feature = "mpi")]
            {
                Ok(Arc::new(mpi_impl::MpiComm::start()?))
            }
            #[cfg(not(feature = "mpi"))]
            unreachable!("HAS_MPI is false")
        }
    }
}

/// Rank `r`'s share `[start, end)` of `n` items split in `size` contiguous blocks (the first
/// `n % size` ranks one more).
pub fn share(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    (rank * n / size)..((rank + 1) * n / size)
}

/// Test hook: `CRIA_TEST_DIE=RANK:STEP` makes rank RANK exit(1) in the middle of step STEP
/// (1-based), after its backward and before the all-reduce completes, as a crashed rank would.
pub fn test_die_hook(comm: &dyn Comm, step: u64) {
    let Ok(v) = std::env::var("CRIA_TEST_DIE") else {
        return;
    };
    let mut it = v.split(':').map(|x| x.trim().parse::<u64>());
    if let (Some(Ok(r)), Some(Ok(s))) = (it.next(), it.next()) {
        if r == comm.rank() as u64 && s == step {
            eprintln!("rank {r}: CRIA_TEST_DIE: exiting with status 1 in the middle of step {s}");
            std::process::exit(1);
        }
    }
}

#[cfg(feature = "mpi")]
mod mpi_impl {
    use super::{Comm, Pending, PendingInner};
    use crate::{Error, Result};
    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::topology::Communicator;
    use mpi::Threading;
    use std::sync::mpsc::{channel, Sender};
    use std::sync::Mutex;
    use std::thread::JoinHandle;

    enum Req {
        F32(Vec<f32>, Sender<Result<Vec<f32>>>),
        F64(Vec<f64>, Sender<Vec<f64>>),
        Bcast(usize, Vec<u8>, Sender<Vec<u8>>),
        Barrier(Sender<()>),
        Abort,
    }

    /// MPI's world, run by one thread (see the module doc).
    pub struct MpiComm {
        tx: Mutex<Option<Sender<Req>>>,
        thread: Mutex<Option<JoinHandle<()>>>,
        rank: usize,
        size: usize,
    }

    fn gone() -> Error {
        Error("the MPI thread has ended".into())
    }

    impl MpiComm {
        pub fn start() -> Result<MpiComm> {
            let (tx, rx) = channel::<Req>();
            let (itx, irx) = channel::<Result<(usize, usize)>>();
            let thread = std::thread::Builder::new()
                .name("cria-mpi".into())
                .spawn(move || {
                    let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled)
                    else {
                        let _ = itx.send(Err(Error("MPI was already initialised".into())));
                        return;
                    };
                    let world = universe.world();
                    let _ = itx.send(Ok((world.rank() as usize, world.size() as usize)));
                    for req in rx {
                        match req {
                            Req::F32(v, reply) => {
                                let mut out = vec![0f32; v.len()];
                                world.all_reduce_into(&v[..], &mut out[..], SystemOperation::sum());
                                let _ = reply.send(Ok(out));
                            }
                            Req::F64(v, reply) => {
                                let mut out = vec![0f64; v.len()];
                                world.all_reduce_into(&v[..], &mut out[..], SystemOperation::sum());
                                let _ = reply.send(out);
                            }
                            Req::Bcast(root, mut v, reply) => {
                                let r = world.process_at_rank(root as i32);
                                let mut n = v.len() as u64;
                                r.broadcast_into(&mut n);
                                v.resize(n as usize, 0);
                                r.broadcast_into(&mut v[..]);
                                let _ = reply.send(v);
                            }
                            Req::Barrier(reply) => {
                                world.barrier();
                                let _ = reply.send(());
                            }
                            Req::Abort => world.abort(1),
                        }
                    }
                    // The channel closed: `universe` drops here, which finalises MPI.
                })
                .map_err(|e| Error(format!("starting the MPI thread: {e}")))?;
            let (rank, size) = irx.recv().map_err(|_| gone())??;
            Ok(MpiComm {
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                rank,
                size,
            })
        }

        fn send(&self, r: Req) -> Result<()> {
            let g = self.tx.lock().map_err(|_| gone())?;
            g.as_ref().ok_or_else(gone)?.send(r).map_err(|_| gone())
        }
    }

    impl Comm for MpiComm {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn start_all_reduce(&self, buf: Vec<f32>) -> Pending {
            let (tx, rx) = channel();
            if let Err(e) = self.send(Req::F32(buf, tx.clone())) {
                let _ = tx.send(Err(e));
            }
            Pending(PendingInner::Wait(rx))
        }
        fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
            let (tx, rx) = channel();
            self.send(Req::F64(buf.to_vec(), tx))?;
            buf.copy_from_slice(&rx.recv().map_err(|_| gone())?);
            Ok(())
        }
        fn broadcast(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
            let (tx, rx) = channel();
            self.send(Req::Bcast(root, std::mem::take(buf), tx))?;
            *buf = rx.recv().map_err(|_| gone())?;
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            let (tx, rx) = channel();
            self.send(Req::Barrier(tx))?;
            rx.recv().map_err(|_| gone())
        }
        fn abort(&self, msg: &str) -> ! {
            eprintln!(
                "error (rank {} of {}): {msg}\nrank {}: aborting every rank of the run \
                 (MPI_Abort)",
                self.rank, self.size, self.rank
            );
            let _ = self.send(Req::Abort);
            // MPI_Abort ends this process too; should the MPI thread be stuck, leave anyway.
            std::thread::sleep(std::time::Duration::from_secs(10));
            std::process::exit(1)
        }
    }

    impl Drop for MpiComm {
        fn drop(&mut self) {
            if let Ok(mut g) = self.tx.lock() {
                g.take();
            }
            if let Some(t) = self.thread.lock().ok().and_then(|mut g| g.take()) {
                let _ = t.join();
            }
        }
    }
}

/// Gradient buckets of one step: each started all-reduce with the range of the flat gradient
/// vector it covers; [`Buckets::finish`] waits for them all and writes the sums back.
pub struct Buckets<'c> {
    comm: &'c dyn Comm,
    pending: Vec<(std::ops::Range<usize>, Pending)>,
}

impl<'c> Buckets<'c> {
    pub fn new(comm: &'c dyn Comm) -> Buckets<'c> {
        Buckets {
            comm,
            pending: Vec::new(),
        }
    }

    /// Starts the all-reduce of `grads` (= the flat gradients' `range`).
    pub fn start(&mut self, range: std::ops::Range<usize>, grads: &[f32]) {
        let p = self.comm.start_all_reduce(grads.to_vec());
        self.pending.push((range, p));
    }

    /// Waits for every bucket and writes the sums into `grads`; every value of `grads` must have
    /// been in exactly one bucket.
    pub fn finish(self, grads: &mut [f32]) -> Result<()> {
        let covered: usize = self.pending.iter().map(|(r, _)| r.len()).sum();
        if covered != grads.len() {
            return Err(Error(format!(
                "gradient buckets cover {covered} of {} values",
                grads.len()
            )));
        }
        for (r, p) in self.pending {
            let v = p.wait()?;
            grads[r].copy_from_slice(&v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        for n in [1usize, 2, 5, 8, 33] {
            for size in 1..=4 {
                let mut all = Vec::new();
                for r in 0..size {
                    all.extend(share(n, r, size));
                }
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} size {size}");
            }
        }
        assert_eq!(share(5, 1, 2), 2..5);
    }

    /// The hook hands ranges that cover the gradients once (tail, layers last to first,
    /// embedding), each final when handed, and the gradients are those of the plain call.
    #[test]
    fn backward_hook_hands_final_ranges_covering_the_gradients_once() {
        use crate::full::FullModel;
        use crate::model::{Seq, TrainOptions};
        let v = crate::pretrain::preset("1M", 50, 8).unwrap();
        let mut v = v;
        v["num_hidden_layers"] = serde_json::json!(2);
        v["hidden_size"] = serde_json::json!(16);
        v["intermediate_size"] = serde_json::json!(24);
        v["num_attention_heads"] = serde_json::json!(2);
        v["num_key_value_heads"] = serde_json::json!(1);
        for tied in [true, false] {
            v["tie_word_embeddings"] = serde_json::json!(tied);
            let c = crate::pretrain::config_from_json(&v, 50, 8).unwrap();
            let opts = TrainOptions {
                max_rows: 16,
                max_seq: 8,
                grad_checkpoint: false,
                exact_forward: true,
            };
            let cpu = cria_kernels::CpuBackend::try_new(1).unwrap();
            let seqs: Vec<Seq> = (0..2)
                .map(|s| Seq {
                    tokens: (0..8).map(|i| (i * 7 + s * 3) % 50).collect(),
                    targets: (0..8).map(|i| ((i * 5 + s + 1) % 50) as i32).collect(),
                })
                .collect();
            let mut a = FullModel::from_config(&c, 0.02, 3, opts).unwrap();
            let mut b = FullModel::from_config(&c, 0.02, 3, opts).unwrap();
            let la = a.forward_backward(&cpu, &seqs, 0.1).unwrap();
            let mut got = Vec::new();
            let lb = b
                .forward_backward_hooked(&cpu, &seqs, 0.1, &mut |r, g| {
                    got.push((r.clone(), g.to_vec()))
                })
                .unwrap();
            assert_eq!(la, lb);
            let full = &a.params().grads;
            assert_eq!(&b.params().grads, full);
            let n = full.len();
            assert_eq!(got.len(), 2 + 2, "tail, 2 layers, embedding");
            assert_eq!(got[0].0.end, n);
            assert_eq!(got[3].0.start, 0);
            let mut seen = vec![0u8; n];
            for (r, g) in &got {
                assert_eq!(
                    g[..],
                    full[r.clone()],
                    "range {r:?} changed after it was handed"
                );
                seen[r.clone()].iter_mut().for_each(|x| *x += 1);
            }
            assert!(seen.iter().all(|&x| x == 1), "tied {tied}");
        }
    }

    #[test]
    fn single_buckets_round_trip_and_check_coverage() {
        let c = Single;
        let mut g: Vec<f32> = (0..10).map(|x| x as f32).collect();
        let want = g.clone();
        let mut b = Buckets::new(&c);
        b.start(6..10, &g[6..10]);
        b.start(0..6, &g[0..6]);
        b.finish(&mut g).unwrap();
        assert_eq!(g, want);
        let mut b = Buckets::new(&c);
        b.start(0..3, &g[0..3]);
        assert!(b.finish(&mut g).unwrap_err().0.contains("cover 3 of 10"));
        let mut x = [1.5f32, 2.0];
        c.all_reduce_sum(&mut x).unwrap();
        assert_eq!(x, [1.5, 2.0]);
    }
}
