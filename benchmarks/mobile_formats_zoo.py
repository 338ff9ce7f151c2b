"""What converts where (issue 22): every zoo classifier and the task heads, exported by the one exporter to
ExecuTorch (.pte), ONNX Runtime's .ort and Core ML (.mlpackage), fp32, and int8 where asked; per export the
outcome (parity PASS / structure-checked / the one-line reason it failed), the file size and the time.

    .venv/bin/python benchmarks/mobile_formats_zoo.py --out benchmarks/mobile_formats_zoo

Random weights (conversion does not depend on them; the parity check's random logits are O(1e-2..1), and the
task compares them at its own tolerance). Classifiers at ``--resolution`` (default 224 for all: file size does
not depend on it), the heads on a V3-Small/V3-Large/V2 backbone at 320 px (detection) and 256 px (segmentation).
Writes OUT.md (the table) and OUT.json after every model.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

import mobilenets
from mobilenets.checkpoint import CheckpointMeta, Preprocessing
from mobilenets.deploy import ExportOptions, export_model
from mobilenets.deploy.source import meta_for
from mobilenets.errors import UserError
from mobilenets.registry import list_models

FORMATS = ("executorch", "ort", "coreml")
INT8 = ("executorch", "ort")
INT8_MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v4_conv_small")
HEADS = [("ssdlite", "mobilenet_v3_small", "detect", 320), ("yolo", "mobilenet_v3_small", "detect", 320),
         ("lraspp", "mobilenet_v3_small", "segment", 256), ("deeplabv3", "mobilenet_v3_large", "segment", 256)]


def size_of(path: Path) -> int:
    """Bytes of the model file (a Core ML package: all files in it; not the .ort's operator config)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def try_export(model, meta, folder: Path, fmt: str, int8: bool) -> dict:
    suffix = {"executorch": ".pte", "ort": ".ort", "coreml": ".mlpackage"}[fmt]
    out = folder / f"{meta.model}_{'int8' if int8 else 'fp32'}{suffix}"
    t = time.perf_counter()
    try:
        result = export_model(model, meta, out, fmt,
                              ExportOptions(parity_n=4 if not int8 else 16, int8=int8,
                                            calibration_data="fashion-mnist" if int8 else None, calibration_n=32,
                                            min_agreement=0.0 if int8 else None))
    except UserError as e:
        return {"ok": False, "why": str(e)[:300], "seconds": round(time.perf_counter() - t, 1)}
    except Exception as e:  # noqa: BLE001 - a converter crash is a finding, not the end of the table
        return {"ok": False, "why": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                "seconds": round(time.perf_counter() - t, 1)}
    row = {"ok": True, "seconds": round(time.perf_counter() - t, 1), "bytes": size_of(out),
           "parity": result.parity_line,
           "details": {k: v for k, v in result.details.items() if k != "structure"}}
    return row


def head_model(name: str, backbone: str, task: str, px: int):
    torch.manual_seed(0)
    classes = ["background", "a", "b", "c"]
    model = mobilenets.create_model(name, backbone=backbone, num_classes=len(classes)).eval()
    meta = CheckpointMeta(model=name, options=dict(model.arch_options), task=task, class_names=classes,
                          preprocessing=Preprocessing(input_size=(3, px, px), resize=px))
    return model, meta


def table(rows: dict) -> str:
    lines = ["| model | px | " + " | ".join(f"{f} fp32" for f in FORMATS) + " | " + " | ".join(
        f"{f} int8" for f in INT8) + " |", "|---|---|" + "---|" * (len(FORMATS) + len(INT8))]
    for name, r in rows.items():
        cells = []
        for key in [f"{f} fp32" for f in FORMATS] + [f"{f} int8" for f in INT8]:
            c = r.get(key)
            if c is None:
                cells.append("-")
            elif c["ok"]:
                note = "structure only" if "parity not checked" in c["parity"] else "parity PASS"
                cells.append(f"{c['bytes'] / 1e6:.2f} MB, {note}, {c['seconds']:.0f} s")
            else:
                cells.append(f"FAIL: {c['why']}")
        lines.append(f"| {name} | {r['px']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=",".join(list_models(task="classify")))
    p.add_argument("--heads", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--out", default="benchmarks/mobile_formats_zoo")
    p.add_argument("--workdir", default="/tmp/mobile_formats_zoo")
    args = p.parse_args()
    out, folder = Path(args.out), Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    formats = args.formats.split(",")
    rows: dict = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}

    def save():
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        out.with_suffix(".md").write_text(table(rows) + "\n")

    jobs = [(n, None) for n in args.models.split(",") if n] + (HEADS if args.heads else [])
    for name, *head in jobs:
        if head[0] is None:
            model = mobilenets.create_model(name).eval()
            meta = meta_for(model, name, {}, resolution=args.resolution)
            label, px = name, args.resolution
        else:
            backbone, task, px = head
            model, meta = head_model(name, backbone, task, px)
            label = f"{name} ({task}, {backbone})"
        row = rows.setdefault(label, {"px": px})
        for fmt in formats:
            if f"{fmt} fp32" not in row:
                row[f"{fmt} fp32"] = try_export(model, meta, folder, fmt, False)
                print(label, fmt, "fp32", row[f"{fmt} fp32"], flush=True)
                save()
            if (not args.no_int8 and fmt in INT8 and name in INT8_MODELS and head[0] is None
                    and f"{fmt} int8" not in row):
                row[f"{fmt} int8"] = try_export(model, meta, folder, fmt, True)
                print(label, fmt, "int8", row[f"{fmt} int8"], flush=True)
                save()
        for f in folder.iterdir():  # keep the disk small: the sizes are recorded
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink()
    save()
    print(table(rows))


if __name__ == "__main__":
    main()
