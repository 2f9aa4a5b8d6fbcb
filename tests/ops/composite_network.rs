//! A small conv → BN → ReLU → max pool → conv → ReLU → global pool → linear →
//! cross-entropy network: gradient-checked end to end through every op at
//! once, then trained on a tiny synthetic task.

use rand::{rngs::StdRng, Rng, SeedableRng};
use sbfnet::autograd::{Mode, ParamStore, Tape, Var};
use sbfnet::gradcheck::{check_gradients, GradcheckOptions};
use sbfnet::nn::{BatchNorm2d, Conv2d, Linear};
use sbfnet::ops::{self, batch_norm::Statistics, ConvConfig};
use sbfnet::Tensor;

const SAME: ConvConfig = ConvConfig {
    stride: 1,
    padding: 1,
};

/// The network as plain ops, with every weight an input of the gradient check.
fn functional_net(tape: &mut Tape, v: &[Var], labels: &[usize]) -> Var {
    let (x, w1, b1, gamma, beta, w2, fc_w, fc_b) = (v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
    let h = ops::conv2d(tape, x, w1, Some(b1), SAME);
    let (h, _) = ops::batch_norm2d(tape, h, gamma, beta, 1e-5, Statistics::Batch);
    let h = ops::relu(tape, h);
    let h = ops::max_pool(tape, h, 2);
    let h = ops::conv2d(
        tape,
        h,
        w2,
        None,
        ConvConfig {
            stride: 2,
            padding: 0,
        },
    );
    let h = ops::relu(tape, h);
    let h = ops::global_avg_pool(tape, h);
    let logits = ops::linear(tape, h, fc_w, Some(fc_b));
    ops::cross_entropy(tape, logits, labels, 0.0)
}

#[test]
fn composite_network_gradcheck() {
    let mut rng = StdRng::seed_from_u64(11);
    let inputs = vec![
        Tensor::normal(&[3, 2, 6, 7], 1.0, &mut rng), // x
        Tensor::normal(&[4, 2, 3, 3], 0.4, &mut rng), // conv1 weight
        Tensor::normal(&[4], 0.1, &mut rng),          // conv1 bias
        Tensor::uniform(&[4], 0.5, 1.5, &mut rng),    // bn gamma
        Tensor::normal(&[4], 0.2, &mut rng),          // bn beta
        Tensor::normal(&[5, 4, 1, 1], 0.5, &mut rng), // conv2 weight (1x1, stride 2)
        Tensor::normal(&[3, 5], 0.5, &mut rng),       // fc weight
        Tensor::normal(&[3], 0.1, &mut rng),          // fc bias
    ];
    let labels = [0, 2, 1];
    // ReLU and max pool have kinks; a smaller step keeps finite differences on one side of them.
    let options = GradcheckOptions {
        step: 1e-3,
        rtol: 3e-2,
        atol: 2e-3,
        ..Default::default()
    };
    let report = check_gradients(|t, v| functional_net(t, v, &labels), &inputs, &options)
        .unwrap_or_else(|e| panic!("composite network: {e}"));
    assert_eq!(report.checked, inputs.iter().map(|t| t.len()).sum::<usize>());
}

/// The same network built from layers that own their parameters.
struct TinyNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    fc: Linear,
}

impl TinyNet {
    fn new(store: &mut ParamStore, rng: &mut StdRng) -> TinyNet {
        TinyNet {
            conv1: Conv2d::new(store, "conv1", 1, 8, 3, SAME, false, rng),
            bn1: BatchNorm2d::new(store, "bn1", 8),
            conv2: Conv2d::new(store, "conv2", 8, 8, 3, SAME, true, rng),
            fc: Linear::new(store, "fc", 8, 2, rng),
        }
    }

    fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        let h = self.conv1.forward(tape, x);
        let h = self.bn1.forward(tape, h);
        let h = ops::relu(tape, h);
        let h = ops::max_pool(tape, h, 2);
        let h = self.conv2.forward(tape, h);
        let h = ops::relu(tape, h);
        let h = ops::global_avg_pool(tape, h);
        self.fc.forward(tape, h)
    }
}

/// Class 0: a bright horizontal bar; class 1: a bright vertical bar; plus noise.
fn synthetic_batch(rng: &mut StdRng, n: usize) -> (Tensor, Vec<usize>) {
    let mut x = Tensor::normal(&[n, 1, 8, 8], 0.3, rng);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = rng.gen_range(0..2);
        let line = rng.gen_range(1..7);
        for j in 0..8 {
            let (h, w) = if label == 0 { (line, j) } else { (j, line) };
            x.data[i * 64 + h * 8 + w] += 2.0;
        }
        labels.push(label);
    }
    (x, labels)
}

#[test]
fn composite_network_learns_a_tiny_task() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut store = ParamStore::default();
    let net = TinyNet::new(&mut store, &mut rng);
    let learning_rate = 0.1;
    let mut first_loss = None;
    let mut last_loss = f32::MAX;
    for _step in 0..60 {
        let (x, labels) = synthetic_batch(&mut rng, 16);
        store.zero_grads();
        let (loss_value, stats) = {
            let mut tape = Tape::new(&store, Mode::Train);
            let x = tape.input(x);
            let logits = net.forward(&mut tape, x);
            let loss = ops::cross_entropy(&mut tape, logits, &labels, 0.0);
            tape.backward(loss);
            let mut grads = store.clone();
            grads.accumulate_gradients(&tape);
            (
                tape.value(loss).data[0],
                (grads, tape.batch_statistics().to_vec()),
            )
        };
        let (grads, batch_stats) = stats;
        for (p, g) in store.params.iter_mut().zip(&grads.params) {
            for (v, d) in p.value.data.iter_mut().zip(&g.grad.data) {
                *v -= learning_rate * d;
            }
        }
        store.apply_batch_statistics(&batch_stats);
        first_loss.get_or_insert(loss_value);
        last_loss = loss_value;
    }
    let first = first_loss.unwrap();
    eprintln!("tiny task: loss {first} -> {last_loss}");
    assert!(
        first > 0.5,
        "an untrained net should be near chance (ln 2 ≈ 0.69), got {first}"
    );
    assert!(
        last_loss < 0.25,
        "after 60 SGD steps the loss should fall below 0.25, got {last_loss} (started at {first})"
    );

    // Evaluation mode uses the running statistics and still classifies well.
    let (x, labels) = synthetic_batch(&mut rng, 64);
    let mut tape = Tape::new(&store, Mode::Eval);
    let x = tape.input(x);
    let logits = net.forward(&mut tape, x);
    let correct = tape
        .value(logits)
        .data
        .chunks(2)
        .zip(&labels)
        .filter(|(z, &t)| (z[1] > z[0]) as usize == t)
        .count();
    eprintln!("eval accuracy {correct}/64");
    assert!(
        correct >= 56,
        "eval accuracy {correct}/64 should be at least 56/64"
    );
}
