//! Reading ONNX files: the graph's interface (inputs, outputs, ops), with errors that name
//! the file. Parsing is tract-onnx's protobuf layer; nothing here runs a model.

use std::path::{Path, PathBuf};
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid ONNX model ({message})")]
    Parse { path: PathBuf, message: String },
}

/// One graph input or output: name and static dims (`None` for symbolic or unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<Option<i64>>,
    /// ONNX `TensorProto.DataType` code (1 = float).
    pub elem_type: i32,
}

/// What `bundle init` and `info` need to know about an ONNX file.
#[derive(Debug, Clone)]
pub struct OnnxSummary {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// Distinct op types in first-seen order.
    pub ops: Vec<String>,
    pub opset: i64,
    pub ir_version: i64,
}

/// Parse `path` as an ONNX ModelProto and summarise its interface.
pub fn inspect(path: &Path) -> Result<OnnxSummary, OnnxError> {
    if let Err(source) = std::fs::metadata(path) {
        return Err(OnnxError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| OnnxError::Parse {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
    let graph = proto.graph.as_ref().ok_or_else(|| OnnxError::Parse {
        path: path.to_path_buf(),
        message: "model has no graph".into(),
    })?;
    if graph.node.is_empty() {
        return Err(OnnxError::Parse {
            path: path.to_path_buf(),
            message: "graph has no nodes".into(),
        });
    }
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let info = |v: &pb::ValueInfoProto| {
        let (dims, elem_type) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(tt)) => (
                tt.shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match d.value {
                                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                                    Some(v)
                                }
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                tt.elem_type,
            ),
            _ => (vec![], 0),
        };
        TensorInfo {
            name: v.name.clone(),
            dims,
            elem_type,
        }
    };
    let mut ops: Vec<String> = vec![];
    for n in &graph.node {
        if !ops.contains(&n.op_type) {
            ops.push(n.op_type.clone());
        }
    }
    Ok(OnnxSummary {
        inputs: graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .map(info)
            .collect(),
        outputs: graph.output.iter().map(info).collect(),
        ops,
        opset: proto
            .opset_import
            .iter()
            .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .max()
            .unwrap_or(0),
        ir_version: proto.ir_version,
    })
}
