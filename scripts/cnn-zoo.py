#!/usr/bin/env python3
"""ImageNet-style CNNs of common architectures as ONNX files with weights, from the `onnx`
wheel's own copies of the ONNX model zoo graphs (onnx/backend/test/data/light/*.onnx: AlexNet,
DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512).

Those "light" graphs are the zoo's real graphs with every weight replaced by a constant fill
(ConstantOfShape). Here each fill becomes a seeded random initializer of the scale a trained
network has (He-normal convolutions and dense layers, BatchNormalization near identity, small
biases), so activations stay in range through 50+ layers, and the file is converted to opset 13
with ONNX's version converter. The final Softmax is left out (the file ends at the logits).
The graphs are nobody's here: bevrt was not tuned to them.

  scripts/cnn-zoo.py OUT_DIR [NAME...]     (default: all nine)

NAME_qdq (e.g. squeezenet_qdq) is NAME quantized by ONNX Runtime's own tool, as a user would
(needs onnxruntime): `quant_pre_process`, then `quantize_static` in the QDQ format, uint8
activations and per-channel int8 weights, calibrated on 8 seeded noise images. Beside it,
NAME_qdq.in.npy (one seeded input) and NAME_qdq.ort.npy (ONNX Runtime's output for it, CPU).
"""
import os
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def weight_for(name, shape, consumers, rng):
    """A plausible trained value for the constant `name` of `shape`, by how it is used."""
    shape = tuple(int(d) for d in shape)
    for node, pos in consumers:
        op = node.op_type
        if op in ("Conv", "Gemm") and pos == 1:
            fan_in = int(np.prod(shape[1:])) if op == "Conv" else int(shape[0] if _trans_b(node) == 0 else shape[1])
            return rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
        if op in ("Conv", "Gemm") and pos == 2:
            return rng.normal(0.0, 0.01, shape)
        if op == "BatchNormalization":
            return {1: rng.uniform(0.8, 1.2, shape), 2: rng.normal(0.0, 0.05, shape),
                    3: rng.normal(0.0, 0.05, shape), 4: rng.uniform(0.8, 1.2, shape)}[pos]
        if op == "Mul":
            return rng.uniform(0.8, 1.2, shape)
    return rng.normal(0.0, 0.05, shape)


def _trans_b(node):
    for a in node.attribute:
        if a.name == "transB":
            return a.i
    return 0


def materialize(model, seed):
    g = model.graph
    rng = np.random.default_rng(seed)
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consumers = {}
    for n in g.node:
        for pos, i in enumerate(n.input):
            consumers.setdefault(i, []).append((n, pos))
    keep, inits = [], {}
    for n in g.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in consts:
            shape = consts[n.input[0]]
            # reach through Unsqueeze (DenseNet's and Inception v2's scale/shift pairs)
            users = consumers.get(n.output[0], [])
            through = [(u2, p2) for u, _ in users if u.op_type == "Unsqueeze"
                       for u2, p2 in consumers.get(u.output[0], [])]
            value = weight_for(n.output[0], shape, users + through, rng).astype(np.float32)
            inits[n.output[0]] = numpy_helper.from_array(value, n.output[0])
        else:
            keep.append(n)
    # the logits, not the softmax: a saturated softmax (ResNet-50's 16 residual sums with
    # drawn weights reach it) would hide any error of the layers before it
    if keep and keep[-1].op_type == "Softmax" and keep[-1].output[0] == g.output[0].name:
        g.output[0].name = keep.pop().input[0]
    used = {i for n in keep for i in n.input}
    del g.node[:]
    g.node.extend(keep)
    old = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(old + list(inits.values()))
    names = {i.name for i in g.initializer}
    real = [i for i in g.input if i.name not in names and i.name in used]
    del g.input[:]
    g.input.extend(real)
    return model


def quantize_with_onnxruntime(fp32_path, out, name):
    from onnxruntime import InferenceSession
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    m = onnx.load(fp32_path)
    inp = m.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({inp.name: b} for b in batches)

        def get_next(self):
            return next(self.it, None)

    pre = os.path.join(out, f"{name}.pre.onnx")
    path = os.path.join(out, f"{name}.onnx")
    quant_pre_process(fp32_path, pre)
    quantize_static(pre, path, Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    os.remove(pre)
    x = rng.standard_normal(shape).astype(np.float32)
    y = InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {inp.name: x})[0]
    np.save(os.path.join(out, f"{name}.in.npy"), x)
    np.save(os.path.join(out, f"{name}.ort.npy"), y.astype(np.float32))
    return path, inp.name, shape


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    names = sys.argv[2:] or sorted(f[len("light_"):-5] for f in os.listdir(LIGHT) if f.endswith(".onnx"))
    for i, name in enumerate(names):
        if name.endswith("_qdq"):
            fp32 = os.path.join(out, f"{name[:-4]}.onnx")
            if not os.path.exists(fp32):
                sys.exit(f"{name}: make {fp32} first (list {name[:-4]} before it)")
            path, inp, dims = quantize_with_onnxruntime(fp32, out, name)
            print(f"{path}\t{inp}\t{'x'.join(map(str, dims))}\t{os.path.getsize(path) / 1e6:.1f} MB")
            continue
        m = onnx.load(os.path.join(LIGHT, f"light_{name}.onnx"))
        m = materialize(m, seed=1000 + i)
        m.ir_version = 7  # initializers need not be listed as inputs (IR >= 4)
        m = version_converter.convert_version(m, 13)
        onnx.checker.check_model(m)
        path = os.path.join(out, f"{name}.onnx")
        onnx.save(m, path)
        inp = m.graph.input[0]
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        print(f"{path}\t{inp.name}\t{'x'.join(map(str, dims))}\t{os.path.getsize(path) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
