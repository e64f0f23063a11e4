//! Which ONNX operator set a model speaks: read by the limits check, the reader and the
//! quantizer alike.

use tract_onnx::pb;

/// The opset of the default (`ai.onnx`) domain a model imports, if it names one.
pub fn default_opset(model: &pb::ModelProto) -> Option<i64> {
    model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
}
