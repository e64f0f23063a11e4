//! Reading ONNX node attributes and constant tensors (through tract) as the lowering needs them.

use tract_onnx::pb;
use tract_onnx::prelude::*;

pub(super) fn attr<'n>(n: &'n pb::NodeProto, name: &str) -> Option<&'n pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}
pub(super) fn attr_i(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map(|a| a.i).unwrap_or(default)
}
pub(super) fn attr_f(n: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map(|a| a.f).unwrap_or(default)
}
pub(super) fn attr_ints(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}
pub(super) fn attr_s(n: &pb::NodeProto, name: &str, default: &str) -> String {
    attr(n, name)
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_else(|| default.to_string())
}

pub(super) fn to_f32(t: &Tensor) -> Result<Vec<f32>, String> {
    let t = t.cast_to::<f32>().map_err(|e| e.to_string())?;
    let view = t.try_as_plain_ram().map_err(|e| e.to_string())?;
    Ok(view.as_slice::<f32>().map_err(|e| e.to_string())?.to_vec())
}
pub(super) fn to_i32(t: &Tensor) -> Result<Vec<i32>, String> {
    let t = t.cast_to::<i32>().map_err(|e| e.to_string())?;
    let view = t.try_as_plain_ram().map_err(|e| e.to_string())?;
    Ok(view.as_slice::<i32>().map_err(|e| e.to_string())?.to_vec())
}

/// Zero points of uint8 tensors move to the signed domain (values are stored shifted by -128).
pub(super) fn signed_zp(t: &Tensor) -> Result<Vec<i32>, String> {
    let shift = if t.datum_type() == u8::datum_type() {
        128
    } else {
        0
    };
    Ok(to_i32(t)?.into_iter().map(|z| z - shift).collect())
}
