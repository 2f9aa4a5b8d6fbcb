//! ONNX export of a model's inference graph (the `onnx-protobuf` crate: the ONNX schema on the
//! well-kept `protobuf` crate). Opset 13, one input `input` [batch, 3, 32, 32] with a dynamic
//! batch, one output `logits` [batch, 10].
//!
//! ```text
//!   conv           Conv (weight initializer; an SBF layer as its effective filters, exact)
//!   batch norm     BatchNormalization (running statistics, ε of the layer)
//!   relu, add      Relu, Add
//!   shortcut (A)   Slice (every s-th row and column) → Pad (zero channels before and after)
//!   max pool 2×2   MaxPool
//!   pool + fc      GlobalAveragePool → Flatten → Gemm (transB = 1)
//! ```
//!
//! SBF layers go out as dense convolutions: the two-stage form would need a grouped 1×1 conv
//! per tap and a gather per output in standard ONNX ops, more nodes and more memory than the
//! dense conv it replaces in any runtime that does not fuse them.

use super::format::write_atomically;
use crate::autograd::ParamStore;
use crate::error::Result;
use crate::nn::resnet::BasicBlock;
use crate::nn::vgg::VggLayer;
use crate::nn::{BatchNorm2d, ConvLayer, Linear, Model, Network};
use crate::tensor::Tensor;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto,
    GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use std::path::Path;

/// The opset the graph is written for.
pub const OPSET: i64 = 13;

/// Nodes and initializers of the graph being written.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    values: usize,
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = values.to_vec();
    a
}

fn float_attribute(name: &str, value: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = value;
    a
}

impl Graph {
    /// A float32 initializer named `name`.
    fn weight(&mut self, name: &str, tensor: &Tensor) -> String {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = DataType::FLOAT as i32;
        t.dims = tensor.shape.iter().map(|&d| d as i64).collect();
        t.raw_data = tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(t);
        name.into()
    }

    /// An int64 initializer (Slice and Pad take their arguments as tensors from opset 10/11 on).
    fn int64s(&mut self, name: &str, values: &[i64]) -> String {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = DataType::INT64 as i32;
        t.dims = vec![values.len() as i64];
        t.int64_data = values.to_vec();
        self.initializers.push(t);
        name.into()
    }

    /// Appends `op(inputs)` and returns its output's name.
    fn node(&mut self, op: &str, inputs: &[String], attributes: Vec<AttributeProto>) -> String {
        self.values += 1;
        let output = format!("{}_{}", op.to_lowercase(), self.values);
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.name = output.clone();
        node.input = inputs.to_vec();
        node.output = vec![output.clone()];
        node.attribute = attributes;
        self.nodes.push(node);
        output
    }

    fn conv(&mut self, name: &str, x: String, layer: &ConvLayer, store: &ParamStore) -> String {
        let weight = self.weight(&format!("{name}.weight"), &layer.dense_weight(store));
        let (k, config) = (layer.kernel() as i64, layer.config());
        let (s, p) = (config.stride as i64, config.padding as i64);
        self.node(
            "Conv",
            &[x, weight],
            vec![
                ints_attribute("kernel_shape", &[k, k]),
                ints_attribute("strides", &[s, s]),
                ints_attribute("pads", &[p, p, p, p]),
            ],
        )
    }

    fn batch_norm(&mut self, name: &str, x: String, bn: &BatchNorm2d, store: &ParamStore) -> String {
        let inputs = [
            x,
            self.weight(&format!("{name}.weight"), store.value(bn.gamma)),
            self.weight(&format!("{name}.bias"), store.value(bn.beta)),
            self.weight(&format!("{name}.running_mean"), store.buffer(bn.running_mean)),
            self.weight(&format!("{name}.running_var"), store.buffer(bn.running_var)),
        ];
        self.node(
            "BatchNormalization",
            &inputs,
            vec![float_attribute("epsilon", bn.eps)],
        )
    }

    fn relu(&mut self, x: String) -> String {
        self.node("Relu", &[x], vec![])
    }

    /// Option-A shortcut: every `stride`-th row and column, channels zero-padded from `c_in` to
    /// `c_out` with (c_out − c_in)/2 in front (as `ops::shortcut_option_a`).
    fn shortcut(&mut self, name: &str, x: String, c_in: usize, c_out: usize, stride: usize) -> String {
        let s = stride as i64;
        let inputs = [
            x,
            self.int64s(&format!("{name}.starts"), &[0, 0]),
            self.int64s(&format!("{name}.ends"), &[i64::MAX, i64::MAX]),
            self.int64s(&format!("{name}.axes"), &[2, 3]),
            self.int64s(&format!("{name}.steps"), &[s, s]),
        ];
        let sliced = self.node("Slice", &inputs, vec![]);
        let front = ((c_out - c_in) / 2) as i64;
        let back = (c_out - c_in) as i64 - front;
        let pads = self.int64s(&format!("{name}.pads"), &[0, front, 0, 0, 0, back, 0, 0]);
        self.node("Pad", &[sliced, pads], vec![])
    }

    fn block(&mut self, x: String, block: &BasicBlock, store: &ParamStore) -> String {
        let name = &block.name;
        let h = self.conv(&format!("{name}.conv1"), x.clone(), &block.conv1, store);
        let h = self.batch_norm(&format!("{name}.bn1"), h, &block.bn1, store);
        let h = self.relu(h);
        let h = self.conv(&format!("{name}.conv2"), h, &block.conv2, store);
        let h = self.batch_norm(&format!("{name}.bn2"), h, &block.bn2, store);
        let (c_in, c_out) = (block.conv1.in_channels(), block.conv2.out_channels());
        let shortcut = if block.stride != 1 || c_in != c_out {
            self.shortcut(&format!("{name}.shortcut"), x, c_in, c_out, block.stride)
        } else {
            x
        };
        let sum = self.node("Add", &[h, shortcut], vec![]);
        self.relu(sum)
    }

    fn classifier(&mut self, name: &str, x: String, linear: &Linear, store: &ParamStore) -> String {
        let pooled = self.node("GlobalAveragePool", &[x], vec![]);
        let flat = self.node("Flatten", &[pooled], vec![int_attribute("axis", 1)]);
        let inputs = [
            flat,
            self.weight(&format!("{name}.weight"), store.value(linear.weight)),
            self.weight(&format!("{name}.bias"), store.value(linear.bias)),
        ];
        self.node("Gemm", &inputs, vec![int_attribute("transB", 1)])
    }
}

/// A float tensor's type with a symbolic batch: [batch, dims…].
fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    let mut batch = tensor_shape_proto::Dimension::new();
    batch.set_dim_param("batch".into());
    shape.dim.push(batch);
    for &d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.set_dim_value(d as i64);
        shape.dim.push(dim);
    }
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = DataType::FLOAT as i32;
    tensor.shape = Some(shape).into();
    let mut type_ = TypeProto::new();
    type_.value = Some(type_proto::Value::TensorType(tensor));
    let mut info = ValueInfoProto::new();
    info.name = name.into();
    info.type_ = Some(type_).into();
    info
}

/// The inference graph of `model` as an ONNX model (the ResNets and VGG-16).
pub fn onnx_model(model: &Model, store: &ParamStore) -> Result<ModelProto> {
    let mut g = Graph::default();
    let mut h = "input".to_string();
    let (classifier, classes) = match &model.network {
        Network::ResNet(resnet) => {
            h = g.conv("conv1", h, &resnet.stem, store);
            h = g.batch_norm("bn1", h, &resnet.stem_bn, store);
            h = g.relu(h);
            for block in resnet.stages.iter().flatten() {
                h = g.block(h, block, store);
            }
            (("fc", &resnet.fc), store.value(resnet.fc.bias).len())
        }
        Network::Vgg(vgg) => {
            let mut conv = 0;
            for layer in &vgg.features {
                match layer {
                    VggLayer::Conv { conv: layer, bn } => {
                        conv += 1;
                        h = g.conv(&format!("features.conv{conv}"), h, layer, store);
                        h = g.batch_norm(&format!("features.bn{conv}"), h, bn, store);
                        h = g.relu(h);
                    }
                    VggLayer::Pool => {
                        let attributes = vec![
                            ints_attribute("kernel_shape", &[2, 2]),
                            ints_attribute("strides", &[2, 2]),
                        ];
                        h = g.node("MaxPool", &[h], attributes);
                    }
                }
            }
            (
                ("classifier", &vgg.classifier),
                store.value(vgg.classifier.bias).len(),
            )
        }
        Network::Airbench(_) => {
            return Err(crate::Error::msg(format!(
                "export: ONNX export covers the ResNets and VGG-16, not {}",
                model.name()
            )))
        }
    };
    let logits = g.classifier(classifier.0, h, classifier.1, store);
    let mut output = NodeProto::new();
    output.op_type = "Identity".into();
    output.name = "logits".into();
    output.input = vec![logits];
    output.output = vec!["logits".into()];
    g.nodes.push(output);

    let mut graph = GraphProto::new();
    graph.name = model.description();
    graph.node = g.nodes;
    graph.initializer = g.initializers;
    graph.input = vec![value_info("input", &[3, 32, 32])];
    graph.output = vec![value_info("logits", &[classes])];
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    let mut onnx = ModelProto::new();
    onnx.ir_version = 7; // the IR of opset 13
    onnx.opset_import = vec![opset];
    onnx.producer_name = "sbfnet".into();
    onnx.producer_version = env!("CARGO_PKG_VERSION").into();
    onnx.graph = Some(graph).into();
    Ok(onnx)
}

/// Writes the inference graph of `model` to an ONNX file.
pub fn export_onnx(model: &Model, store: &ParamStore, path: &Path) -> Result<()> {
    let bytes = onnx_model(model, store)?
        .write_to_bytes()
        .map_err(|e| crate::Error::file(path, format!("cannot encode the ONNX model: {e}")))?;
    write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{Mode, Tape};
    use crate::nn::ModelSpec;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// A model with trained-looking values: random masks, batch-norm statistics and affine
    /// parameters away from their initial 0/1 (so a missing or misplaced tensor shows).
    fn model(description: &str, seed: u64) -> (Model, ParamStore) {
        let mut rng = StdRng::seed_from_u64(seed);
        let spec = ModelSpec::parse_description(description).unwrap();
        let mut store = ParamStore::default();
        let model = spec.build(&mut store, &mut rng);
        for param in store.params.iter_mut() {
            if param.name.ends_with(".transforms")
                || param.name.ends_with(".gamma")
                || param.name.ends_with(".beta")
            {
                param
                    .value
                    .data
                    .iter_mut()
                    .for_each(|v| *v = rng.gen_range(0.5..1.5));
            }
        }
        for buffer in store.buffers.iter_mut() {
            buffer
                .value
                .data
                .iter_mut()
                .for_each(|v| *v = rng.gen_range(0.2..1.2));
        }
        (model, store)
    }

    fn le_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// onnxruntime runs the exported dense ResNet-20, an SBF ResNet-20 and VGG-16 on 64 generated
    /// images; its logits equal sbfnet's to 1e-4. Needs `SBFNET_ONNX_PYTHON`, a Python with
    /// onnxruntime and numpy (.ci/run makes one); without it the test says it was skipped,
    /// except under CI, where it fails.
    #[test]
    fn onnxruntime_gives_sbfnets_logits() {
        let Ok(python) = std::env::var("SBFNET_ONNX_PYTHON") else {
            assert!(
                std::env::var("CI").is_err(),
                "CI must set SBFNET_ONNX_PYTHON (a Python with onnxruntime and numpy)"
            );
            eprintln!("skipped: set SBFNET_ONNX_PYTHON to a Python with onnxruntime and numpy to run it");
            return;
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/onnx_logits.py");
        let dir = std::env::temp_dir().join(format!("sbfnet-onnx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let batch = 64;
        let input = Tensor::normal(&[batch, 3, 32, 32], 1.0, &mut StdRng::seed_from_u64(9));
        let input_file = dir.join("input.f32");
        std::fs::write(&input_file, le_bytes(&input.data)).unwrap();
        for (description, seed) in [
            ("resnet20 dense", 1),
            // Scattered templates and masks, as a pruning run leaves them.
            ("resnet20 sbf:rate=0.5,groups=2", 2),
            ("vgg16 dense", 3),
        ] {
            let (model, store) = model(description, seed);
            let logits = {
                let mut tape = Tape::new(&store, Mode::Eval);
                let x = tape.input(input.clone());
                let y = model.forward(&mut tape, x);
                tape.value(y).clone()
            };
            let name = description.replace([' ', ':', '=', ','], "_");
            let (onnx_file, logits_file) =
                (dir.join(format!("{name}.onnx")), dir.join(format!("{name}.f32")));
            export_onnx(&model, &store, &onnx_file).unwrap();
            std::fs::write(&logits_file, le_bytes(&logits.data)).unwrap();
            let output = std::process::Command::new(&python)
                .args([script, onnx_file.to_str().unwrap(), input_file.to_str().unwrap()])
                .args([logits_file.to_str().unwrap(), &batch.to_string()])
                .output()
                .expect("SBFNET_ONNX_PYTHON runs");
            let report = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{description}: {report}");
            eprintln!("{report}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
