"""The metadata keys every exported file carries, and the ONNX opset of every export (a leaf: imports nothing).

Metadata travels inside every file under these keys (ONNX ``metadata_props``, OpenVINO ``rt_info``, the
ExportedProgram's extra files, ExecuTorch constant methods, Core ML ``user_defined_metadata``, LiteRT's metadata
table), so a runner knows the model, its classes and preprocessing without the checkpoint.
"""

OPSET = 18  # ONNX opset of every export: native HardSwish / HardSigmoid need >= 14

META_KEY = "mobilenets.meta"  # the CheckpointMeta as JSON
PARITY_KEY = "mobilenets.parity"  # the parity check the file passed, as JSON
PRECISION_KEY = "mobilenets.precision"  # "fp32" or "int8"
# Every key above, and every key of a task's export properties (e.g. the detector's "mobilenets.postprocess"
# NMS settings, defined by the task that writes and reads them), starts with this prefix: what the runners
# read back as ``properties``.
PROPERTY_PREFIX = "mobilenets."
EP_META_FILE = "mobilenets_meta.json"  # ExportedProgram extra file holding META_KEY's value
EP_PROPERTIES_FILE = "mobilenets_properties.json"  # ExportedProgram extra file: the other properties as JSON
