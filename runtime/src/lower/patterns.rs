//! Activation patterns exporters spell out op by op, lowered as the one activation they
//! compute so it fuses into the convolution before it: hard-swish as `x · Clip(x + 3, 0, 6)
//! / 6` (Paddle, PyTorch before opset 14) and as `x · HardSigmoid(x)` with α = 1/6, β = 1/2.
//! Found on the graph before lowering; the pattern's other nodes are skipped, and its last
//! node becomes a `HardSwish` of `x`. The intermediate tensors must have no other reader.

use std::collections::HashMap;
use tract_onnx::pb;

/// One hard-swish: `out = HardSwish(x)`, computed by nodes `nodes` (the last is `end`).
pub(super) struct HardSwish {
    pub(super) x: String,
    pub(super) out: String,
    pub(super) nodes: Vec<usize>,
    pub(super) end: usize,
}

impl HardSwish {
    /// The node the lowering runs in place of the pattern's last one.
    pub(super) fn as_node(&self, g: &pb::GraphProto) -> pb::NodeProto {
        pb::NodeProto {
            op_type: "HardSwish".into(),
            name: g.node[self.end].name.clone(),
            input: vec![self.x.clone()],
            output: vec![self.out.clone()],
            ..Default::default()
        }
    }
}

/// Every hard-swish of `g`; `scalar(name)` is the value of a one-element constant.
pub(super) fn hard_swishes(
    g: &pb::GraphProto,
    opset: i64,
    scalar: impl Fn(&str) -> Option<f32>,
    readers: &HashMap<String, usize>,
) -> Vec<HardSwish> {
    let producer: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let is = |name: &str, v: f32| scalar(name) == Some(v);
    // the node of type `op` writing `t`, when `t` has no other reader
    let made_by = |t: &str, op: &str| {
        producer.get(t).copied().filter(|&p| {
            g.node[p].op_type == op
                && g.node[p].domain.is_empty()
                && readers.get(t).copied() == Some(1)
        })
    };
    let mut found = vec![];
    for (i, n) in g.node.iter().enumerate() {
        let hs = |x: &str, nodes: Vec<usize>| HardSwish {
            x: x.to_string(),
            out: n.output[0].clone(),
            nodes,
            end: i,
        };
        // x · HardSigmoid(x; 1/6, 1/2)
        if n.op_type == "Mul" && n.input.len() == 2 {
            for (a, b) in [(0, 1), (1, 0)] {
                let Some(h) = made_by(&n.input[b], "HardSigmoid") else {
                    continue;
                };
                let hsig = &g.node[h];
                let attr = |k: &str, d: f32| {
                    hsig.attribute
                        .iter()
                        .find(|x| x.name == k)
                        .map_or(d, |x| x.f)
                };
                if hsig.input[0] == n.input[a]
                    && (attr("alpha", 0.2) - 1.0 / 6.0).abs() < 1e-6
                    && attr("beta", 0.5) == 0.5
                {
                    found.push(hs(&n.input[a], vec![h, i]));
                }
            }
            continue;
        }
        // Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6), the Mul's and Add's operands in either order
        if n.op_type != "Div" || n.input.len() != 2 || !is(&n.input[1], 6.0) {
            continue;
        }
        let Some(m) = made_by(&n.input[0], "Mul") else {
            continue;
        };
        let mul = &g.node[m];
        for (a, b) in [(0, 1), (1, 0)] {
            let Some(c) = made_by(&mul.input[b], "Clip") else {
                continue;
            };
            let clip = &g.node[c];
            let bounds = if opset < 11 {
                let attr = |k: &str| clip.attribute.iter().find(|x| x.name == k).map(|x| x.f);
                attr("min") == Some(0.0) && attr("max") == Some(6.0)
            } else {
                clip.input.len() == 3 && is(&clip.input[1], 0.0) && is(&clip.input[2], 6.0)
            };
            let Some(ad) = made_by(&clip.input[0], "Add") else {
                continue;
            };
            let add = &g.node[ad];
            let x = &mul.input[a];
            let adds_three = (add.input[0] == *x && is(&add.input[1], 3.0))
                || (add.input[1] == *x && is(&add.input[0], 3.0));
            if bounds && adds_three {
                found.push(hs(x, vec![ad, c, m, i]));
                break;
            }
        }
    }
    found
}
