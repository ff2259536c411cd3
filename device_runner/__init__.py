"""mobiletl-train: the on-device training loop over a mobiletl-export artifact folder.

Needs numpy, onnxruntime (any build >= 1.17; onnxruntime-training for --backend ort-training), safetensors
and Pillow (to decode images); never torch or onnx.
"""


class RunnerError(ValueError):
    """Bad input or state the user must fix: reported as one line, exit code 2."""
