"""Runs an ONNX file written by dtrain through the ONNX checker (with shape inference) and
onnxruntime. Usage: onnx_run.py MODEL INPUT_RAW DTYPE DIMS OUTPUT_RAW
INPUT_RAW holds the input tensor's bytes (DTYPE: float32 or int64, DIMS: comma-separated); the
model's first output is written to OUTPUT_RAW as float32. Prints one JSON line describing the run."""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

model_path, input_path, dtype, dims, output_path = sys.argv[1:6]
model = onnx.load(model_path)
onnx.checker.check_model(model, full_check=True)
x = np.fromfile(input_path, dtype=dtype).reshape([int(d) for d in dims.split(",")])
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
inputs = session.get_inputs()
y = session.run(None, {inputs[0].name: x})[0]
np.ascontiguousarray(y, dtype=np.float32).tofile(output_path)
print(json.dumps({
    "input": inputs[0].name,
    "output": session.get_outputs()[0].name,
    "output_shape": list(y.shape),
    "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0],
    "initializers": sorted(i.name for i in model.graph.initializer),
    "metadata": {p.key: p.value for p in model.metadata_props},
}))
