"""ExecuTorch ``.pte`` files with the XNNPACK delegate: the writer (fp32, or int8 through PT2E) and the runner.

* fp32: ``torch.export`` of the task's export module (BatchNorm folded) -> ``to_edge_transform_and_lower`` with
  the :class:`XnnpackPartitioner` -> ``.pte``. The whole network lands in XNNPACK delegate calls; what stays
  outside is counted in the export details (for MobileNetV3 a few ``_to_dim_order_copy`` of scalar constants).
* int8: the PT2E flow, ``prepare_pt2e`` / ``convert_pt2e`` from ``torchao.quantization.pt2e`` with ExecuTorch's
  ``XNNPACKQuantizer`` (symmetric per-channel int8 weights, int8 activations, static), calibrated on real
  images, then lowered the same way.
* Metadata: ExecuTorch has no string metadata slot, so the file's properties (:mod:`..keys`' keys, as JSON)
  are a constant method, :data:`PROPERTIES_METHOD`, returning them as a uint8 tensor of UTF-8 bytes: one file,
  readable by any ExecuTorch runtime (``program.load_method("mobilenets_properties").execute([])``).
* Threads: XNNPACK runs on ExecuTorch's process-wide thread pool, reset to ``threads`` when a runner is made
  (``_unsafe_reset_threadpool``): one runner per process, as for every backend (:mod:`.auto`, :mod:`.bench`).
"""
from __future__ import annotations

import collections
import copy
import json
import logging
from pathlib import Path

from ..files import failing_as, optional_import, quiet_native_stderr, require
from ..keys import META_KEY
from ..runtime import Runner, meta_of
from .base import COMMON_OPTIONS, INT8_OPTIONS, ExportJob, Writer

log = logging.getLogger(__name__)

PROPERTIES_METHOD = "mobilenets_properties"  # constant method: the file's properties, JSON as uint8 bytes
NEEDS = ("executorch",)
OPTIONS = (*COMMON_OPTIONS, *INT8_OPTIONS)  # a fixed batch: no dynamic_batch


def check(int8: bool) -> None:
    require("executorch", what="fmt='executorch'")


def _import_executorch():
    # torchao (imported by executorch) re-registers an Enum with torch's pytree and torch logs a warning about it
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    return optional_import("executorch", what="fmt='executorch'")


# ------------------------------------------------------------------------------------------------------ writer
def writer(job: ExportJob) -> Writer:
    """Lower ``job``'s model to ExecuTorch with the XNNPACK delegate (int8 when asked); the Writer saves it."""
    _import_executorch()
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeProgramManager, to_edge_transform_and_lower

    example = (torch.zeros(job.batch, *job.meta.preprocessing.input_size),)
    with failing_as(f"torch.export could not export {job.meta.model} for ExecuTorch"):
        program = torch.export.export(job.fused, example)  # the float model, or a learned int8 graph
    if job.calibrates:
        program = _quantize(program, example, job)
    with failing_as(f"ExecuTorch could not lower {job.meta.model} to XNNPACK"):
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    lowered = edge.exported_program()
    job.details.update(delegation(lowered))

    def save(file: Path, properties: dict[str, str]) -> None:
        data = torch.tensor(list(json.dumps(properties).encode()), dtype=torch.uint8)
        # to_executorch() rewrites the program in place (out variants): each save starts from a copy
        manager = EdgeProgramManager({"forward": copy.deepcopy(lowered)}, constant_methods={PROPERTIES_METHOD: data})
        Path(file).write_bytes(manager.to_executorch().buffer)

    return Writer(save=save, open=ExecuTorchRunner)


def _quantize(program, example, job: ExportJob):
    """PT2E int8 of an ExportedProgram, calibrated on ``job.calibration``: the program to lower."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    batches = job.calibration_batches()
    log.info("calibrating PT2E int8 on %d images", job.batch * len(batches))
    with torch.no_grad():
        for x in batches:
            prepared(torch.from_numpy(x))
    converted = convert_pt2e(prepared)
    job.details.update({"scheme": "pt2e-xnnpack", "weights": "int8 symmetric per-channel",
                        "activations": "int8 (static)", "calibration_images": job.batch * len(batches)})
    return torch.export.export(converted, example)


def delegation(program) -> dict:
    """How much of a lowered program XNNPACK runs: delegate calls and the ops left outside, by name."""
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    delegated = sum(getattr(n.target, "__name__", "") == "executorch_call_delegate" for n in calls)
    outside = collections.Counter(str(getattr(n.target, "__name__", n.target)) for n in calls
                                  if getattr(n.target, "__name__", "") not in ("executorch_call_delegate", "getitem"))
    return {"delegate": "XNNPACK", "delegate_calls": delegated,
            "ops_outside": dict(outside) if outside else "none"}


# ------------------------------------------------------------------------------------------------------ runner
class ExecuTorchRunner(Runner):
    """A ``.pte`` on ExecuTorch's Python runtime (XNNPACK on ``threads`` threads of its process-wide pool)."""

    backend = "executorch"

    def __init__(self, path: Path, threads: int | None = None):
        _import_executorch()
        import torch  # noqa: F401 - executorch's runtime takes and returns torch tensors
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        with failing_as(f"executorch cannot load {path}",
                        "pass a .pte file written by 'mobilenets export' with fmt='executorch'"):
            program = Runtime.get().load_program(str(path))
        if threads:
            with quiet_native_stderr():
                _unsafe_reset_threadpool(threads)
        properties = {}
        if PROPERTIES_METHOD in program.method_names:
            data = program.load_method(PROPERTIES_METHOD).execute([])[0]
            properties = json.loads(bytes(data.numpy().tobytes()).decode())
        with quiet_native_stderr():
            self.method = program.load_method("forward")
        sizes = program.metadata("forward").input_tensor_meta(0).sizes()
        self.threads = threads
        super().__init__(path, meta_of(properties) if META_KEY in properties else None, int(sizes[0]), properties)

    def _run(self, x):
        import torch
        out = self.method.execute([torch.from_numpy(x)])
        return [t.numpy().copy() for t in out]  # the runtime reuses its planned output buffers
