//! Numerical faults: a loss, a gradient or a parameter that is NaN or ±∞.
//!
//! A diverging run (learning rate too high, too short a warm-up) first shows
//! one non-finite number somewhere; one step later every parameter is NaN.
//! The trainer checks every step, in this order:
//! ```text
//!   1. the loss (forward pass)       not finite → run the step's shards forward again on fresh tapes
//!                                    and report the first non-finite value, mapped to its layer
//!   2. every parameter's gradient    the forward pass is run again as in 1: ReLU maps −inf to 0,
//!      (backward pass)               so a non-finite activation can leave the loss finite and
//!                                    still poison the gradient. If the forward pass is finite,
//!                                    the fault began in the backward pass; back-propagation visits
//!                                    the parameters in reverse forward order, so the LAST parameter
//!                                    in forward order whose gradient is not finite is where it began
//!   3. every parameter, after the    the update can overflow although the gradient is finite
//!      SGD update                    (e.g. |η·v| > f32::MAX with a huge learning rate)
//! ```
//! Faults 1 and 2 are found before the update: the parameters, momentum and
//! running statistics are left as they were, so the batch can be skipped
//! ([`NonFinitePolicy::Skip`]) or the run stopped with nothing of it saved
//! ([`NonFinitePolicy::Stop`], the default). Fault 3 has already changed the
//! parameters, so it always stops the run.
//!
//! Which layer a tape value belongs to: layers copy their parameters onto the
//! tape just before using them (`tape.param`), so a value belongs to the
//! layer of the last parameter copied before it, e.g. `stage2.block0.bn1`
//! for the parameter `stage2.block0.bn1.gamma`. Parameter-free ops (ReLU,
//! shortcut addition, pooling) count as part of the layer before them; values
//! before the first parameter are the input images.

use crate::autograd::{Mode, ParamStore, Tape, Var};
use crate::error::Error;
use crate::ops;
use crate::tensor::Tensor;
use std::fmt;

/// What the trainer does with a step whose loss or gradient is not finite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonFinitePolicy {
    /// End the epoch with the fault (the command line then exits, keeping the last checkpoint).
    #[default]
    Stop,
    /// Leave the parameters unchanged, count the batch as skipped and go on.
    Skip,
}

impl NonFinitePolicy {
    pub fn name(&self) -> &'static str {
        match self {
            NonFinitePolicy::Stop => "stop",
            NonFinitePolicy::Skip => "skip",
        }
    }

    pub fn parse(text: &str) -> Option<NonFinitePolicy> {
        match text {
            "stop" => Some(NonFinitePolicy::Stop),
            "skip" => Some(NonFinitePolicy::Skip),
            _ => None,
        }
    }
}

/// Where on a forward tape the first non-finite value is.
#[derive(Clone, Debug, PartialEq)]
pub enum Site {
    /// The batch fed to the network.
    InputImages,
    /// The value of this parameter itself (e.g. loaded from a damaged run).
    Parameter(String),
    /// The output of this layer (or of the parameter-free ops after it).
    Layer(String),
    /// The cross-entropy of finite logits.
    Loss,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::InputImages => write!(f, "the input images"),
            Site::Parameter(name) => write!(f, "parameter {name} itself"),
            Site::Layer(name) => write!(f, "layer {name}"),
            Site::Loss => write!(f, "the cross-entropy (the logits are finite)"),
        }
    }
}

/// The first non-finite value of a step's forward pass: in shard `shard` (0-based) of `shards`.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardSite {
    pub site: Site,
    pub shard: usize,
    pub shards: usize,
}

impl fmt::Display for ForwardSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the first non-finite value of the forward pass is in {} (shard {} of {})",
            self.site,
            self.shard + 1,
            self.shards
        )
    }
}

/// What went wrong in one step.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// The loss is not finite. `forward` is the first non-finite value of the
    /// forward pass (None when a second forward pass did not reproduce the fault).
    Loss { loss: f32, forward: Option<ForwardSite> },
    /// The loss is finite but the gradients of `parameters` parameter tensors
    /// are not. `forward` is the first non-finite value of the forward pass, if
    /// any; otherwise back-propagation reached `first_reached` (a parameter
    /// name) first.
    Gradient {
        forward: Option<ForwardSite>,
        first_reached: String,
        parameters: usize,
    },
    /// The SGD update with this learning rate made `parameter` non-finite.
    Update { parameter: String, learning_rate: f32 },
}

impl FaultKind {
    /// True for faults found before the update (the batch can be skipped).
    pub fn can_skip(&self) -> bool {
        !matches!(self, FaultKind::Update { .. })
    }

    /// The first non-finite value of the forward pass, when one was found.
    pub fn forward_site(&self) -> Option<&ForwardSite> {
        match self {
            FaultKind::Loss { forward, .. } | FaultKind::Gradient { forward, .. } => forward.as_ref(),
            FaultKind::Update { .. } => None,
        }
    }
}

/// A fault with where the run stood.
#[derive(Clone, Debug, PartialEq)]
pub struct NumericalFault {
    /// 1-based iteration of the whole run.
    pub step: usize,
    /// 1-based epoch, and 1-based batch within it out of `batches`.
    pub epoch: usize,
    pub batch: usize,
    pub batches: usize,
    pub kind: FaultKind,
}

impl fmt::Display for NumericalFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} (epoch {}, batch {}/{}): ",
            self.step, self.epoch, self.batch, self.batches
        )?;
        match &self.kind {
            FaultKind::Loss {
                loss,
                forward: Some(forward),
            } => write!(f, "the loss is {loss}; {forward}"),
            FaultKind::Loss { loss, forward: None } => write!(
                f,
                "the loss is {loss}, but a second forward pass was finite everywhere"
            ),
            FaultKind::Gradient {
                forward: Some(forward),
                parameters,
                ..
            } => write!(
                f,
                "the loss is finite but the gradient of {parameters} parameter tensor(s) is not; {forward}"
            ),
            FaultKind::Gradient {
                forward: None,
                first_reached,
                parameters,
            } => write!(
                f,
                "the loss is finite but the gradient of {parameters} parameter tensor(s) is not; \
                 back-propagation reached it first in layer {} (parameter {first_reached})",
                layer_of(first_reached)
            ),
            FaultKind::Update {
                parameter,
                learning_rate,
            } => write!(
                f,
                "the SGD update (learning rate {learning_rate}) made parameter {parameter} of layer {} \
                 non-finite",
                layer_of(parameter)
            ),
        }
    }
}

impl std::error::Error for NumericalFault {}

impl From<NumericalFault> for Error {
    fn from(fault: NumericalFault) -> Error {
        Error::msg(fault.to_string())
    }
}

/// The layer a parameter belongs to: its name without the last component
/// (`stage1.block0.conv1.weight` → `stage1.block0.conv1`).
pub fn layer_of(parameter: &str) -> &str {
    parameter.rsplit_once('.').map_or(parameter, |(layer, _)| layer)
}

/// True when every value is finite. As bit patterns, |v| (sign bit cleared)
/// of ±∞ and NaN are the largest ones (every exponent bit set), and an
/// integer maximum is a reduction the compiler vectorises.
pub fn all_finite(values: &[f32]) -> bool {
    const ABS: u32 = 0x7fff_ffff;
    const INFINITY_BITS: u32 = 0x7f80_0000;
    values.iter().map(|v| v.to_bits() & ABS).max().unwrap_or(0) < INFINITY_BITS
}

/// The first non-finite value on `tape` (tape order is forward order), with
/// its tape position and its [`Site`]. `loss` is the tape's loss value.
pub fn first_nonfinite_value(tape: &Tape, loss: Var) -> Option<(usize, Site)> {
    let index = (0..tape.len()).find(|&i| !all_finite(&tape.value(Var(i)).data))?;
    let leaves = tape.param_leaves();
    let name = |id: crate::autograd::ParamId| tape.params().params[id.0].name.clone();
    if let Some(&(_, id)) = leaves.iter().find(|(var, _)| var.0 == index) {
        return Some((index, Site::Parameter(name(id))));
    }
    if index == loss.0 {
        return Some((index, Site::Loss));
    }
    let site = match leaves.iter().rev().find(|(var, _)| var.0 < index) {
        Some(&(_, id)) => Site::Layer(layer_of(&name(id)).to_string()),
        None => Site::InputImages,
    };
    Some((index, site))
}

/// Runs the forward pass of every shard of the batch `x` [B, 3, 32, 32] again
/// (split as `trainer::data_parallel_gradients` splits it: shard s holds
/// images s·B/S .. (s+1)·B/S) and returns the first non-finite value of the
/// shard where it comes earliest on the tape.
pub fn locate_nonfinite_forward(
    store: &ParamStore,
    x: &Tensor,
    labels: &[usize],
    shards: usize,
    label_smoothing: f32,
    forward: impl Fn(&mut Tape, Var) -> Var,
) -> Option<ForwardSite> {
    let batch = labels.len();
    let image_len = x.len() / batch.max(1);
    let start = |s: usize| s * batch / shards;
    let mut earliest: Option<(usize, usize, Site)> = None;
    for s in 0..shards {
        let (first, end) = (start(s), start(s + 1));
        let mut shape = x.shape.clone();
        shape[0] = end - first;
        let shard = Tensor::from_vec(&shape, x.data[first * image_len..end * image_len].to_vec());
        let mut tape = Tape::new(store, Mode::Train);
        let input = tape.input(shard);
        let logits = forward(&mut tape, input);
        let loss = ops::cross_entropy(&mut tape, logits, &labels[first..end], label_smoothing);
        if let Some((index, site)) = first_nonfinite_value(&tape, loss) {
            if earliest.as_ref().is_none_or(|(best, ..)| index < *best) {
                earliest = Some((index, s, site));
            }
        }
    }
    earliest.map(|(_, shard, site)| ForwardSite { site, shard, shards })
}

/// Fault 2: the number of parameters whose gradient is not finite, and the
/// last of them in forward order (the first back-propagation reached).
pub fn nonfinite_gradients(store: &ParamStore) -> Option<(String, usize)> {
    let bad: Vec<&str> = store
        .params
        .iter()
        .filter(|p| !all_finite(&p.grad.data))
        .map(|p| p.name.as_str())
        .collect();
    bad.last().map(|name| (name.to_string(), bad.len()))
}

/// Fault 3: the first parameter (in forward order) whose value is not finite.
pub fn first_nonfinite_parameter(store: &ParamStore) -> Option<String> {
    store
        .params
        .iter()
        .find(|p| !all_finite(&p.value.data))
        .map(|p| p.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::{make_batch, Augmentation};
    use crate::data::synthetic::synthetic_set;
    use crate::nn::ModelSpec;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn all_finite_finds_nan_and_both_infinities_anywhere() {
        assert!(all_finite(&[]));
        assert!(all_finite(&[
            0.0,
            -0.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            -1e-45
        ]));
        for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in 0..19 {
                let mut values = vec![1.5f32; 19];
                values[at] = bad;
                assert!(!all_finite(&values), "{bad} at {at}");
            }
        }
    }

    #[test]
    fn parameter_names_map_to_their_layers() {
        assert_eq!(layer_of("stage1.block0.conv1.weight"), "stage1.block0.conv1");
        assert_eq!(layer_of("bn1.gamma"), "bn1");
        assert_eq!(layer_of("scale"), "scale");
    }

    /// resnet8-w2 on 6 generated images, 2 shards.
    fn model_and_batch() -> (crate::nn::Model, ParamStore, Tensor, Vec<usize>) {
        let mut store = ParamStore::default();
        let model = ModelSpec::parse_name("resnet8-w2")
            .unwrap()
            .build(&mut store, &mut StdRng::seed_from_u64(3));
        let set = synthetic_set(6, 4, 9);
        let (x, labels) = make_batch(
            &set,
            &(0..6).collect::<Vec<_>>(),
            &Augmentation::NONE,
            &mut StdRng::seed_from_u64(0),
        );
        (model, store, x, labels)
    }

    fn locate(
        model: &crate::nn::Model,
        store: &ParamStore,
        x: &Tensor,
        labels: &[usize],
    ) -> Option<(usize, Site)> {
        locate_nonfinite_forward(store, x, labels, 2, 0.0, |tape, input| model.forward(tape, input))
            .map(|found| (found.shard, found.site))
    }

    #[test]
    fn the_first_nonfinite_forward_value_is_mapped_to_its_layer() {
        let (model, mut store, mut x, labels) = model_and_batch();
        assert_eq!(locate(&model, &store, &x, &labels), None);

        // Finite but huge stem weights: the stem convolution's output overflows to ±∞
        // (and batch norm then turns it into NaN).
        let stem = store
            .params
            .iter()
            .position(|p| p.name == "conv1.weight")
            .unwrap();
        store.params[stem].value.data.fill(3e38);
        assert_eq!(
            locate(&model, &store, &x, &labels),
            Some((0, Site::Layer("conv1".into())))
        );

        // Huge weights deeper in: the site is that layer, not an earlier one.
        let (model, mut store, ..) = model_and_batch();
        let deep = store
            .params
            .iter()
            .position(|p| p.name == "stage2.block0.conv2.weight")
            .unwrap();
        store.params[deep].value.data.fill(3e38);
        assert_eq!(
            locate(&model, &store, &x, &labels).map(|(_, site)| site),
            Some(Site::Layer("stage2.block0.conv2".into()))
        );

        // A NaN parameter is named itself.
        let (model, mut store, ..) = model_and_batch();
        let gamma = store
            .params
            .iter()
            .position(|p| p.name == "stage1.block0.bn1.gamma")
            .unwrap();
        store.params[gamma].value.data[1] = f32::NAN;
        assert_eq!(
            locate(&model, &store, &x, &labels).map(|(_, site)| site),
            Some(Site::Parameter("stage1.block0.bn1.gamma".into()))
        );

        // A NaN pixel in the second shard's images (images 3..6).
        let (model, store, ..) = model_and_batch();
        let image_len = x.len() / 6;
        x.data[4 * image_len + 17] = f32::NAN;
        assert_eq!(locate(&model, &store, &x, &labels), Some((1, Site::InputImages)));
    }

    #[test]
    fn gradient_and_parameter_scans_name_the_right_tensor() {
        let (_, mut store, ..) = model_and_batch();
        assert_eq!(nonfinite_gradients(&store), None);
        assert_eq!(first_nonfinite_parameter(&store), None);
        let names: Vec<String> = store.params.iter().map(|p| p.name.clone()).collect();
        let (early, late) = (2, names.len() - 3);
        store.params[early].grad.data[0] = f32::INFINITY;
        store.params[late].grad.data[0] = f32::NAN;
        assert_eq!(nonfinite_gradients(&store), Some((names[late].clone(), 2)));
        store.params[late].value.data[0] = f32::NEG_INFINITY;
        store.params[early + 1].value.data[0] = f32::NAN;
        assert_eq!(first_nonfinite_parameter(&store), Some(names[early + 1].clone()));
    }

    #[test]
    fn messages_name_the_step_and_the_layer() {
        let fault = NumericalFault {
            step: 17,
            epoch: 2,
            batch: 5,
            batches: 12,
            kind: FaultKind::Loss {
                loss: f32::NAN,
                forward: Some(ForwardSite {
                    site: Site::Layer("stage2.block1.bn2".into()),
                    shard: 1,
                    shards: 4,
                }),
            },
        };
        assert_eq!(
            fault.to_string(),
            "step 17 (epoch 2, batch 5/12): the loss is NaN; the first non-finite value of the forward \
             pass is in layer stage2.block1.bn2 (shard 2 of 4)"
        );
        let backward = NumericalFault {
            kind: FaultKind::Gradient {
                forward: None,
                first_reached: "stage3.block0.bn2.gamma".into(),
                parameters: 9,
            },
            ..fault.clone()
        };
        assert!(backward.kind.can_skip() && backward.kind.forward_site().is_none());
        assert_eq!(
            backward.to_string(),
            "step 17 (epoch 2, batch 5/12): the loss is finite but the gradient of 9 parameter tensor(s) \
             is not; back-propagation reached it first in layer stage3.block0.bn2 (parameter \
             stage3.block0.bn2.gamma)"
        );
        let fault = NumericalFault {
            kind: FaultKind::Update {
                parameter: "fc.weight".into(),
                learning_rate: 1e30,
            },
            ..fault
        };
        assert!(!fault.kind.can_skip());
        assert_eq!(
            Error::from(fault).to_string(),
            "step 17 (epoch 2, batch 5/12): the SGD update (learning rate 1000000000000000000000000000000) \
             made parameter fc.weight of layer fc non-finite"
        );
        assert_eq!(NonFinitePolicy::parse("skip"), Some(NonFinitePolicy::Skip));
        assert_eq!(
            NonFinitePolicy::parse(NonFinitePolicy::Stop.name()),
            Some(NonFinitePolicy::Stop)
        );
        assert_eq!(NonFinitePolicy::parse("ignore"), None);
    }
}
