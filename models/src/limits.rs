//! Limits an ONNX file must respect before anything builds a model from it.
//!
//! A model file is input nobody checked: it can declare a tensor of 2^40 elements with four
//! bytes of data, a shape of a billion by a billion, a cycle, or a chain of a million nodes.
//! Handed to an engine, such a file aborts the process (allocation failure) or exhausts
//! memory or stack. These checks run on the decoded protobuf, cost one pass, allocate
//! nothing in proportion to what the file *declares*, and refuse with the tensor or node named.
//!
//! The memory bound: declared bytes of every initializer and constant, of every statically
//! shaped graph value, and of tensors that shape-making ops (`ConstantOfShape`, `Expand`,
//! `Tile`) would create from constant shapes. Defaults suit vehicle-class computers and are
//! set with `BEVRT_MODEL_MEMORY_MB` (and `BEVRT_MODEL_MAX_NODES`).

use std::collections::{HashMap, HashSet};
use tract_onnx::pb;

/// What a model may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// File size, and the bound on any one tensor and on all initializers together.
    pub memory_bytes: u64,
    /// Nodes in the main graph and all subgraphs together.
    pub max_nodes: usize,
    /// Longest chain of nodes (deep graphs overflow recursive passes in engines).
    pub max_depth: usize,
    /// Subgraph nesting (If / Loop / Scan bodies).
    pub max_nesting: usize,
    /// Rank of any tensor.
    pub max_rank: usize,
}

impl Default for ModelLimits {
    fn default() -> Self {
        ModelLimits {
            memory_bytes: 4 << 30,
            max_nodes: 200_000,
            max_depth: 20_000,
            max_nesting: 8,
            max_rank: 8,
        }
    }
}

impl ModelLimits {
    /// Defaults, overridden by `BEVRT_MODEL_MEMORY_MB` and `BEVRT_MODEL_MAX_NODES`.
    pub fn from_env() -> ModelLimits {
        let mut l = ModelLimits::default();
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(mb) = num("BEVRT_MODEL_MEMORY_MB") {
            l.memory_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(n) = num("BEVRT_MODEL_MAX_NODES") {
            l.max_nodes = n as usize;
            l.max_depth = l.max_depth.min(n as usize);
        }
        l
    }
}

fn elem_bytes(data_type: i32) -> u64 {
    use pb::tensor_proto::DataType as D;
    match D::try_from(data_type).unwrap_or(D::Undefined) {
        D::Double | D::Int64 | D::Uint64 | D::Complex64 => 8,
        D::Complex128 => 16,
        D::Float | D::Int32 | D::Uint32 => 4,
        D::Float16 | D::Bfloat16 | D::Int16 | D::Uint16 => 2,
        // Strings are variable; count their pointer-sized cells.
        D::String => 8,
        _ => 1,
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{b} B"),
    }
}

/// Elements of a shape, `None` on a negative dimension or overflow.
fn elements(dims: impl IntoIterator<Item = i64>) -> Option<u64> {
    dims.into_iter().try_fold(1u64, |acc, d| {
        u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Check `model` against `limits`; `Err` says what is too large or malformed, naming it.
pub fn check_model(model: &pb::ModelProto, limits: &ModelLimits) -> Result<(), String> {
    let graph = model.graph.as_ref().ok_or("model has no graph")?;
    let opset = crate::opset::default_opset(model).unwrap_or(13);
    let mut budget = Budget {
        limits,
        opset,
        nodes: 0,
        total: 0,
    };
    budget.graph(graph, 0, &HashSet::new())
}

struct Budget<'a> {
    limits: &'a ModelLimits,
    /// The default domain's opset (input counts changed across opsets).
    opset: i64,
    nodes: usize,
    total: u64,
}

impl Budget<'_> {
    fn graph(
        &mut self,
        g: &pb::GraphProto,
        nesting: usize,
        outer: &HashSet<&str>,
    ) -> Result<(), String> {
        if nesting > self.limits.max_nesting {
            return Err(format!(
                "subgraphs nested deeper than {}",
                self.limits.max_nesting
            ));
        }
        self.nodes += g.node.len();
        if self.nodes > self.limits.max_nodes {
            return Err(format!(
                "more than {} nodes (BEVRT_MODEL_MAX_NODES raises the limit)",
                self.limits.max_nodes
            ));
        }
        let mut consts: HashMap<&str, &pb::TensorProto> = HashMap::new();
        for t in &g.initializer {
            self.tensor(t, &format!("initializer '{}'", t.name))?;
            consts.insert(&t.name, t);
        }
        for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
            self.value(v)?;
        }
        for n in &g.node {
            for a in &n.attribute {
                if let Some(t) = &a.t {
                    self.tensor(t, &format!("node '{}' attribute '{}'", n.name, a.name))?;
                    if n.op_type == "Constant" {
                        for o in &n.output {
                            consts.insert(o, t);
                        }
                    }
                }
                for t in &a.tensors {
                    self.tensor(t, &format!("node '{}' attribute '{}'", n.name, a.name))?;
                }
            }
            self.shape_maker(n, &consts)?;
            check_arity(n, self.opset)?;
        }
        let defined = defined_names(g, outer)?;
        for n in &g.node {
            for a in &n.attribute {
                for sub in a.g.iter().chain(&a.graphs) {
                    self.graph(sub, nesting + 1, &defined)?;
                }
            }
        }
        check_acyclic_and_depth(g, self.limits.max_depth)
    }

    /// Declared size of a stored tensor: within limits, and matching the data it carries.
    fn tensor(&mut self, t: &pb::TensorProto, what: &str) -> Result<(), String> {
        if t.dims.len() > self.limits.max_rank {
            return Err(format!(
                "{what}: rank {} (at most {})",
                t.dims.len(),
                self.limits.max_rank
            ));
        }
        if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
            || !t.external_data.is_empty()
        {
            return Err(format!(
                "{what}: stored outside the model file (external data is not covered by a bundle's digests; embed it)"
            ));
        }
        let n = elements(t.dims.iter().copied())
            .ok_or_else(|| format!("{what}: shape {:?} is negative or overflows", t.dims))?;
        let bytes = n.saturating_mul(elem_bytes(t.data_type));
        if bytes > self.limits.memory_bytes {
            return Err(format!(
                "{what}: shape {:?} declares {} (limit {}; BEVRT_MODEL_MEMORY_MB raises it)",
                t.dims,
                human(bytes),
                human(self.limits.memory_bytes)
            ));
        }
        let carried = if !t.raw_data.is_empty() {
            Some(t.raw_data.len() as u64 / elem_bytes(t.data_type).max(1))
        } else {
            [
                t.float_data.len(),
                t.int32_data.len(),
                t.int64_data.len(),
                t.double_data.len(),
                t.uint64_data.len(),
                t.string_data.len(),
            ]
            .into_iter()
            .max()
            .map(|m| m as u64)
        };
        // Typed int32_data also carries f16/int8 elements one per entry; raw_data is bytes.
        if let Some(c) = carried
            && c != n
            && !(c == 0 && n == 0)
        {
            return Err(format!(
                "{what}: shape {:?} has {n} elements, the file carries {c}",
                t.dims
            ));
        }
        self.total = self.total.saturating_add(bytes);
        if self.total > self.limits.memory_bytes {
            return Err(format!(
                "stored tensors add up to more than {} (at {what})",
                human(self.limits.memory_bytes)
            ));
        }
        Ok(())
    }

    /// Static shapes of graph inputs, outputs and annotated values.
    fn value(&self, v: &pb::ValueInfoProto) -> Result<(), String> {
        let Some(pb::type_proto::Value::TensorType(tt)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Ok(());
        };
        let Some(shape) = &tt.shape else {
            return Ok(());
        };
        if shape.dim.len() > self.limits.max_rank {
            return Err(format!(
                "value '{}': rank {} (at most {})",
                v.name,
                shape.dim.len(),
                self.limits.max_rank
            ));
        }
        // Symbolic dims, and the -1 some exporters write for them, are not counted.
        let dims = shape.dim.iter().filter_map(|d| match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(x)) if x >= 0 => Some(x),
            _ => None,
        });
        let n = elements(dims).ok_or_else(|| format!("value '{}': the shape overflows", v.name))?;
        let bytes = n.saturating_mul(elem_bytes(tt.elem_type));
        if bytes > self.limits.memory_bytes {
            return Err(format!(
                "value '{}': declared shape needs {} (limit {})",
                v.name,
                human(bytes),
                human(self.limits.memory_bytes)
            ));
        }
        Ok(())
    }

    /// Ops whose output size comes from a constant input: bound what they would allocate.
    fn shape_maker(
        &self,
        n: &pb::NodeProto,
        consts: &HashMap<&str, &pb::TensorProto>,
    ) -> Result<(), String> {
        let shape_input = match n.op_type.as_str() {
            "ConstantOfShape" => 0,
            "Expand" | "Tile" | "Reshape" => 1,
            _ => return Ok(()),
        };
        let Some(t) = n
            .input
            .get(shape_input)
            .and_then(|i| consts.get(i.as_str()))
        else {
            return Ok(());
        };
        let vals: Vec<i64> = if !t.int64_data.is_empty() {
            t.int64_data.clone()
        } else if t.data_type == pb::tensor_proto::DataType::Int64 as i32 {
            t.raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        } else {
            return Ok(());
        };
        // Reshape's -1 and 0 take sizes from the input: only the explicit part is bounded.
        let n_el = elements(vals.iter().map(|&v| if v <= 0 { 1 } else { v })).ok_or_else(|| {
            format!(
                "node '{}' ({}): shape {vals:?} overflows",
                n.name, n.op_type
            )
        })?;
        if n_el.saturating_mul(4) > self.limits.memory_bytes {
            return Err(format!(
                "node '{}' ({}): constant shape {vals:?} would make a tensor of {} (limit {})",
                n.name,
                n.op_type,
                human(n_el.saturating_mul(4)),
                human(self.limits.memory_bytes)
            ));
        }
        Ok(())
    }
}

/// Fewest inputs of standard ONNX ops (over the opsets bevrt reads; optional inputs not
/// counted). Engines index a node's inputs by position from the op's schema; a node with fewer
/// aborts tract's shape inference (a panic that cannot unwind). Ops not listed need one input,
/// except those that take none.
fn min_inputs(op: &str, opset: i64) -> usize {
    // Before these opsets the op took its parameters as attributes.
    let attrs_era = match op {
        "Slice" | "TopK" => opset < 10,
        "Upsample" => opset < 9,
        "Reshape" => opset < 5,
        _ => false,
    };
    if attrs_era {
        return 1;
    }
    match op {
        "Constant" | "RandomNormal" | "RandomUniform" => 0,
        "QLinearConv" | "QLinearMatMul" => 8,
        "QLinearAdd" | "QLinearMul" => 7,
        "BatchNormalization" => 5,
        "Slice"
        | "Where"
        | "Range"
        | "OneHot"
        | "ScatterND"
        | "ScatterElements"
        | "Scatter"
        | "InstanceNormalization"
        | "QuantizeLinear"
        | "DequantizeLinear"
        | "Gemm"
        | "LSTM"
        | "GRU"
        | "RNN"
        | "NonMaxSuppression" => match op {
            "QuantizeLinear" | "DequantizeLinear" | "Gemm" | "NonMaxSuppression" => 2,
            _ => 3,
        },
        "Add"
        | "Sub"
        | "Mul"
        | "Div"
        | "Pow"
        | "Mod"
        | "And"
        | "Or"
        | "Xor"
        | "Equal"
        | "Less"
        | "LessOrEqual"
        | "Greater"
        | "GreaterOrEqual"
        | "BitShift"
        | "MatMul"
        | "MatMulInteger"
        | "Conv"
        | "ConvInteger"
        | "ConvTranspose"
        | "Reshape"
        | "Gather"
        | "GatherElements"
        | "GatherND"
        | "Expand"
        | "Tile"
        | "PRelu"
        | "CumSum"
        | "TopK"
        | "GridSample"
        | "LayerNormalization"
        | "Upsample"
        | "Compress"
        | "MaxUnpool"
        | "DynamicQuantizeLinear"
        | "CenterCropPad"
        | "Col2Im"
        | "DeformConv"
        | "ReverseSequence"
        | "RoiAlign"
        | "Einsum"
        | "If"
        | "Loop"
        | "Scan"
        | "Optional" => match op {
            "DynamicQuantizeLinear" | "Einsum" | "If" | "Scan" | "Optional" => 1,
            "Loop" => 2,
            "RoiAlign" | "Col2Im" | "DeformConv" | "CenterCropPad" => {
                if op == "CenterCropPad" {
                    2
                } else {
                    3
                }
            }
            _ => 2,
        },
        _ => 1,
    }
}

fn check_arity(n: &pb::NodeProto, opset: i64) -> Result<(), String> {
    let present = n.input.len();
    let need = min_inputs(&n.op_type, opset);
    if present < need {
        return Err(format!(
            "node '{}' ({}) has {present} inputs, the op needs at least {need}",
            n.name, n.op_type
        ));
    }
    if n.output.is_empty() || n.output.iter().all(|o| o.is_empty()) {
        return Err(format!("node '{}' ({}) has no output", n.name, n.op_type));
    }
    Ok(())
}

/// Every name a graph's outputs may refer to (inputs, initializers, node outputs, and the
/// enclosing graphs' names for a subgraph); an output nothing defines is refused (tract
/// indexes its name table with it and aborts the process).
fn defined_names<'a>(
    g: &'a pb::GraphProto,
    outer: &HashSet<&'a str>,
) -> Result<HashSet<&'a str>, String> {
    let mut defined: HashSet<&str> = outer.clone();
    defined.extend(g.input.iter().map(|v| v.name.as_str()));
    defined.extend(g.initializer.iter().map(|t| t.name.as_str()));
    for n in &g.node {
        defined.extend(
            n.output
                .iter()
                .filter(|o| !o.is_empty())
                .map(String::as_str),
        );
    }
    // Node inputs nothing defines are allowed: engines treat them as extra graph inputs.
    for n in &g.node {
        defined.extend(n.input.iter().filter(|i| !i.is_empty()).map(String::as_str));
    }
    if let Some(o) = g.output.iter().find(|o| !defined.contains(o.name.as_str())) {
        return Err(format!(
            "graph '{}' output '{}' is produced by no node, input or initializer",
            g.name, o.name
        ));
    }
    Ok(defined)
}

/// Nodes in an order where each one's inputs come first; refuse cycles and chains deeper
/// than `max_depth`. Names produced by no node (inputs, initializers, outer scope) are
/// sources. Iterative (Kahn's algorithm), so a deep graph cannot overflow this stack.
fn check_acyclic_and_depth(g: &pb::GraphProto, max_depth: usize) -> Result<(), String> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o, i).is_some() {
                return Err(format!("value '{o}' is produced by two nodes"));
            }
        }
    }
    let mut pending = vec![0usize; g.node.len()];
    let mut users: Vec<Vec<usize>> = vec![vec![]; g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        let mut seen = HashSet::new();
        for inp in &n.input {
            if let Some(&p) = producer.get(inp.as_str())
                && seen.insert(p)
            {
                pending[i] += 1;
                users[p].push(i);
            }
        }
    }
    let mut depth = vec![1usize; g.node.len()];
    let mut ready: Vec<usize> = (0..g.node.len()).filter(|&i| pending[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        if depth[i] > max_depth {
            return Err(format!(
                "a chain of more than {max_depth} nodes (at node '{}')",
                g.node[i].name
            ));
        }
        for &u in &users[i] {
            depth[u] = depth[u].max(depth[i] + 1);
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.push(u);
            }
        }
    }
    if done < g.node.len() {
        let stuck = (0..g.node.len())
            .find(|&i| pending[i] > 0)
            .expect("a node in the cycle");
        return Err(format!(
            "the graph has a cycle (node '{}' ({}) waits on its own output, directly or through others)",
            g.node[stuck].name, g.node[stuck].op_type
        ));
    }
    Ok(())
}
