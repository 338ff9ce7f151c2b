"""``mobilenets export`` and ``mobilenets bench`` (the deploy part of the CLI).

``predict --backend`` lives in commands/predict.py and calls :func:`mobilenets.deploy.open.open_runner`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..deploy.formats import FORMAT, FORMATS, RUNTIMES, SUFFIX, installed
from ..deploy.options import ExportOptions, validate
from ..deploy.quantize import INT8_WEIGHTS, weight_range_note
from ..deploy.triton import TRITON_BACKENDS, TritonOptions
from ..errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help=f"export a checkpoint or model to one of {', '.join(FORMATS)} (the format table), "
                       "optionally int8",
        description="Export with BatchNorm folded and native HardSwish/HardSigmoid, then check the file against "
                    "eager PyTorch (max |diff|, top-1 agreement); a file that fails the check is not written.")
    p.add_argument("source", metavar="CHECKPOINT_OR_NAME",
                   help="a mobilenets checkpoint, a torchvision/timm MobileNet state dict, or a model name")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="onnx (default), exported-program (torch.export .pt2), openvino (.xml + .bin), executorch "
                        "(.pte, XNNPACK), ort (ONNX Runtime mobile .ort + operator config), coreml (.mlpackage, "
                        "fp32; prediction needs macOS) or litert (.tflite, NHWC with --nhwc); with --int8 the "
                        "default is openvino when OpenVINO and NNCF are installed")
    p.add_argument("--out", default=None, help="output file (default: NAME[_int8].onnx|.pt2|.xml|.pte|.ort|"
                                               ".mlpackage here)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: a fixed batch)")
    p.add_argument("--batch", type=int, default=1, help="the fixed batch size of the file (default 1)")
    p.add_argument("--weights", default=None, help="for a model name: torchvision, timm or a weights file")
    p.add_argument("--accept-licence", default=None, metavar="NAME",
                   help="accept the licence of --weights by name (e.g. gemma for MobileNetV5's timm:gemma3n, under the "
                        "Gemma Terms of Use); weights under such a licence are refused without it")
    p.add_argument("--nhwc", action="store_true",
                   help="litert: the file takes (N, H, W, C) images, as phone camera pipelines hand them over "
                        "(default: NCHW, as PyTorch)")
    p.add_argument("--parity-data", "--data", dest="parity_data", default=None, metavar="fashion-mnist|DIR",
                   help="real images for the parity check (default: the calibration data, else random)")
    p.add_argument("--parity-n", "--parity-samples", dest="parity_n", type=int, default=None,
                   help="inputs in the parity check (default 16; 200 with --int8)")
    p.add_argument("--int8", action="store_true", help="post-training static int8 quantization")
    p.add_argument("--calibration-data", default=None, metavar="fashion-mnist|DIR",
                   help="images to calibrate int8 on (Fashion-MNIST: the training split)")
    p.add_argument("--calibration-n", "--calibration-samples", dest="calibration_n", type=int, default=300,
                   help="calibration images (default 300)")
    p.add_argument("--int8-weights", choices=INT8_WEIGHTS, default=None,
                   help="onnx/openvino/ort int8: 7bit (default) runs correctly on every CPU; 8bit uses the full "
                        "weight range, which CPUs without VNNI (AVX2, early AVX-512) saturate: only for files that "
                        "run on VNNI/AMX or ARM CPUs")
    p.add_argument("--accuracy", action="store_true",
                   help="also report Fashion-MNIST test accuracy of eager PyTorch and of the exported file")
    t = p.add_argument_group("Triton / KServe model repository (instead of --out)")
    t.add_argument("--triton", default=None, metavar="DIR",
                   help="write DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx (or model.xml + .bin), for Triton "
                        "or KServe; classifiers also get DIR/NAME/labels.txt")
    t.add_argument("--name", default=None, help="model name in the repository (default: the model's, _int8 added)")
    t.add_argument("--triton-backend", choices=TRITON_BACKENDS, default=None,
                   help="Triton backend: onnxruntime (default; model.onnx) or openvino (OpenVINO IR; with --int8 "
                        "the NNCF int8 IR)")
    t.add_argument("--instances", type=int, default=None, metavar="K", help="model instances on the CPU (default 1)")
    t.add_argument("--threads", type=int, default=None, metavar="T",
                   help="threads per instance (default: cores // instances); instances x threads <= cores")
    t.add_argument("--cores", type=int, default=None, metavar="N",
                   help="cores of the serving machine (default: the cores usable here)")
    t.add_argument("--max-batch", type=int, default=None, metavar="B",
                   help="max_batch_size with dynamic batching (default 8 for onnxruntime, 1 for openvino, whose "
                        "Triton backend pads every batch to it); 0: a fixed batch-1 file, no batching")
    t.add_argument("--force", action="store_true", help="replace an existing DIR/NAME")
    p.set_defaults(handler=export_command)

    b = subparsers.add_parser(
        "bench", help="latency/throughput of our models and the reference models on every backend",
        description="Each path (model x backend) in its own process, measured in interleaved rounds.")
    b.add_argument("--models", default="mobilenet_v1,mobilenet_v2,mobilenet_v3_large,mobilenet_v3_small",
                   help="comma-separated (default: V1-V3, the four); also mobilenet_v2_140 (width 1.4) and the "
                        "mobilenet_v4_* models, each against timm's same model")
    b.add_argument("--backends", default=None, help=f"comma-separated from {','.join(RUNTIMES)} "
                                                    "(default: every installed one that runs here)")
    b.add_argument("--batches", "--batch", default="1,32", help="comma-separated batch sizes (default 1,32)")
    b.add_argument("--resolution", type=int, default=None, metavar="PX",
                   help="input size for every model (default: each model's native one, e.g. 256 for V4 Conv-M)")
    b.add_argument("--threads", type=int, default=2, help="threads per runtime (default 2)")
    b.add_argument("--rounds", type=int, default=30, help="interleaved rounds per path at batch 1 (default 30)")
    b.add_argument("--large-batch-rounds", type=int, default=10,
                   help="interleaved rounds per path at larger batches (default 10)")
    b.add_argument("--tuned-peers", action="store_true",
                   help="also run the reference ONNX files with our tuned runner settings")
    b.add_argument("--int8", action="store_true", help="also measure our int8 models (NNCF/OpenVINO, ORT QDQ)")
    b.add_argument("--calibration-data", default=None, metavar="fashion-mnist|DIR",
                   help="calibration images for --int8 (default fashion-mnist)")
    b.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    b.set_defaults(handler=bench_command)


def export_options(args: argparse.Namespace) -> ExportOptions:
    """The :class:`ExportOptions` the flags ask for (each flag is named after its field)."""
    return ExportOptions(batch=args.batch, dynamic_batch=args.dynamic_batch, parity_data=args.parity_data,
                         parity_n=args.parity_n, int8=args.int8, calibration_data=args.calibration_data,
                         calibration_n=args.calibration_n, int8_weights=args.int8_weights, nhwc=args.nhwc)


def triton_options(args: argparse.Namespace) -> TritonOptions:
    """The :class:`TritonOptions` the Triton flags ask for (``--triton-backend`` is its ``backend``)."""
    given = dict(name=args.name, backend=args.triton_backend, instances=args.instances, threads=args.threads,
                 cores=args.cores, max_batch=args.max_batch, force=args.force or None)
    return TritonOptions(**{k: v for k, v in given.items() if v is not None})


def export_command(args: argparse.Namespace) -> int:
    from ..deploy.export import export_model
    from ..deploy.source import load_source

    options = export_options(args)
    if args.triton is not None:
        return triton_command(args, options)
    triton_only = triton_options(args).asked()
    if triton_only:
        raise UserError(f"{', '.join(triton_only)} only {'applies' if len(triton_only) == 1 else 'apply'} to a "
                        "Triton repository; add --triton DIR or drop them")
    fmt = args.format
    if fmt is None:
        fmt = "openvino" if args.int8 and installed("openvino") and installed("nncf") else "onnx"
    validate(fmt, options)  # before loading the model
    model, meta = load_source(args.source, weights=args.weights)
    out = Path(args.out) if args.out else Path(f"{Path(args.source).stem}{'_int8' if args.int8 else ''}{SUFFIX[fmt]}")
    result = export_model(model, meta, out, fmt, options)
    extra = "".join(f" + {out.with_suffix(suffix).name}" for suffix in FORMAT[fmt].companions)
    print(f"wrote {result.path}{extra} ({fmt}, {result.precision}, {meta.model})")
    print(result.parity_line)
    for key, value in result.properties.items():
        print(f"{key} (stored in the file): {value}")
    if result.details:
        label = "quantization" if result.precision == "int8" else "conversion"
        print(f"{label}: " + ", ".join(f"{k}={v}" for k, v in result.details.items() if k != "structure"))
    note = weight_range_note(result.details.get("weight_range", ""))
    if note:
        print(f"note: {note} (--int8-weights 7bit)", file=sys.stderr)
    if args.accuracy:
        from ..deploy.accuracy import accuracy_report
        print(accuracy_report(model, meta, result.path))
    return 0


def triton_command(args: argparse.Namespace, options: ExportOptions) -> int:
    """``export --triton DIR``: a Triton / KServe model repository entry (mobilenets.deploy.triton)."""
    from ..deploy.source import load_source
    from ..deploy.triton import export_triton

    clashing = [flag for flag, value in (("--out", args.out), ("--format", args.format)) if value]
    if clashing:
        raise UserError(f"{', '.join(clashing)} {'does' if len(clashing) == 1 else 'do'} not apply to --triton DIR "
                        "(--triton-backend sets the format); drop them")
    triton = triton_options(args)
    validate("onnx", options, triton=True)  # before loading the model (export_triton checks the rest)
    model, meta = load_source(args.source, weights=args.weights)
    result = export_triton(model, meta, args.triton, triton, options)
    print(f"wrote {result.path}: {', '.join(result.files)} (Triton {result.backend}, {result.export.precision}, "
          f"{meta.model})")
    print(result.export.parity_line)
    batching = (f"max_batch_size {result.max_batch}, dynamic batching" if result.max_batch > 1 else
                f"max_batch_size {result.max_batch}")
    print(f"{batching}; {result.instances} CPU instance(s) x {result.threads} thread(s) "
          f"(<= {result.cores} cores)")
    for kind, tensors in (("input", result.inputs), ("output", result.outputs)):
        for t in tensors:
            label = f", labels {t.label_filename}" if t.label_filename else ""
            print(f"{kind} {t.name}: {t.data_type} [{', '.join(map(str, t.dims))}]{label}")
    if not meta.class_names:
        print("no labels.txt: the model carries no class names (a checkpoint trained here does)")
    if result.export.details:
        print("quantization: " + ", ".join(f"{k}={v}" for k, v in result.export.details.items()))
    if args.accuracy:
        from ..deploy.accuracy import accuracy_report
        print(accuracy_report(model, meta, result.export.path))
    print(f"serve it: tritonserver --model-repository {Path(args.triton).resolve()}")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    from ..deploy.bench import BenchOptions, format_table, run_bench

    options = BenchOptions(
        models=tuple(parse_list(args.models, "models")),
        backends=tuple(parse_list(args.backends, "backends")) if args.backends else None,
        batches=tuple(parse_list(args.batches, "batches", int)), threads=args.threads, rounds=args.rounds,
        large_batch_rounds=args.large_batch_rounds, resolution=args.resolution, tuned_peers=args.tuned_peers,
        int8=args.int8, calibration=args.calibration_data)
    report = run_bench(options, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(report.to_json(), indent=1) if args.json else format_table(report))
    return 0


def parse_list(text: str, what: str, cast=str) -> list:
    """A comma-separated flag value as a list (``cast`` each item); one-line UserError when it is not one."""
    try:
        items = [cast(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise UserError(f"--{what} {text!r} is not a comma-separated list ({e}); e.g. --{what} 1,32") from e
    if not items:
        raise UserError(f"--{what} is empty; give a comma-separated list")
    return items
