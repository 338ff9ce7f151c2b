"""Our YOLO (``mobilenets train --task detect --model yolo``) against an Ultralytics model trained from scratch, side
by side on the same Fashion-MNIST scenes, budget, input size and CPU share (issue 30).

    .venv/bin/python benchmarks/yolo_vs_ultralytics.py --setup       # only builds .venv-ultralytics (about a minute)
    .venv/bin/python benchmarks/yolo_vs_ultralytics.py --peer yolov8n --minutes 52 --scenes 30000 \\
        --out runs/bench/yolo_vs_yolov8n
    .venv/bin/python benchmarks/yolo_vs_ultralytics.py --peer yolo26n --minutes 52 --scenes 30000 \\
        --out runs/bench/yolo_vs_yolo26n
    .venv/bin/python benchmarks/yolo_vs_ultralytics.py --minutes 1 --scenes 500 --out /tmp/yvu   # smoke test

Ultralytics lives in its own virtual environment, ``--peer-venv`` (default ``.venv-ultralytics``, gitignored), never
in ``.venv`` and never a dependency of the library or of ``make test``. The script builds it on first use (or with
``--setup``): a venv of the base interpreter of ``.venv`` whose ``.pth`` file appends ``.venv``'s site-packages, so it
reuses the torch 2.14.1 / torchvision / onnx / onnxruntime already installed there (nothing of torch is downloaded or
copied); ``ultralytics==VERSION`` goes in with ``--no-deps``, then only its requirements that ``.venv`` does not
satisfy (opencv-python, polars, ultralytics-thop, ...) and onnxslim (its ONNX export simplifies with it). Packages
installed there shadow ``.venv``'s for the Ultralytics process only; ``.venv`` is never written.

What it does:

1. Writes the scenes as an Ultralytics data set (``--data-dir``, default ``runs/ultralytics_scenes/<scenes, size,
   seed, val, test>``, so that the yolov8n and yolo26n runs share it): ``images/{train,val,test}/*.png``
   (8-bit, as our training cache rounds them), ``labels/.../*.txt`` (``cls cx cy w h`` normalised, class = our label
   - 1; an empty file for an empty scene) and ``data.yaml``. The splits are the ones ``mobilenets train`` opens
   (:func:`mobilenets.data.dense.open_scenes`): ``--scenes`` training scenes of the training items outside the 10%
   holdout, ``--val-scenes`` validation scenes of the held-out items (each side's per-epoch validation), and the
   fixed test set of ``mobilenets eval``, the first ``--test-scenes`` test scenes at seed 0.
2. Trains both at once, one thread each (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``, no DataLoader
   workers), each with the wall-time budget ``--minutes``: ours is the recorded 52-minute YOLO run's command of
   ``yolo_vs_ssdlite.py`` (``--time-limit``, ``--recipe dense`` by default, batch 32, seed 0) plus ``--ours-args``;
   the peer is ``YOLO("<peer>.yaml").train(..., time=minutes/60, imgsz, batch 32, optimizer SGD, lr0 0.01, amp off,
   pretrained off, plots off, workers 0, device cpu)`` with Ultralytics' other defaults (mosaic etc., ``nbs=64``:
   gradients of two batches per optimizer step). Ultralytics' budget starts after its data-set scan and RAM cache
   and ends before its final validation of best.pt; ours includes rendering the scenes in the first epoch.
   Ultralytics never reaches the network: ``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=0``, its settings file in
   ``OUT/peer_config`` with sync and every logger off, the font check of its data-set loader stubbed (it sends a
   HEAD request for Arial.ttf to GitHub even offline), and every socket connect / DNS look-up refused and recorded
   (``network_attempts`` in the results).
3. Scores the LAST checkpoint of each on the test scenes with the same pycocotools code,
   :func:`mobilenets.tasks.detect.coco_map`, boxes in original coordinates: ours through ``mobilenets eval
   --limit-val N --json`` (the task's own evaluation); the peer through its ``predict`` at conf 0.001, IoU 0.7,
   max_det 300 (an end-to-end head, YOLO26, with ``nms=False``: its one-to-one head, no NMS) on the PNGs; Ultralytics'
   own ``val`` on the same scenes is recorded beside it as a cross-check. Then parameters (of the modules the
   deployed eval graph runs: an end-to-end model's training-only head is left out; all of them recorded beside)
   and MACs at the input size (ours: :func:`mobilenets.profile`; the peer: the same rule, multiply-accumulates of
   every Conv2d / Linear that runs, counted with hooks, and Ultralytics' ``get_flops / 2`` (thop) beside it),
   epochs, batches and training images/s (training phase only, validation excluded) and images/s per GMAC, and the
   batch-1 latency on ONNX Runtime, one thread (intra/inter-op 1, sequential, all graph optimisations: the options
   of mobilenets' runner, for both): the network alone and with its post-processing (ours: ``mobilenets export
   --format onnx`` + :func:`mobilenets.heads.detection.postprocess_detections` with the file's stored settings, or
   for an end-to-end graph (``--ours-args --end-to-end``) its score filter ``detections_to_dict``; the peer:
   Ultralytics' ONNX export + ``ultralytics.utils.nms.non_max_suppression`` at the same settings, for an end-to-end
   export the in-graph top-k and the confidence filter). Latency medians are over ``--latency-runs`` runs
   after warm-up, in ``--latency-rounds`` alternating blocks (ours, peer, ours, ...), on the first test scene.
4. Writes ``OUT/results.json`` and ``OUT/results.md`` (host, date, command, versions) and prints the table.

``--skip-train`` measures the runs already in OUT.
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

import mobilenets
from bench_cli import join_flag_values
from mobilenets.checkpoint import load_checkpoint
from mobilenets.data.dense import TEST_SEED, model_inputs, open_scenes
from mobilenets.data.loaders import DataConfig
from mobilenets.data.scenes import FashionScenes
from mobilenets.heads.detection import postprocess_detections
from mobilenets.heads.yolo import detections_to_dict
from mobilenets.tasks.detect import POSTPROCESS_KEY, coco_map

REPO = Path(__file__).resolve().parents[1]
ULTRALYTICS_VERSION = "8.4.190"
EXTRA_PEER_PACKAGES = ("onnxslim>=0.1.82",)  # Ultralytics' ONNX export simplifies with it (its default)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
OFFLINE = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_VERBOSE": "1"}
VAL_FRACTION = 0.1  # mobilenets train's default holdout of the training items (--val-fraction)
CONF, IOU, MAX_DET = 0.001, 0.7, 300  # Ultralytics' validation settings (and our YOLO's stored NMS settings)


# -- the Ultralytics virtual environment -------------------------------------------------------------------------

MISSING_REQUIREMENTS = r"""
import importlib.metadata as md, json
from pip._vendor.packaging.requirements import Requirement
missing = []
for text in md.distribution("ultralytics").requires or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        ok = req.specifier.contains(md.version(req.name), prereleases=True)
    except md.PackageNotFoundError:
        ok = False
    if not ok:
        missing.append(str(req).split(";")[0])
print(json.dumps(missing))
"""


def ensure_peer_venv(venv: Path, version: str) -> Path:
    """The Python of ``venv`` with ``ultralytics==version`` (built once; ``mobilenets-setup.json`` records how)."""
    python = venv / "bin" / "python"
    marker = venv / "mobilenets-setup.json"
    reused = sysconfig.get_paths()["purelib"]
    want = {"ultralytics": version, "reuses_site_packages": reused}
    if python.exists() and marker.is_file() and json.loads(marker.read_text()).get("want") == want:
        return python
    if sys.prefix == sys.base_prefix:
        raise SystemExit("run this script with the project's .venv/bin/python: the Ultralytics venv reuses its torch")
    start = time.perf_counter()
    print(f"building {venv} (ultralytics=={version}, reusing {reused}) ...", flush=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "_mobilenets_venv.pth").write_text(reused + "\n")  # appended after the venv's own packages
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", f"ultralytics=={version}"], check=True)
    missing = json.loads(subprocess.run([str(python), "-c", MISSING_REQUIREMENTS], check=True, capture_output=True,
                                        text=True).stdout)
    subprocess.run([*pip, *missing, *EXTRA_PEER_PACKAGES], check=True)
    check = ("import ultralytics, torch; from ultralytics import YOLO; [YOLO(m + '.yaml') for m in ('yolov8n', "
             "'yolo26n')]; print(ultralytics.__version__, torch.__version__, torch.__file__)")
    done = subprocess.run([str(python), "-c", check], capture_output=True, text=True,
                          env={**os.environ, **OFFLINE, "YOLO_CONFIG_DIR": str(venv / "config")})
    if done.returncode != 0:
        raise SystemExit(f"{venv}: building yolov8n / yolo26n failed:\n{done.stderr[-2000:]}")
    done.stdout = done.stdout.strip().splitlines()[-1]
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"want": want, "installed": missing + list(EXTRA_PEER_PACKAGES),
                                  "check": done.stdout, "seconds": round(seconds, 1)}, indent=2))
    print(f"built {venv} in {seconds:.0f} s (ultralytics, torch, torch's path: {done.stdout}); installed there: "
          f"ultralytics {' '.join(missing + list(EXTRA_PEER_PACKAGES))}", flush=True)
    return python


# -- the data set -------------------------------------------------------------------------------------------------

def scene_splits(args) -> dict[str, FashionScenes]:
    """The three splits exactly as ``mobilenets train`` / ``mobilenets eval`` open them."""
    cfg = DataConfig(data="scenes", batch_size=args.batch_size, seed=args.seed, val_fraction=VAL_FRACTION,
                     scenes_val="holdout", num_workers=1,  # num_workers: no in-memory cache here
                     scenes=args.scenes, scene_size=args.scene_size, limit_val=args.val_scenes)
    test_cfg = DataConfig(data="scenes", seed=TEST_SEED, scene_size=args.scene_size, limit_val=args.test_scenes)
    return {"train": open_scenes(cfg, "train", None, "detect"), "val": open_scenes(cfg, "val", None, "detect"),
            "test": open_scenes(test_cfg, "test", None, "detect")}


def export_yolo_dataset(splits: dict[str, FashionScenes], root: Path) -> Path:
    """PNG images + YOLO txt labels + data.yaml under ``root`` (kept when ``meta.json`` says it is the same)."""
    from PIL import Image

    meta = {name: ds.describe() for name, ds in splits.items()}
    yaml_path = root / "data.yaml"
    if yaml_path.is_file() and (root / "meta.json").is_file() and json.loads((root / "meta.json").read_text()) == meta:
        print(f"data set {root}: already written", flush=True)
        return yaml_path
    start = time.perf_counter()
    for name, ds in splits.items():
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        (root / "labels" / name).mkdir(parents=True, exist_ok=True)
        for i in range(len(ds)):
            image, boxes, labels, _ = ds.render(i)
            s = image.shape[-1]
            stem = f"{name}_{i:06d}"
            Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(
                root / "images" / name / f"{stem}.png")
            lines = [f"{label - 1} {(x1 + x2) / 2 / s:.6f} {(y1 + y2) / 2 / s:.6f} {(x2 - x1) / s:.6f} "
                     f"{(y2 - y1) / s:.6f}" for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist())]
            (root / "labels" / name / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
        print(f"  {name}: {len(ds)} scenes written ({time.perf_counter() - start:.0f} s)", flush=True)
    names = ", ".join(f"{i}: {json.dumps(n)}" for i, n in enumerate(FashionScenes.class_names))
    yaml_path.write_text(f"path: {json.dumps(str(root.resolve()))}\ntrain: images/train\nval: images/val\n"
                         f"test: images/test\nnames: {{{names}}}\n")
    (root / "meta.json").write_text(json.dumps(meta))
    return yaml_path


# -- the Ultralytics side: a runner script executed by the peer venv's Python --------------------------------------

PEER_RUNNER = r'''
"""Ultralytics side of benchmarks/yolo_vs_ultralytics.py (written there at each run): train | measure | latency."""
import copy
import importlib.metadata
import json
import socket
import sys
import time
from pathlib import Path

NETWORK_ATTEMPTS = []  # every connect / DNS look-up, refused: the benchmark never reaches the network


def _refuse(what):
    def refuse(*args, **kwargs):
        NETWORK_ATTEMPTS.append(f"{what} {args[1:2] if what.startswith('socket.') else args[:2]}")
        raise OSError(f"network disabled by the benchmark ({what})")
    return refuse


socket.getaddrinfo = _refuse("getaddrinfo")
socket.create_connection = _refuse("create_connection")
socket.socket.connect = _refuse("socket.connect")
socket.socket.connect_ex = _refuse("socket.connect_ex")

import numpy as np
import torch

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

import ultralytics
import ultralytics.data.base
import ultralytics.data.dataset
import ultralytics.data.utils
import ultralytics.utils.torch_utils
from ultralytics import YOLO
from ultralytics.utils import SETTINGS

# select_device() sets torch's threads to min(8, cores - 1) and the RAM cache uses as many; one thread here
for module in (ultralytics.utils.torch_utils, ultralytics.data.base, ultralytics.data.dataset):
    module.NUM_THREADS = 1
# check_det_dataset() fetches Arial.ttf for its plots when the font is missing: no plots here, no font needed
ultralytics.data.utils.check_font = lambda *args, **kwargs: None
SETTINGS.update({"sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False, "raytune": False,
                 "tensorboard": False, "wandb": False, "vscode_msg": False, "openvino_msg": False})


def is_end2end(net):
    return getattr(net.model[-1], "one2one_cv2", None) is not None


def train(cfg):
    stats = {"epochs": [], "threads_seen": set()}
    state = {}

    def on_train_start(trainer):
        state["train_start"] = time.perf_counter()

    def on_train_epoch_start(trainer):
        stats["threads_seen"].add(torch.get_num_threads())
        torch.set_num_threads(1)
        state.update(t0=time.perf_counter(), batches=0)

    def on_train_batch_start(trainer):
        state["batches"] += 1

    def on_train_epoch_end(trainer):
        n = len(trainer.train_loader.dataset)
        stats["epochs"].append({"epoch": trainer.epoch + 1, "batches": state["batches"],
                                "images": min(state["batches"] * trainer.batch_size, n),
                                "seconds": time.perf_counter() - state["t0"]})

    def on_fit_epoch_end(trainer):
        m = trainer.metrics or {}
        stats["epochs"][-1].update(val_map=m.get("metrics/mAP50-95(B)"), val_map50=m.get("metrics/mAP50(B)"),
                                   planned_epochs=trainer.epochs, lr=trainer.lr.get("lr/pg0"))

    def on_train_end(trainer):
        state["train_end"] = time.perf_counter()
        stats.update(last=str(trainer.last), best=str(trainer.best), batch=trainer.batch_size,
                     accumulate_at_end=trainer.accumulate, train_images=len(trainer.train_loader.dataset),
                     save_dir=str(trainer.save_dir))

    model = YOLO(cfg["peer"] + ".yaml")
    for event, fn in (("on_train_start", on_train_start), ("on_train_epoch_start", on_train_epoch_start),
                      ("on_train_batch_start", on_train_batch_start), ("on_train_epoch_end", on_train_epoch_end),
                      ("on_fit_epoch_end", on_fit_epoch_end), ("on_train_end", on_train_end)):
        model.add_callback(event, fn)
    e2e = is_end2end(model.model)
    kwargs = dict(data=cfg["data"], epochs=100, time=cfg["minutes"] / 60, imgsz=cfg["imgsz"], batch=cfg["batch"],
                  device="cpu", workers=0, optimizer="SGD", lr0=0.01, amp=False, pretrained=False, plots=False,
                  seed=cfg["seed"], cache=cfg["cache"], project=cfg["project"], name="run", exist_ok=True, val=True)
    if e2e:
        kwargs["nms"] = False  # validate the one-to-one (NMS-free) head it deploys with
    start = time.perf_counter()
    model.train(**kwargs)
    stats.update(train_kwargs=kwargs, end2end=e2e, wall_seconds=time.perf_counter() - start,
                 setup_seconds=state["train_start"] - start,
                 train_wall_seconds=state["train_end"] - state["train_start"],
                 threads_seen=sorted(stats["threads_seen"]), network_attempts=NETWORK_ATTEMPTS)
    Path(cfg["stats"]).write_text(json.dumps(stats, indent=2))


def deployed(net, e2e):
    """The eval graph Ultralytics deploys: float, the one-to-one head alone for an end-to-end model."""
    net = copy.deepcopy(net).float().eval()
    head = net.model[-1]
    if e2e:
        net.end2end = True
        head.fuse()  # drops the one-to-many branch (training only); BatchNorm stays as trained
    return net


#SHARED#

def measure(cfg):
    from ultralytics.utils.torch_utils import get_flops

    size = cfg["imgsz"]
    model = YOLO(cfg["weights"])
    e2e = is_end2end(model.model)
    net = deployed(model.model, e2e)
    counts = count_run(net, size)
    counts["thop_macs"] = round(get_flops(copy.deepcopy(net), size) / 2 * 1e9)
    counts["params_trained"] = sum(p.numel() for p in model.model.parameters())  # every branch, as trained

    kwargs = dict(imgsz=size, conf=cfg["conf"], iou=cfg["iou"], max_det=cfg["max_det"], device="cpu", verbose=False)
    if e2e:
        kwargs["nms"] = False
    paths = sorted(Path(cfg["test_images"]).glob("*.png"))[:cfg["test_scenes"]]
    index, boxes, scores, classes = [], [], [], []
    start = time.perf_counter()
    for i in range(0, len(paths), 32):
        for j, r in enumerate(model.predict([str(p) for p in paths[i:i + 32]], batch=32, **kwargs)):
            b = r.boxes
            index.append(np.full(len(b), i + j))
            boxes.append(b.xyxy.numpy())
            scores.append(b.conf.numpy())
            classes.append(b.cls.numpy().astype(np.int64))
    predict_seconds = time.perf_counter() - start
    np.savez(cfg["predictions"], index=np.concatenate(index), boxes=np.concatenate(boxes),
             scores=np.concatenate(scores), classes=np.concatenate(classes),
             files=np.array([p.name for p in paths]))

    val = YOLO(cfg["weights"]).val(data=cfg["data"], split="test", batch=32, plots=False, workers=0,
                                   project=cfg["project"], name="val_test", exist_ok=True, **kwargs)
    onnx = YOLO(cfg["weights"]).export(format="onnx", imgsz=size, batch=1, dynamic=False, simplify=True,
                                       device="cpu", **({"nms": False} if e2e else {}))
    versions = {}
    for name in ("ultralytics", "ultralytics-thop", "opencv-python", "onnxslim", "onnx", "onnxruntime", "torch",
                 "polars"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    Path(cfg["out"]).write_text(json.dumps({
        "end2end": e2e, **counts, "predict_seconds": predict_seconds, "onnx": str(onnx),
        "ultralytics_val": {"map": float(val.box.map), "map50": float(val.box.map50)},
        "postprocess": ("end-to-end: one-to-one head, top-k in the graph, confidence filter" if e2e else
                        "ultralytics.utils.nms.non_max_suppression"),
        "versions": versions, "network_attempts": NETWORK_ATTEMPTS}, indent=2))


def latency(cfg):
    import cv2
    from ultralytics.utils.nms import non_max_suppression

    session = ort_session(cfg["onnx"])
    name = session.get_inputs()[0].name
    image = cv2.imread(cfg["image"])[:, :, ::-1]  # BGR -> RGB, as Ultralytics' predictor feeds the network
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0

    def network():
        return session.run(None, {name: x})

    def with_post():
        out = session.run(None, {name: x})[0]
        return non_max_suppression(torch.from_numpy(out), cfg["conf"], cfg["iou"], max_det=cfg["max_det"],
                                   end2end=cfg["end2end"])

    result = time_paths({"network": network, "with_post": with_post}, cfg["runs"], cfg["warmup"])
    result["detections"] = int(len(with_post()[0]))
    result["network_attempts"] = NETWORK_ATTEMPTS
    Path(cfg["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    command, config = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    {"train": train, "measure": measure, "latency": latency}[command](config)
'''


def peer_call(python: Path, out: Path, command: str, cfg: dict, log: Path | None = None,
              wait: bool = True) -> subprocess.Popen | None:
    """Run ``PEER_RUNNER command cfg`` with the peer venv's Python (one thread, offline), logging to ``log``."""
    runner = out / "peer_runner.py"
    runner.write_text(peer_runner_source())
    config = out / f"peer_{command}.json"
    config.write_text(json.dumps(cfg, indent=2))
    env = {**os.environ, **ONE_THREAD, **OFFLINE, "YOLO_CONFIG_DIR": str(out / "peer_config"),
           "PYTHONUNBUFFERED": "1"}
    stream = open(log, "a") if log else None
    proc = subprocess.Popen([str(python), str(runner), command, str(config)], env=env, stdout=stream,
                            stderr=subprocess.STDOUT if stream else None)
    if not wait:
        return proc
    rc = proc.wait()
    if stream:
        stream.close()
    if rc != 0:
        raise SystemExit(f"the Ultralytics {command} step failed (exit {rc})" + (f"; see {log}" if log else ""))
    return None


# -- our side -------------------------------------------------------------------------------------------------------

def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mobilenets", *args]


def ours_train_command(args) -> list[str]:
    """The recorded 52-minute YOLO run's command (benchmarks/yolo_vs_ssdlite.py) plus --device cpu and --ours-args."""
    return ["train", "--task", "detect", "--data", "scenes", "--model", "yolo", "--backbone", args.backbone,
            "--scenes", str(args.scenes), "--scene-size", str(args.scene_size), "--limit-val", str(args.val_scenes),
            "--epochs", "100", "--time-limit", str(args.minutes), "--batch-size", str(args.batch_size),
            "--seed", str(args.seed), "--threads", "1", "--workers", "0", "--device", "cpu",
            "--out", str(args.out / "ours" / "run"), "--no-progress", *shlex.split(args.ours_args)]


def ours_training_stats(run: Path, batch: int) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    images, seconds, previous = 0, 0.0, 0
    for r in records:  # training images / training seconds over all epochs (validation excluded)
        n = (r["step"] - previous) * batch
        previous = r["step"]
        images += n
        seconds += n / r["train_img_s"] if r["train_img_s"] else 0.0
    return {"epochs": records[-1]["epoch"], "batches": records[-1]["step"], "images": images,
            "train_seconds": round(seconds, 1), "train_img_s": round(images / seconds, 1) if seconds else None,
            "val_history": [(r["epoch"], round(r["map"], 4)) for r in records]}


@torch.no_grad()
def count_run(net, size):
    """Parameters of the leaf modules that run in ``net``'s eval forward at ``size`` px (the deployed graph), all
    parameters, and the MACs of every Conv2d / Linear that runs (mobilenets.profile's rule), counted with hooks."""
    macs, ran = [0], set()

    def hook(module, inputs, out):
        ran.add(module)
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs[0] += out.numel() // out.shape[0] * k
        elif isinstance(module, torch.nn.Linear):
            macs[0] += out.numel() // out.shape[0] * module.in_features

    net.eval()
    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        net(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return {"params": sum(p.numel() for m in ran for p in m.parameters(recurse=False)),
            "params_all": sum(p.numel() for p in net.parameters()), "macs": macs[0]}


def ort_session(path):
    """ONNX Runtime, one thread: the options of mobilenets' OnnxRuntimeRunner (tuned), used for both sides."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_paths(paths, runs, warmup):
    """Milliseconds of ``runs`` calls of each path after ``warmup`` calls, path after path."""
    result = {}
    for key, fn in paths.items():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        result[key] = times
    return result


SHARED = (count_run, ort_session, time_paths)  # defined once, copied into the peer runner


def peer_runner_source() -> str:
    return PEER_RUNNER.replace("#SHARED#", "\n\n".join(inspect.getsource(fn) for fn in SHARED))


def ours_latency(onnx_path: Path, scene: torch.Tensor, size: int, runs: int, warmup: int) -> dict:
    """The exported graph alone, and with what ``mobilenets predict`` runs after it: class-wise NMS
    (:func:`postprocess_detections`) with the file's stored settings, or for an end-to-end graph (final detections,
    two top-k in the graph) the score filter :func:`detections_to_dict`."""
    torch.set_num_threads(1)
    session = ort_session(onnx_path)
    settings = json.loads(dict(session.get_modelmeta().custom_metadata_map)[POSTPROCESS_KEY])
    end_to_end = bool(settings.pop("end_to_end", False))
    name = session.get_inputs()[0].name
    x = model_inputs([scene], size).numpy()

    def network():
        return session.run(None, {name: x})

    def with_post():
        out = session.run(None, {name: x})
        if end_to_end:
            return detections_to_dict(torch.from_numpy(out[0][0]), (size, size), settings["score_thresh"])
        return postprocess_detections(torch.from_numpy(out[0][0]), torch.from_numpy(out[1][0]), (size, size),
                                      **settings)

    result = time_paths({"network": network, "with_post": with_post}, runs, warmup)
    result["detections"] = int(len(with_post()["boxes"]))
    result["settings"] = settings
    result["postprocess"] = ("end-to-end: one-to-one head, two top-k in the graph, score filter (detections_to_dict)"
                             if end_to_end else "postprocess_detections (class-wise NMS)")
    return result


# -- orchestration ----------------------------------------------------------------------------------------------

def train_side_by_side(args, python: Path, peer_cfg: dict) -> dict:
    """Both trainings at once, one thread each; logs in OUT/ours/train.log and OUT/<peer>/train.log."""
    (args.out / "ours").mkdir(parents=True, exist_ok=True)
    peer_dir = args.out / args.peer
    peer_dir.mkdir(parents=True, exist_ok=True)
    ours_log = open(args.out / "ours" / "train.log" if args.ours_from is None else os.devnull, "w")
    (peer_dir / "train.log").write_text("")
    load_before = os.getloadavg()
    start = time.perf_counter()
    ours = subprocess.Popen(cli(*ours_train_command(args)) if args.ours_from is None else ["true"],
                            stdout=ours_log, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD})
    peer = peer_call(python, args.out, "train", peer_cfg, log=peer_dir / "train.log", wait=False)
    done = {}
    while len(done) < 2:
        for name, proc in (("ours", ours), (args.peer, peer)):
            if name not in done and proc.poll() is not None:
                done[name] = (proc.returncode, round((time.perf_counter() - start) / 60, 2))
        time.sleep(2)
    ours_log.close()
    failed = [f"{name} (exit {rc}, see {args.out / ('ours' if name == 'ours' else name) / 'train.log'})"
              for name, (rc, _) in done.items() if rc != 0]
    if failed:
        raise SystemExit("training failed: " + ", ".join(failed))
    return {"wall_minutes": {name: m for name, (_, m) in done.items()}, "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()}


def ours_eval(ckpt: Path, test_scenes: int, *extra: str) -> dict:
    done = subprocess.run(cli("eval", str(ckpt), "--limit-val", str(test_scenes), "--json", "--threads", "1",
                              "--no-progress", *extra), capture_output=True, text=True,
                          env={**os.environ, **ONE_THREAD})
    if done.returncode != 0:
        raise SystemExit(f"mobilenets eval {ckpt} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def peer_scores(pred_file: Path, test: FashionScenes) -> dict:
    """The peer's predictions on the test PNGs scored by coco_map against the scenes' own ground truth."""
    p = np.load(pred_file)
    gts, dets = [], []
    for i in range(len(test)):
        assert str(p["files"][i]) == f"test_{i:06d}.png", p["files"][i]
        boxes, labels, size = test.annotation(i)
        gts.append({"boxes": boxes, "labels": labels, "size": size})
        keep = p["index"] == i
        dets.append({"boxes": torch.from_numpy(p["boxes"][keep]), "scores": torch.from_numpy(p["scores"][keep]),
                     "labels": torch.from_numpy(p["classes"][keep] + 1)})
    result = coco_map(gts, dets, len(FashionScenes.class_names) + 1)
    result["per_class_ap"] = dict(zip(FashionScenes.class_names, result["per_class_ap"]))
    return {**result, "images": len(gts), "objects": int(sum(len(g["labels"]) for g in gts))}


def versions() -> dict:
    out = {"python": platform.python_version(), "mobilenets": mobilenets.__version__}
    for name in ("torch", "torchvision", "onnxruntime", "onnx", "numpy", "pycocotools"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def host() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "git": git.stdout.strip() or None}


def summarise(times: list[float]) -> dict:
    s = sorted(times)
    return {"median_ms": round(statistics.median(s), 3), "p90_ms": round(s[int(0.9 * (len(s) - 1))], 3),
            "runs": len(s)}


def markdown(result: dict) -> str:
    rows = result["models"]
    lines = [f"{result['benchmark']}", "",
             f"Host: {result['host']['cpu']} ({result['host']['cores']} cores), {result['date']}; "
             f"{result['minutes']:g} min each, side by side, one thread each"
             + (f" (ours reused from {result['ours_from']}; here only the peer trained, the other core busy with "
                f"other work)" if result.get("ours_from") else "")
             + f"; {result['scenes']:,} training scenes, "
             f"{result['input_size']} px, batch {result['batch_size']}; last checkpoint on the first "
             f"{result['test_scenes']:,} test scenes (pycocotools). Latency: ONNX Runtime, batch 1, one thread, "
             f"median ms, network / network + post-processing.", "",
             "| model | params | MACs | training | img/s | img/s per GMAC | mAP@[.5:.95] | mAP@.5 | ONNX Runtime ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        lat = r["latency_ms_batch1_1thread"]
        lines.append(
            f"| {r['label']} | {r['params'] / 1e6:.2f} M | {r['macs'] / 1e6:.1f} M | {r['epochs']} epochs, "
            f"{r['batches']:,} batches of {result['batch_size']} | {r['train_img_s']} | {r['img_s_per_gmac']} | "
            f"{r['map']:.3f} | {r['map50']:.3f} | {lat['network']['median_ms']:.2f} / "
            f"{lat['with_post']['median_ms']:.2f} |")
    peer, ours = rows[result["peer"]], rows["ours"]
    lines += ["", f"Params: the deployed eval graph (modules that run; as trained, every head: ours "
              f"{ours['params_all'] / 1e6:.2f} M, {result['peer']} {peer['params_trained'] / 1e6:.2f} M). MACs: "
              f"multiply-accumulates of every Conv2d / Linear that runs at {result['input_size']} px (ours "
              f"mobilenets.profile, the peer the same rule with hooks; Ultralytics' get_flops / 2, thop: "
              f"{peer['thop_macs'] / 1e6:.1f} M). Post-processing: ours {ours['postprocess']}; {result['peer']} "
              f"{peer['postprocess']}. Ultralytics' own val on the same test scenes: mAP@[.5:.95] "
              f"{peer['ultralytics_val']['map']:.3f}, mAP@.5 {peer['ultralytics_val']['map50']:.3f}. Network "
              f"attempts refused in the Ultralytics processes: {len(result['network_attempts'])}."]
    if "map_nms" in ours:
        nms_lat = ours["latency_ms_batch1_1thread_nms_head"]
        lines += ["", f"Ours, the same checkpoint through its one-to-many head with NMS (`mobilenets eval --nms`): "
                  f"mAP@[.5:.95] {ours['map_nms']:.3f}, mAP@.5 {ours['map50_nms']:.3f}; ONNX Runtime "
                  f"{nms_lat['network']['median_ms']:.2f} / {nms_lat['with_post']['median_ms']:.2f} ms."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", default="yolov8n", help="Ultralytics model, from <peer>.yaml (yolov8n, yolo26n, ...)")
    p.add_argument("--minutes", type=float, default=52.0, help="training budget of each side")
    p.add_argument("--scenes", type=int, default=30000, help="training scenes (the same for both)")
    p.add_argument("--scene-size", type=int, default=128, help="canvas = input size of both")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default="mobilenet_v3_small", help="our YOLO's backbone")
    p.add_argument("--ours-args", default="", help="extra flags for our 'mobilenets train' (e.g. \"--end-to-end\")")
    p.add_argument("--val-scenes", type=int, default=300, help="validation scenes (held-out items), both sides")
    p.add_argument("--test-scenes", type=int, default=1000, help="test scenes of the final measurement")
    p.add_argument("--peer-cache", default="ram", choices=("ram", "disk", "false"),
                   help="Ultralytics' image cache (ram: decoded once, as our training keeps rendered scenes)")
    p.add_argument("--latency-runs", type=int, default=200, help="timed runs per latency path and model")
    p.add_argument("--latency-rounds", type=int, default=2, help="alternating blocks (ours, peer) the runs split into")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the exported data set (default runs/ultralytics_scenes/...; reused when it holds the same "
                        "scenes)")
    p.add_argument("--peer-venv", type=Path, default=REPO / ".venv-ultralytics")
    p.add_argument("--ultralytics-version", default=ULTRALYTICS_VERSION)
    p.add_argument("--setup", action="store_true", help="only build the Ultralytics venv, then exit")
    p.add_argument("--skip-train", action="store_true", help="only measure the runs already in OUT")
    p.add_argument("--ours-from", type=Path, default=None,
                   help="OUT of an earlier run with the same data and budget: reuse its ours/ (linked) and train "
                        "only the peer, one thread, while the other core does other work")
    args = p.parse_args(join_flag_values(sys.argv[1:], "--ours-args"))

    python = ensure_peer_venv(args.peer_venv, args.ultralytics_version)
    if args.setup:
        return 0
    if args.out is None:
        p.error("--out is required (unless --setup)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    started = datetime.datetime.now(datetime.timezone.utc)

    splits = scene_splits(args)
    data_dir = args.data_dir or (REPO / "runs" / "ultralytics_scenes" / f"train{args.scenes}_val{args.val_scenes}_"
                                 f"test{args.test_scenes}_{args.scene_size}px_seed{args.seed}")
    data_yaml = export_yolo_dataset(splits, data_dir.resolve())
    peer_dir = (args.out / args.peer).resolve()
    peer_stats_file = peer_dir / "train_stats.json"
    peer_cfg = {"peer": args.peer, "data": str(data_yaml), "minutes": args.minutes, "imgsz": args.scene_size,
                "batch": args.batch_size, "seed": args.seed, "project": str(peer_dir),
                "cache": {"false": False}.get(args.peer_cache, args.peer_cache), "stats": str(peer_stats_file)}
    training = None
    if args.ours_from is not None:  # ours as trained in that run; only the peer trains here
        earlier = (args.ours_from / "ours").resolve()
        if not (earlier / "run" / "last.safetensors").is_file():
            p.error(f"--ours-from {args.ours_from}: no ours/run/last.safetensors there; give the OUT of a finished run")
        link = args.out / "ours"
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            p.error(f"{link} exists; --ours-from needs an OUT without its own ours/")
        link.symlink_to(earlier, target_is_directory=True)
    if not args.skip_train:
        print(f"training ours and {args.peer} side by side for {args.minutes:g} min (logs: {args.out}/ours/train.log, "
              f"{peer_dir}/train.log) ...", flush=True)
        training = train_side_by_side(args, python, peer_cfg)
        print(f"trained: wall minutes {training['wall_minutes']}", flush=True)

    # -- ours: eval, params/MACs, ONNX export
    run = args.out / "ours" / "run"
    ckpt = run / "last.safetensors"
    report = ours_eval(ckpt, args.test_scenes)
    model, meta = load_checkpoint(ckpt, task="detect")
    size = meta.preprocessing.input_size[-1]
    prof = mobilenets.profile(model, (3, size, size))
    counted = count_run(model, size)  # the same rule: its MACs equal the profile's
    onnx_path = args.out / "ours" / "last.onnx"
    onnx_path.unlink(missing_ok=True)
    done = subprocess.run(cli("export", str(ckpt), "--format", "onnx", "--out", str(onnx_path)), capture_output=True,
                          text=True, env={**os.environ, **ONE_THREAD})
    if done.returncode != 0:
        raise SystemExit(f"mobilenets export {ckpt} failed: {done.stderr.strip()}")
    ours_stats = ours_training_stats(run, args.batch_size)
    nms_onnx = None
    if getattr(model, "end_to_end", False):  # the same checkpoint read through its one-to-many head with NMS
        from mobilenets.deploy.export import export_model

        nms_report = ours_eval(ckpt, args.test_scenes, "--nms")
        ours_stats.update(map_nms=nms_report["map"], map50_nms=nms_report["map50"])
        nms_onnx = args.out / "ours" / "last_nms.onnx"
        nms_onnx.unlink(missing_ok=True)
        model.one_to_one = False
        export_model(model.eval(), meta, nms_onnx, "onnx")
        model.one_to_one = True
    ours_row = {"label": f"ours: YOLO, {args.backbone}" + (f" ({args.ours_args})" if args.ours_args else ""),
                "command": "mobilenets " + shlex.join(ours_train_command(args)), "checkpoint": str(ckpt),
                "map": report["map"], "map50": report["map50"], "per_class_ap": report["per_class_ap"],
                "test_scenes": report["images"], "objects": report["objects"], "params": counted["params"],
                "params_all": prof.params, "macs": prof.macs, "macs_hooks": counted["macs"],
                "macs_counted_by": "mobilenets.profile", **ours_stats}

    # -- the peer: predictions, its own val, params/MACs, ONNX export
    peer_stats = json.loads(peer_stats_file.read_text())
    measure_file = peer_dir / "measure.json"
    test_images = Path(data_yaml).parent / "images" / "test"
    peer_call(python, args.out, "measure", {**peer_cfg, "weights": peer_stats["last"], "out": str(measure_file),
                                            "predictions": str(peer_dir / "test_predictions.npz"),
                                            "test_images": str(test_images), "test_scenes": args.test_scenes,
                                            "conf": CONF, "iou": IOU, "max_det": MAX_DET},
              log=peer_dir / "measure.log")
    measured = json.loads(measure_file.read_text())
    scores = peer_scores(peer_dir / "test_predictions.npz", splits["test"])
    epochs = peer_stats["epochs"]
    images = sum(e["images"] for e in epochs)
    seconds = sum(e["seconds"] for e in epochs)
    peer_row = {"label": f"Ultralytics {args.peer} (from {args.peer}.yaml, no pretraining)",
                "checkpoint": peer_stats["last"], "train_kwargs": peer_stats["train_kwargs"],
                "map": scores["map"], "map50": scores["map50"], "per_class_ap": scores["per_class_ap"],
                "test_scenes": scores["images"], "objects": scores["objects"],
                "ultralytics_val": measured["ultralytics_val"], "params": measured["params"],
                "params_all": measured["params_all"], "params_trained": measured["params_trained"],
                "macs": measured["macs"], "thop_macs": measured["thop_macs"],
                "macs_counted_by": "hooks on Conv2d/Linear (mobilenets.profile's rule); thop_macs = get_flops/2",
                "end2end": measured["end2end"], "postprocess": measured["postprocess"],
                "epochs": len(epochs), "batches": sum(e["batches"] for e in epochs), "images": images,
                "accumulate_at_end": peer_stats["accumulate_at_end"], "train_seconds": round(seconds, 1),
                "train_img_s": round(images / seconds, 1) if seconds else None,
                "setup_seconds": round(peer_stats["setup_seconds"], 1),
                "threads_seen": peer_stats["threads_seen"],
                "val_history": [(e["epoch"], round(e["val_map"], 4) if e.get("val_map") is not None else None)
                                for e in epochs],
                "versions": measured["versions"]}

    # -- latency: alternating blocks, ours in this process, the peer in its venv
    scene = splits["test"].render(0)[0]
    first_png = test_images / "test_000000.png"
    per_round = max(1, args.latency_runs // args.latency_rounds)
    lat = {"ours": {"network": [], "with_post": []}, args.peer: {"network": [], "with_post": []},
           "ours_nms": {"network": [], "with_post": []}}
    attempts = list(peer_stats.get("network_attempts", [])) + list(measured.get("network_attempts", []))
    for _ in range(args.latency_rounds):
        got = ours_latency(onnx_path, scene, size, per_round, args.warmup)
        ours_row["nms_settings"], ours_row["detections_on_scene0"] = got["settings"], got["detections"]
        ours_row["postprocess"] = got["postprocess"]
        for key in ("network", "with_post"):
            lat["ours"][key] += got[key]
        if nms_onnx is not None:
            got = ours_latency(nms_onnx, scene, size, per_round, args.warmup)
            for key in ("network", "with_post"):
                lat["ours_nms"][key] += got[key]
        out = peer_dir / "latency.json"
        peer_call(python, args.out, "latency", {"onnx": measured["onnx"], "image": str(first_png), "conf": CONF,
                                                "iou": IOU, "max_det": MAX_DET, "end2end": measured["end2end"],
                                                "runs": per_round, "warmup": args.warmup, "out": str(out)},
                  log=peer_dir / "latency.log")
        got = json.loads(out.read_text())
        peer_row["detections_on_scene0"] = got["detections"]
        attempts += got["network_attempts"]
        for key in ("network", "with_post"):
            lat[args.peer][key] += got[key]
    ours_row["latency_ms_batch1_1thread"] = {k: summarise(v) for k, v in lat["ours"].items()}
    if nms_onnx is not None:
        ours_row["latency_ms_batch1_1thread_nms_head"] = {k: summarise(v) for k, v in lat["ours_nms"].items()}
    peer_row["latency_ms_batch1_1thread"] = {k: summarise(v) for k, v in lat[args.peer].items()}
    ours_row["onnx"], peer_row["onnx"] = str(onnx_path), measured["onnx"]
    for row in (ours_row, peer_row):
        row["img_s_per_gmac"] = round(row["train_img_s"] / (row["macs"] / 1e9), 1) if row["train_img_s"] else None

    result = {"benchmark": shlex.join([".venv/bin/python", "benchmarks/yolo_vs_ultralytics.py", *sys.argv[1:]]),
              "date": started.strftime("%Y-%m-%d %H:%M UTC"), "host": host(), "versions": versions(),
              "peer": args.peer, "minutes": args.minutes, "scenes": args.scenes, "val_scenes": args.val_scenes,
              "test_scenes": args.test_scenes, "input_size": size, "batch_size": args.batch_size,
              "data": str(data_yaml), "training": training, "network_attempts": attempts,
              "ours_from": str(args.ours_from) if args.ours_from else None,
              "latency": {"runtime": "onnxruntime, intra/inter-op threads 1, sequential, ORT_ENABLE_ALL",
                          "input": "test scene 0, batch 1", "runs": args.latency_runs,
                          "rounds": args.latency_rounds, "warmup": args.warmup, "conf": CONF, "iou": IOU,
                          "max_det": MAX_DET},
              "models": {"ours": ours_row, args.peer: peer_row}}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "results.md").write_text(table)
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=2))
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
