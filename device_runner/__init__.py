"""mobiletl-train: the on-device training loop over a mobiletl-export artifact folder.

Needs numpy and onnxruntime-training only (Pillow to decode images, onnx to write the joined inference
model); never torch.
"""


class RunnerError(ValueError):
    """Bad input or state the user must fix: reported as one line, exit code 2."""
