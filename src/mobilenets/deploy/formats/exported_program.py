"""``torch.export`` ExportedProgram ``.pt2`` (BatchNorm folded), the properties in its extra files; run by
:class:`TorchRunner`, which also runs any module in eager PyTorch (a checkpoint's export module).
"""
from __future__ import annotations

import json
from pathlib import Path

from ...checkpoint import CheckpointMeta
from ..files import failing_as
from ..keys import EP_META_FILE, EP_PROPERTIES_FILE, META_KEY
from ..runtime import Runner, meta_of, module_outputs
from .base import COMMON_OPTIONS, ExportJob, Writer

NEEDS = ()
OPTIONS = (*COMMON_OPTIONS, "dynamic_batch")


def check(int8: bool) -> None:
    """torch is always there."""


def writer(job: ExportJob) -> Writer:
    import torch

    example = torch.zeros(max(job.batch, 2) if job.dynamic_batch else job.batch, *job.meta.preprocessing.input_size)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if job.dynamic_batch else None
    with failing_as(f"torch.export could not export {job.meta.model}"):
        program = torch.export.export(job.fused, (example,), dynamic_shapes=dynamic_shapes)

    def save(file: Path, properties: dict[str, str]) -> None:
        rest = {k: v for k, v in properties.items() if k != META_KEY}
        torch.export.save(program, file, extra_files={EP_META_FILE: properties[META_KEY],
                                                      EP_PROPERTIES_FILE: json.dumps(rest)})
    return Writer(save=save, open=TorchRunner.from_exported_program)


class TorchRunner(Runner):
    """Eager PyTorch: ``module`` maps a batch to a tensor or a tuple of tensors."""

    backend = "torch"

    def __init__(self, path: Path, module, meta: CheckpointMeta | None, threads: int | None = None,
                 batch: int | None = None, properties: dict[str, str] | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.module = module
        super().__init__(path, meta, batch, properties)

    @classmethod
    def from_exported_program(cls, path: Path, threads: int | None = None) -> TorchRunner:
        import torch

        extra = {EP_META_FILE: "", EP_PROPERTIES_FILE: ""}
        with failing_as(f"torch cannot load exported program {path}",
                        "pass a .pt2 file written by 'mobilenets export' with fmt='exported-program'"):
            program = torch.export.load(str(path), extra_files=extra)
        properties = json.loads(extra[EP_PROPERTIES_FILE]) if extra[EP_PROPERTIES_FILE] else {}
        if extra[EP_META_FILE]:
            properties[META_KEY] = extra[EP_META_FILE]
        name = program.graph_signature.user_inputs[0]
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
        batch = node.meta["val"].shape[0]
        return cls(path, program.module(), meta_of(properties), threads, batch if isinstance(batch, int) else None,
                   properties)

    def _run(self, x):
        return module_outputs(self.module, x)
