//! ONNX export of the two towers, each with its projection head: an image encoder
//! (`pixel_values [batch, 3, height, width]` → `image_embeds [batch, dim]`) and a text encoder
//! (`input_ids`, `attention_mask [batch, sequence]` int64 → `text_embeds [batch, dim]`), so a
//! trained model serves from ONNX Runtime, TensorRT or a browser without Rust or Burn.
//!
//! Inference semantics: batch norms use their running statistics, dropout is off. Every
//! operator is in ONNX's default domain at opset 17; layer norm and GELU are spelled out in
//! elementary operators (runtimes fuse them back), so runtimes without kernels for
//! `LayerNormalization` or a GELU run the files too.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use prost::Message;

use crate::batch_norm::BatchNorm2d;
use crate::clip::{ClipConfig, ClipModel};
use crate::conv::Conv2d;
use crate::import::ImportError;
use crate::onnx_proto::*;
use crate::projection::ProjectionHead;
use crate::resnet::{Block, Stem};
use crate::text::Pooling;

/// ONNX opset the graphs are written for, and the IR version that goes with it.
pub const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;

/// Names of the graphs' inputs and outputs (Hugging Face's, so existing serving code fits).
pub const PIXEL_VALUES: &str = "pixel_values";
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const IMAGE_EMBEDS: &str = "image_embeds";
pub const TEXT_EMBEDS: &str = "text_embeds";

/// The image tower, its head and the optional L2 normalization as an ONNX model. `metadata`
/// (preprocessing, say) is stored in the model's `metadata_props`.
pub fn image_encoder_onnx<B: Backend>(
    model: &ClipModel<B>,
    metadata: &[(String, String)],
) -> ModelProto {
    let mut g = Graph::default();
    let resnet = &model.image_encoder.model;
    let mut x = g.conv_bn(PIXEL_VALUES, &resnet.conv1, &resnet.bn1, "conv1", "bn1");
    x = g.node("Relu", &[&x], vec![]);
    if resnet.stem == Stem::Imagenet {
        x = g.node(
            "MaxPool",
            &[&x],
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        );
    }
    let stages = [&resnet.layer1, &resnet.layer2, &resnet.layer3, &resnet.layer4];
    for (s, stage) in stages.into_iter().enumerate() {
        for (i, block) in stage.iter().enumerate() {
            x = g.block(&x, block, &format!("layer{}.{i}", s + 1));
        }
    }
    let pooled = g.node("ReduceMean", &[&x], vec![ints("axes", &[2, 3]), int("keepdims", 0)]);
    let embeds = g.head(&pooled, &model.image_encoder.projection, "image_projection");
    let embeds = if model.settings.normalize { g.l2_normalize(&embeds) } else { embeds };
    let dim = model.image_encoder.projection.layer_norm.gamma.dims()[0];
    let inputs = vec![value_info(
        PIXEL_VALUES,
        FLOAT,
        &[Dim::Free("batch"), Dim::Fixed(3), Dim::Free("height"), Dim::Free("width")],
    )];
    g.into_model("clip_image_encoder", inputs, &embeds, IMAGE_EMBEDS, dim, metadata)
}

/// The text tower, its pooling and head and the optional L2 normalization as an ONNX model.
/// `config` supplies what the weights do not hold (layer-norm epsilons, head count).
pub fn text_encoder_onnx<B: Backend>(
    model: &ClipModel<B>,
    config: &ClipConfig,
    metadata: &[(String, String)],
) -> ModelProto {
    let mut g = Graph::default();
    let text = &model.text_encoder.model;
    let eps = config.text.layer_norm_eps;
    let e = &text.embeddings;
    let words = g.embedding(INPUT_IDS, &e.word_embeddings, "embeddings.word_embeddings");
    // Positions 0..sequence: the first rows of the position table.
    let shape = g.node("Shape", &[INPUT_IDS], vec![]);
    let one = g.const_i64("one_index", &[1], &[1]);
    let length = g.node("Gather", &[&shape, &one], vec![int("axis", 0)]);
    let zero = g.const_i64("zero_index", &[1], &[0]);
    let table = g.param("embeddings.position_embeddings.weight", &e.position_embeddings.weight);
    let positions = g.node("Slice", &[&table, &zero, &length, &zero], vec![]);
    let mut x = g.node("Add", &[&words, &positions], vec![]);
    if let Some(types) = &e.token_type_embeddings {
        // Single-segment input: every token has type 0.
        let row = types.weight.val().slice([0..1]);
        let row = g.tensor("embeddings.token_type_embeddings.row0", row);
        x = g.node("Add", &[&x, &row], vec![]);
    }
    x = g.layer_norm(&x, &e.layer_norm, eps, "embeddings.layer_norm");

    // Padding positions get the lowest score before the softmax, as the Burn model does.
    let zero_token = g.const_i64("padding_token_mask_value", &[], &[0]);
    let padding = g.node("Equal", &[ATTENTION_MASK, &zero_token], vec![]);
    let axes = g.const_i64("padding_axes", &[2], &[1, 2]);
    let padding = g.node("Unsqueeze", &[&padding, &axes], vec![]);
    let lowest = g.scalar(f32::MIN);
    let heads = config.text.num_heads as i64;
    let head_dim = (config.text.hidden_size / config.text.num_heads) as i64;
    let split = g.const_i64("split_heads_shape", &[4], &[0, 0, heads, head_dim]);
    let merge = g.const_i64("merge_heads_shape", &[3], &[0, 0, heads * head_dim]);
    let scale = g.scalar(1.0 / (head_dim as f32).sqrt());
    for (i, layer) in text.transformer.layer.iter().enumerate() {
        let name = format!("transformer.layer.{i}");
        let a = &layer.attention;
        let project = |g: &mut Graph, lin: &Linear<B>, what: &str, perm: &[i64]| {
            let y = g.linear(&x, lin, &format!("{name}.attention.{what}"));
            let y = g.node("Reshape", &[&y, &split], vec![]);
            g.node("Transpose", &[&y], vec![ints("perm", perm)])
        };
        let q = project(&mut g, &a.q_lin, "q_lin", &[0, 2, 1, 3]);
        let q = g.node("Mul", &[&q, &scale], vec![]);
        let k = project(&mut g, &a.k_lin, "k_lin", &[0, 2, 3, 1]);
        let v = project(&mut g, &a.v_lin, "v_lin", &[0, 2, 1, 3]);
        let scores = g.node("MatMul", &[&q, &k], vec![]);
        let scores = g.node("Where", &[&padding, &lowest, &scores], vec![]);
        let probs = g.node("Softmax", &[&scores], vec![int("axis", -1)]);
        let context = g.node("MatMul", &[&probs, &v], vec![]);
        let context = g.node("Transpose", &[&context], vec![ints("perm", &[0, 2, 1, 3])]);
        let context = g.node("Reshape", &[&context, &merge], vec![]);
        let attended = g.linear(&context, &a.out_lin, &format!("{name}.attention.out_lin"));
        let sum = g.node("Add", &[&attended, &x], vec![]);
        x = g.layer_norm(&sum, &layer.sa_layer_norm, eps, &format!("{name}.sa_layer_norm"));
        let hidden = g.linear(&x, &layer.ffn.lin1, &format!("{name}.ffn.lin1"));
        let hidden = g.gelu(&hidden);
        let hidden = g.linear(&hidden, &layer.ffn.lin2, &format!("{name}.ffn.lin2"));
        let sum = g.node("Add", &[&hidden, &x], vec![]);
        x = g.layer_norm(&sum, &layer.output_layer_norm, eps, &format!("{name}.output_layer_norm"));
    }
    let pooled = match text.pooling {
        Pooling::Cls => {
            let first = g.const_i64("cls_index", &[], &[0]);
            g.node("Gather", &[&x, &first], vec![int("axis", 1)])
        }
        Pooling::Mean => {
            let mask = g.node("Cast", &[ATTENTION_MASK], vec![int("to", FLOAT as i64)]);
            let last = g.const_i64("mean_weight_axes", &[1], &[2]);
            let weights = g.node("Unsqueeze", &[&mask, &last], vec![]);
            let weighted = g.node("Mul", &[&x, &weights], vec![]);
            let tokens = g.const_i64("mean_pool_axes", &[1], &[1]);
            let summed = g.node("ReduceSum", &[&weighted, &tokens], vec![int("keepdims", 0)]);
            let counts = g.node("ReduceSum", &[&weights, &tokens], vec![int("keepdims", 0)]);
            let tiny = g.scalar(1e-9);
            let counts = g.node("Max", &[&counts, &tiny], vec![]);
            g.node("Div", &[&summed, &counts], vec![])
        }
    };
    let embeds = g.head(&pooled, &model.text_encoder.projection, "text_projection");
    let embeds = if model.settings.normalize { g.l2_normalize(&embeds) } else { embeds };
    let dim = model.text_encoder.projection.layer_norm.gamma.dims()[0];
    let tokens = [Dim::Free("batch"), Dim::Free("sequence")];
    let inputs =
        vec![value_info(INPUT_IDS, INT64, &tokens), value_info(ATTENTION_MASK, INT64, &tokens)];
    g.into_model("clip_text_encoder", inputs, &embeds, TEXT_EMBEDS, dim, metadata)
}

/// Writes an ONNX model atomically (a temporary file renamed into place).
pub fn write_onnx(model: &ModelProto, path: &Path) -> Result<(), ImportError> {
    let err = |message: String| ImportError::Write { path: path.into(), message };
    let bytes = model.encode_to_vec();
    if bytes.len() > i32::MAX as usize {
        return Err(err(format!(
            "{:.1} GB is over the 2 GiB a single ONNX file (one protobuf message) can hold",
            bytes.len() as f64 / 1e9
        )));
    }
    crate::import::write_atomically(path, &bytes)
}

/// A dimension of a graph input or output.
enum Dim {
    Fixed(usize),
    Free(&'static str),
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Dimension { dim_value: Some(*n as i64), dim_param: None },
            Dim::Free(p) => Dimension { dim_value: None, dim_param: Some(p.to_string()) },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type, shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: Some(value), r#type: ATTR_INT, ..Default::default() }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.to_vec(),
        r#type: ATTR_INTS,
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f: Some(value), r#type: ATTR_FLOAT, ..Default::default() }
}

/// A graph under construction: nodes in execution order, weights as initializers.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    scalars: Vec<(u32, String)>,
}

impl Graph {
    /// Appends a node with one output and returns the output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let out = format!("{op}_{}", self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute,
        });
        out
    }

    fn initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        data_type: i32,
        raw_data: Vec<u8>,
    ) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.into(),
            raw_data,
        });
        name.into()
    }

    fn const_i64(&mut self, name: &str, dims: &[usize], values: &[i64]) -> String {
        if self.initializers.iter().any(|t| t.name == name) {
            return name.into();
        }
        self.initializer(name, dims, INT64, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// A float scalar constant (one initializer per distinct value).
    fn scalar(&mut self, value: f32) -> String {
        if let Some((_, name)) = self.scalars.iter().find(|(bits, _)| *bits == value.to_bits()) {
            return name.clone();
        }
        let name = format!("scalar_{}", self.scalars.len());
        self.scalars.push((value.to_bits(), name.clone()));
        self.initializer(&name, &[], FLOAT, value.to_le_bytes().to_vec())
    }

    /// A tensor's values as a float initializer.
    fn tensor<B: Backend, const D: usize>(&mut self, name: &str, t: Tensor<B, D>) -> String {
        let dims = t.dims();
        let values =
            t.into_data().convert_dtype(DType::F32).to_vec::<f32>().expect("converted to f32");
        self.initializer(name, &dims, FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn param<B: Backend, const D: usize>(&mut self, name: &str, p: &Param<Tensor<B, D>>) -> String {
        self.tensor(name, p.val())
    }

    fn embedding<B: Backend>(&mut self, ids: &str, e: &Embedding<B>, name: &str) -> String {
        let table = self.param(&format!("{name}.weight"), &e.weight);
        self.node("Gather", &[&table, ids], vec![int("axis", 0)])
    }

    /// `x · W + b` (Burn keeps `W` as `[in, out]`).
    fn linear<B: Backend>(&mut self, x: &str, lin: &Linear<B>, name: &str) -> String {
        let w = self.param(&format!("{name}.weight"), &lin.weight);
        let y = self.node("MatMul", &[x, &w], vec![]);
        match &lin.bias {
            Some(b) => {
                let b = self.param(&format!("{name}.bias"), b);
                self.node("Add", &[&y, &b], vec![])
            }
            None => y,
        }
    }

    /// Layer norm over the last axis, in elementary operators (opset 17's `LayerNormalization`
    /// is missing from older runtimes).
    fn layer_norm<B: Backend>(
        &mut self,
        x: &str,
        ln: &LayerNorm<B>,
        eps: f64,
        name: &str,
    ) -> String {
        let mean = self.node("ReduceMean", &[x], vec![ints("axes", &[-1])]);
        let centered = self.node("Sub", &[x, &mean], vec![]);
        let squared = self.node("Mul", &[&centered, &centered], vec![]);
        let var = self.node("ReduceMean", &[&squared], vec![ints("axes", &[-1])]);
        let eps = self.scalar(eps as f32);
        let var = self.node("Add", &[&var, &eps], vec![]);
        let std = self.node("Sqrt", &[&var], vec![]);
        let normalized = self.node("Div", &[&centered, &std], vec![]);
        let gamma = self.param(&format!("{name}.weight"), &ln.gamma);
        let y = self.node("Mul", &[&normalized, &gamma], vec![]);
        match &ln.beta {
            Some(beta) => {
                let beta = self.param(&format!("{name}.bias"), beta);
                self.node("Add", &[&y, &beta], vec![])
            }
            None => y,
        }
    }

    /// Exact GELU: `x · (1 + erf(x / √2)) / 2`.
    fn gelu(&mut self, x: &str) -> String {
        let root2 = self.scalar(std::f32::consts::SQRT_2);
        let scaled = self.node("Div", &[x, &root2], vec![]);
        let erf = self.node("Erf", &[&scaled], vec![]);
        let one = self.scalar(1.0);
        let shifted = self.node("Add", &[&erf, &one], vec![]);
        let product = self.node("Mul", &[x, &shifted], vec![]);
        let half = self.scalar(0.5);
        self.node("Mul", &[&product, &half], vec![])
    }

    /// The seed's projection head (dropout is off at inference).
    fn head<B: Backend>(&mut self, x: &str, head: &ProjectionHead<B>, name: &str) -> String {
        let projected = self.linear(x, &head.projection, &format!("{name}.projection"));
        let hidden = self.gelu(&projected);
        let hidden = self.linear(&hidden, &head.fc, &format!("{name}.fc"));
        let sum = self.node("Add", &[&hidden, &projected], vec![]);
        // The head's layer norm has burn's default epsilon, which it is built with.
        self.layer_norm(&sum, &head.layer_norm, 1e-5, &format!("{name}.layer_norm"))
    }

    fn l2_normalize(&mut self, x: &str) -> String {
        let squared = self.node("Mul", &[x, x], vec![]);
        let axes = self.const_i64("l2_axes", &[1], &[1]);
        let sum = self.node("ReduceSum", &[&squared, &axes], vec![int("keepdims", 1)]);
        let norm = self.node("Sqrt", &[&sum], vec![]);
        let tiny = self.scalar(1e-12);
        let norm = self.node("Max", &[&norm, &tiny], vec![]);
        self.node("Div", &[x, &norm], vec![])
    }

    fn conv_bn<B: Backend>(
        &mut self,
        x: &str,
        conv: &Conv2d<B>,
        bn: &BatchNorm2d<B>,
        conv_name: &str,
        bn_name: &str,
    ) -> String {
        let w = self.param(&format!("{conv_name}.weight"), &conv.weight);
        let [_, _, kh, kw] = conv.weight.dims();
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = &conv.bias {
            inputs.push(self.param(&format!("{conv_name}.bias"), b));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let (s, p) = (conv.stride as i64, conv.padding as i64);
        let attrs = vec![
            ints("kernel_shape", &[kh as i64, kw as i64]),
            ints("strides", &[s, s]),
            ints("pads", &[p, p, p, p]),
        ];
        let y = self.node("Conv", &inputs, attrs);
        let scale = self.param(&format!("{bn_name}.weight"), &bn.weight);
        let bias = self.param(&format!("{bn_name}.bias"), &bn.bias);
        let mean = self.tensor(&format!("{bn_name}.running_mean"), bn.running_mean.value_sync());
        let var = self.tensor(&format!("{bn_name}.running_var"), bn.running_var.value_sync());
        self.node(
            "BatchNormalization",
            &[&y, &scale, &bias, &mean, &var],
            vec![float("epsilon", bn.epsilon as f32)],
        )
    }

    fn block<B: Backend>(&mut self, x: &str, block: &Block<B>, name: &str) -> String {
        let shortcut = match &block.downsample {
            Some(d) => self.conv_bn(
                x,
                &d.conv,
                &d.bn,
                &format!("{name}.downsample.0"),
                &format!("{name}.downsample.1"),
            ),
            None => x.to_string(),
        };
        let h = self.conv_bn(
            x,
            &block.conv1,
            &block.bn1,
            &format!("{name}.conv1"),
            &format!("{name}.bn1"),
        );
        let h = self.node("Relu", &[&h], vec![]);
        let mut h = self.conv_bn(
            &h,
            &block.conv2,
            &block.bn2,
            &format!("{name}.conv2"),
            &format!("{name}.bn2"),
        );
        if let (Some(conv3), Some(bn3)) = (&block.conv3, &block.bn3) {
            let r = self.node("Relu", &[&h], vec![]);
            h = self.conv_bn(&r, conv3, bn3, &format!("{name}.conv3"), &format!("{name}.bn3"));
        }
        let sum = self.node("Add", &[&h, &shortcut], vec![]);
        self.node("Relu", &[&sum], vec![])
    }

    fn into_model(
        mut self,
        name: &str,
        input: Vec<ValueInfoProto>,
        result: &str,
        output_name: &str,
        dim: usize,
        metadata: &[(String, String)],
    ) -> ModelProto {
        // The last node's output takes the public name.
        if let Some(last) = self
            .nodes
            .iter_mut()
            .rev()
            .find(|n| n.output.first().map(String::as_str) == Some(result))
        {
            last.output = vec![output_name.into()];
        }
        let output = vec![value_info(output_name, FLOAT, &[Dim::Free("batch"), Dim::Fixed(dim)])];
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "clip-burn".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: String::new(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: name.into(),
                initializer: self.initializers,
                input,
                output,
            }),
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto { key: k.clone(), value: v.clone() })
                .collect(),
        }
    }
}
