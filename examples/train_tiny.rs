//! A tiny conv net with an SBF layer, trained by plain SGD on a synthetic task
//! in a few seconds, printing the loss as it falls.
//!
//! ```text
//! cargo run --release --example train_tiny
//! ```
//!
//! Task: 8×8 single-channel images, class 1 when the bright blob is a
//! horizontal bar, class 0 when it is a vertical one (positions random, noise
//! added). Net: conv 3×3 (1→8) → BN → ReLU → SbfConv2d 3×3 stride 2
//! (8→16 outputs from 4 templates, G = 2) → BN → ReLU → global average pool →
//! linear (16→2) → cross-entropy.

use rand::{rngs::StdRng, Rng, SeedableRng};
use sbfnet::nn::{BatchNorm2d, Conv2d, Linear, SbfConv2d};
use sbfnet::ops::{self, ConvConfig, SbfConfig};
use sbfnet::{Mode, ParamStore, Tape, Tensor, Var};

const SIDE: usize = 8;

struct TinyNet {
    conv: Conv2d,
    bn1: BatchNorm2d,
    sbf: SbfConv2d,
    bn2: BatchNorm2d,
    fc: Linear,
}

impl TinyNet {
    fn new(store: &mut ParamStore, rng: &mut StdRng) -> TinyNet {
        let same = ConvConfig {
            stride: 1,
            padding: 1,
        };
        TinyNet {
            conv: Conv2d::new(store, "conv", 1, 8, 3, same, false, rng),
            bn1: BatchNorm2d::new(store, "bn1", 8),
            // 8 inputs, 16 outputs, 4 templates, 3×3, stride 2, padding 1, G = 2 groups.
            sbf: SbfConv2d::new(store, "sbf", 8, 16, 4, 3, SbfConfig::new(2, 1, 2), false, rng),
            bn2: BatchNorm2d::new(store, "bn2", 16),
            fc: Linear::new(store, "fc", 16, 2, rng),
        }
    }

    /// x [Bt, 1, 8, 8] → logits [Bt, 2]
    fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        let h = self.conv.forward(tape, x); // [Bt, 8, 8, 8]
        let h = self.bn1.forward(tape, h);
        let h = ops::relu(tape, h);
        let h = self.sbf.forward(tape, h); // [Bt, 16, 4, 4]
        let h = self.bn2.forward(tape, h);
        let h = ops::relu(tape, h);
        let h = ops::global_avg_pool(tape, h); // [Bt, 16]
        self.fc.forward(tape, h) // [Bt, 2]
    }
}

/// A batch of bar images [Bt, 1, 8, 8] and their labels (1 = horizontal).
fn synthetic_batch(rng: &mut StdRng, batch: usize) -> (Tensor, Vec<usize>) {
    let mut x = Tensor::normal(&[batch, 1, SIDE, SIDE], 0.3, rng);
    let mut labels = Vec::with_capacity(batch);
    for b in 0..batch {
        let horizontal = rng.gen_bool(0.5);
        let (row, col) = (rng.gen_range(0..SIDE - 3), rng.gen_range(0..SIDE - 3));
        for step in 0..4 {
            let (y, x_) = if horizontal {
                (row, col + step)
            } else {
                (row + step, col)
            };
            x.data[b * SIDE * SIDE + y * SIDE + x_] += 2.0;
        }
        labels.push(horizontal as usize);
    }
    (x, labels)
}

fn main() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut store = ParamStore::default();
    let net = TinyNet::new(&mut store, &mut rng);
    println!(
        "{} learned scalars; the SBF layer computes 16 outputs from {} templates",
        store.num_scalars(),
        net.sbf.num_templates()
    );
    let learning_rate = 0.1;
    for step in 0..=150 {
        let (images, labels) = synthetic_batch(&mut rng, 32);
        store.zero_grads();
        // Forward and backward on a tape that borrows the store; keep what we need, then drop it.
        let (loss, gradients, statistics) = {
            let mut tape = Tape::new(&store, Mode::Train);
            let x = tape.input(images);
            let logits = net.forward(&mut tape, x);
            let loss = ops::cross_entropy(&mut tape, logits, &labels, 0.0);
            tape.backward(loss);
            let gradients: Vec<_> = tape.param_gradients().map(|(id, g)| (id, g.clone())).collect();
            (
                tape.value(loss).data[0],
                gradients,
                tape.batch_statistics().to_vec(),
            )
        };
        // Plain SGD: θ ← θ − η·∂L/∂θ; then the BN running statistics.
        for (id, gradient) in gradients {
            let value = store.value_mut(id);
            for (v, g) in value.data.iter_mut().zip(&gradient.data) {
                *v -= learning_rate * g;
            }
        }
        store.apply_batch_statistics(&statistics);
        if step % 15 == 0 {
            println!("step {step:3}  loss {loss:.4}");
        }
    }

    // Evaluation mode: BN uses its running statistics.
    let (images, labels) = synthetic_batch(&mut rng, 200);
    let mut tape = Tape::new(&store, Mode::Eval);
    let x = tape.input(images);
    let logits = net.forward(&mut tape, x);
    let correct = tape
        .value(logits)
        .data
        .chunks(2)
        .zip(&labels)
        .filter(|(z, &label)| (z[1] > z[0]) as usize == label)
        .count();
    println!("held-out accuracy: {correct}/200");
}
