//! Models in and out of PyTorch through safetensors files (the `safetensors` crate), under the
//! state-dict names of the CIFAR ResNet in `../shared/bench/torch_ref.py`:
//!
//! ```text
//!   sbfnet                               PyTorch (torch_ref.py's CifarResNet)
//!   conv1.weight                         conv1.weight
//!   bn1.gamma / beta / running_*         bn1.weight / bias / running_*   (+ num_batches_tracked)
//!   stage{s}.block{b}.{conv,bn}{1,2}.…   layers.{(s−1)·n + b}.{conv,bn}{1,2}.…   (n blocks a stage)
//!   fc.weight / bias                     fc.weight / bias
//! ```
//!
//! VGG-16 follows the usual CIFAR VGG layout: `features` a sequence of (conv without bias, batch
//! norm, ReLU) per layer and a max pool per stage, so conv i sits at `features.{k}` and its batch
//! norm at `features.{k+1}`, and `classifier` the last linear layer.
//!
//! Export writes every conv as a dense weight: an SBF layer as its effective filters
//! (Weff = masks ⊙ templates, exact). Import fills the dense model of a name; it refuses a file
//! with a missing tensor, a wrong shape or dtype, or a tensor the model does not have, naming it.

use super::format::write_atomically;
use crate::autograd::ParamStore;
use crate::error::{Error, Result};
use crate::nn::{Model, ModelSpec, Network};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use safetensors::{Dtype, SafeTensors, View};
use std::collections::BTreeMap;
use std::path::Path;

/// PyTorch's name of an sbfnet parameter or buffer (`None`: no counterpart).
pub fn torch_name(model: &Model, name: &str) -> Option<String> {
    let (module, field) = name.rsplit_once('.')?;
    // Batch norm: γ, β are PyTorch's weight and bias.
    let field = match field {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    };
    let module = match &model.network {
        Network::ResNet(resnet) => {
            let blocks = resnet.stages[0].len();
            match module.strip_prefix("stage") {
                Some(rest) => {
                    let (stage, rest) = rest.split_once(".block")?;
                    let (block, layer) = rest.split_once('.')?;
                    let index = (stage.parse::<usize>().ok()? - 1) * blocks + block.parse::<usize>().ok()?;
                    format!("layers.{index}.{layer}")
                }
                None => module.to_string(),
            }
        }
        Network::Vgg(vgg) => {
            if module == "classifier" {
                module.to_string()
            } else {
                let (kind, number) = if let Some(i) = module.strip_prefix("features.conv") {
                    (0, i)
                } else {
                    (1, module.strip_prefix("features.bn")?)
                };
                let conv = number.parse::<usize>().ok()?;
                format!("features.{}", vgg.torch_index_of_conv(conv)? + kind)
            }
        }
        // No common PyTorch implementation to name it after.
        Network::Airbench(_) => return None,
    };
    Some(format!("{module}.{field}"))
}

/// The tensors PyTorch's state dict holds for `model`: (PyTorch name, value), SBF layers as
/// their effective filters, plus each batch norm's `num_batches_tracked` (0) as PyTorch writes it.
fn torch_tensors(model: &Model, store: &ParamStore) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = Vec::new();
    let unmapped = |name: &str| Error::msg(format!("export: no PyTorch name for {name}"));
    for (name, layer) in model.conv_layers() {
        let weight = layer.dense_weight(store);
        let weight_name = format!("{name}.weight");
        tensors.push((
            torch_name(model, &weight_name).ok_or_else(|| unmapped(&weight_name))?,
            weight,
        ));
    }
    let conv_params: Vec<_> = model
        .conv_layers()
        .iter()
        .flat_map(|(_, layer)| layer.param_ids())
        .collect();
    for (id, param) in store.params.iter().enumerate() {
        if conv_params.iter().any(|p| p.0 == id) {
            continue;
        }
        let name = torch_name(model, &param.name).ok_or_else(|| unmapped(&param.name))?;
        tensors.push((name, param.value.clone()));
    }
    for buffer in &store.buffers {
        let name = torch_name(model, &buffer.name).ok_or_else(|| unmapped(&buffer.name))?;
        if let Some(module) = name.strip_suffix(".running_mean") {
            tensors.push((format!("{module}.num_batches_tracked"), Tensor::zeros(&[])));
        }
        tensors.push((name, buffer.value.clone()));
    }
    Ok(tensors)
}

/// A tensor as safetensors bytes: float32 (little-endian), or `num_batches_tracked` as int64.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `model` (with the values in `store`) to a safetensors file under PyTorch's names.
pub fn export_safetensors(model: &Model, store: &ParamStore, path: &Path) -> Result<()> {
    let tensors: BTreeMap<String, Bytes> = torch_tensors(model, store)?
        .into_iter()
        .map(|(name, tensor)| {
            let bytes = if name.ends_with(".num_batches_tracked") {
                Bytes {
                    dtype: Dtype::I64,
                    shape: Vec::new(),
                    data: 0i64.to_le_bytes().to_vec(),
                }
            } else {
                Bytes {
                    dtype: Dtype::F32,
                    shape: tensor.shape.clone(),
                    data: tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                }
            };
            (name, bytes)
        })
        .collect();
    let metadata = [("sbfnet_model".to_string(), model.description())]
        .into_iter()
        .collect();
    let bytes = safetensors::serialize(tensors.iter(), Some(metadata))
        .map_err(|e| Error::file(path, format!("cannot encode the safetensors file: {e}")))?;
    write_atomically(path, &bytes)
}

/// The dense model `spec` (conv plan ignored: PyTorch's convs are dense) with its parameters and
/// batch-norm statistics read from a safetensors file under PyTorch's names.
pub fn import_safetensors(path: &Path, spec: &ModelSpec) -> Result<(Model, ParamStore)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("is not a safetensors file: {e}")))?;
    let dense = ModelSpec {
        convs: crate::nn::ConvPlan::dense(),
        ..spec.clone()
    };
    let mut store = ParamStore::default();
    let model = dense.build(&mut store, &mut StdRng::seed_from_u64(0));
    let mut used = Vec::new();
    let targets = store
        .params
        .iter_mut()
        .map(|p| (p.name.clone(), &mut p.value))
        .chain(store.buffers.iter_mut().map(|b| (b.name.clone(), &mut b.value)));
    for (name, target) in targets {
        let torch = torch_name(&model, &name)
            .ok_or_else(|| Error::msg(format!("import: no PyTorch name for {name}")))?;
        let view = file
            .tensor(&torch)
            .map_err(|_| Error::file(path, format!("lacks tensor {torch} ({name} of {})", dense.name())))?;
        if view.dtype() != Dtype::F32 {
            return Err(Error::file(
                path,
                format!("tensor {torch} is {:?}, expected F32", view.dtype()),
            ));
        }
        if view.shape() != target.shape.as_slice() {
            return Err(Error::file(
                path,
                format!(
                    "tensor {torch} has shape {:?}, {} needs {:?}",
                    view.shape(),
                    dense.name(),
                    target.shape
                ),
            ));
        }
        for (value, chunk) in target.data.iter_mut().zip(view.data().chunks_exact(4)) {
            *value = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        }
        used.push(torch);
    }
    if let Some(extra) = file
        .names()
        .into_iter()
        .filter(|n| !n.ends_with(".num_batches_tracked"))
        .find(|n| !used.iter().any(|u| u == n))
    {
        return Err(Error::file(
            path,
            format!("holds tensor {extra}, which {} does not have", dense.name()),
        ));
    }
    Ok((model, store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{Mode, Tape};
    use rand::Rng;

    fn fixture(file: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/torch_resnet8")
            .join(file)
    }

    /// (name, dtype, shape, bytes) of every tensor of a safetensors file.
    fn contents(bytes: &[u8]) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let file = SafeTensors::deserialize(bytes).unwrap();
        let mut out: Vec<_> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.dtype(), view.shape().to_vec(), view.data().to_vec()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn tensor_of(bytes: &[u8], name: &str) -> Tensor {
        let file = SafeTensors::deserialize(bytes).unwrap();
        let view = file.tensor(name).unwrap();
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Tensor::from_vec(view.shape(), data)
    }

    fn logits(model: &Model, store: &ParamStore, input: &Tensor) -> Tensor {
        let mut tape = Tape::new(store, Mode::Eval);
        let x = tape.input(input.clone());
        let y = model.forward(&mut tape, x);
        tape.value(y).clone()
    }

    #[test]
    fn a_pytorch_resnet8_comes_in_with_pytorchs_logits_and_goes_out_under_its_names() {
        let spec = ModelSpec::parse_name("resnet8").unwrap();
        let (model, store) = import_safetensors(&fixture("model.safetensors"), &spec).unwrap();
        let io = std::fs::read(fixture("io.safetensors")).unwrap();
        let (input, expected) = (tensor_of(&io, "input"), tensor_of(&io, "logits"));
        let ours = logits(&model, &store, &input);
        let d = crate::tensor::max_scaled_difference(&ours.data, &expected.data, 1e-4, 1e-4);
        assert!(
            d <= 1.0,
            "logits differ from PyTorch's by {d}: {:?} vs {:?}",
            ours.data,
            expected.data
        );
        // Out again: the same names, dtypes, shapes and values as PyTorch's state dict (what
        // load_state_dict(strict=True) checks; make.py --check loads such a file into PyTorch).
        let out = std::env::temp_dir().join(format!("sbfnet-export-{}.safetensors", std::process::id()));
        export_safetensors(&model, &store, &out).unwrap();
        let (ours, theirs) = (
            std::fs::read(&out).unwrap(),
            std::fs::read(fixture("model.safetensors")).unwrap(),
        );
        let (ours, theirs) = (contents(&ours), contents(&theirs));
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!((&a.0, a.1, &a.2), (&b.0, b.1, &b.2));
            if a.1 == Dtype::F32 {
                assert!(a.3 == b.3, "{} changed on the way through", a.0);
            }
        }
        std::fs::remove_file(&out).unwrap();
    }

    #[test]
    fn an_sbf_model_goes_out_as_its_effective_filters() {
        let mut rng = StdRng::seed_from_u64(4);
        let spec = ModelSpec::parse_description("resnet8-w4 sbf:rate=0.5,groups=2").unwrap();
        let mut store = ParamStore::default();
        let model = spec.build(&mut store, &mut rng);
        for param in store
            .params
            .iter_mut()
            .filter(|p| p.name.ends_with(".transforms"))
        {
            param
                .value
                .data
                .iter_mut()
                .for_each(|v| *v = rng.gen_range(-1.0..1.0));
        }
        let out = std::env::temp_dir().join(format!("sbfnet-export-sbf-{}.safetensors", std::process::id()));
        export_safetensors(&model, &store, &out).unwrap();
        let (dense, dense_store) =
            import_safetensors(&out, &ModelSpec::parse_name("resnet8-w4").unwrap()).unwrap();
        let input = Tensor::normal(&[2, 3, 32, 32], 1.0, &mut rng);
        let (a, b) = (
            logits(&model, &store, &input),
            logits(&dense, &dense_store, &input),
        );
        let d = crate::tensor::max_scaled_difference(&b.data, &a.data, 1e-4, 1e-4);
        assert!(
            d <= 1.0,
            "the exported dense model differs from the SBF model by {d}"
        );
        std::fs::remove_file(&out).unwrap();
    }

    /// The fixture's tensors with `change` applied to the map of name → (dtype, shape, bytes).
    fn altered(change: impl FnOnce(&mut BTreeMap<String, Bytes>)) -> std::path::PathBuf {
        let bytes = std::fs::read(fixture("model.safetensors")).unwrap();
        let mut tensors: BTreeMap<String, Bytes> = contents(&bytes)
            .into_iter()
            .map(|(name, dtype, shape, data)| (name, Bytes { dtype, shape, data }))
            .collect();
        change(&mut tensors);
        let path = std::env::temp_dir().join(format!(
            "sbfnet-altered-{}-{}.safetensors",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&path, safetensors::serialize(tensors.iter(), None).unwrap()).unwrap();
        path
    }

    #[test]
    fn a_file_that_does_not_fit_is_refused_naming_the_tensor() {
        let spec = ModelSpec::parse_name("resnet8").unwrap();
        let refused = |path: std::path::PathBuf| {
            let message = import_safetensors(&path, &spec).unwrap_err().to_string();
            std::fs::remove_file(&path).unwrap();
            message
        };
        let missing = refused(altered(|t| {
            t.remove("layers.1.bn2.running_var");
        }));
        assert!(
            missing.contains("lacks tensor layers.1.bn2.running_var"),
            "{missing}"
        );
        let shape = refused(altered(|t| t.get_mut("fc.bias").unwrap().shape = vec![5, 2]));
        assert!(shape.contains("tensor fc.bias has shape [5, 2]"), "{shape}");
        let dtype = refused(altered(|t| {
            let bias = t.get_mut("fc.bias").unwrap();
            (bias.dtype, bias.shape, bias.data) = (Dtype::F64, vec![5], vec![0; 40]);
        }));
        assert!(dtype.contains("tensor fc.bias is F64"), "{dtype}");
        let extra = refused(altered(|t| {
            let data = vec![0u8; 4 * 16 * 16 * 9];
            t.insert(
                "layers.3.conv1.weight".into(),
                Bytes {
                    dtype: Dtype::F32,
                    shape: vec![16, 16, 3, 3],
                    data,
                },
            );
        }));
        assert!(
            extra.contains("holds tensor layers.3.conv1.weight, which resnet8 does not have"),
            "{extra}"
        );
        // A ResNet-8 file is not a VGG-16.
        let vgg = import_safetensors(
            &fixture("model.safetensors"),
            &ModelSpec::parse_name("vgg16").unwrap(),
        );
        assert!(vgg
            .unwrap_err()
            .to_string()
            .contains("lacks tensor features.0.weight"));
    }

    #[test]
    fn vgg16_names_follow_the_features_sequence() {
        let spec = ModelSpec::parse_name("vgg16-w8").unwrap();
        let mut store = ParamStore::default();
        let model = spec.build(&mut store, &mut StdRng::seed_from_u64(0));
        // conv1, conv2, pool, conv3: conv 3 sits at 3 + 3 + 1 = 7, its batch norm at 8.
        assert_eq!(
            torch_name(&model, "features.conv1.weight").unwrap(),
            "features.0.weight"
        );
        assert_eq!(
            torch_name(&model, "features.bn2.gamma").unwrap(),
            "features.4.weight"
        );
        assert_eq!(
            torch_name(&model, "features.conv3.weight").unwrap(),
            "features.7.weight"
        );
        assert_eq!(
            torch_name(&model, "features.bn3.running_var").unwrap(),
            "features.8.running_var"
        );
        assert_eq!(torch_name(&model, "classifier.bias").unwrap(), "classifier.bias");
        let out = std::env::temp_dir().join(format!("sbfnet-vgg-{}.safetensors", std::process::id()));
        export_safetensors(&model, &store, &out).unwrap();
        let (back, back_store) = import_safetensors(&out, &spec).unwrap();
        let input = Tensor::normal(&[1, 3, 32, 32], 1.0, &mut StdRng::seed_from_u64(1));
        assert_eq!(
            logits(&model, &store, &input).data,
            logits(&back, &back_store, &input).data
        );
        std::fs::remove_file(&out).unwrap();
    }
}
