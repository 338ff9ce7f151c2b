"""What every format module and the exporter share besides the table: optional imports (one message naming the
extra), silencing a runtime's native stderr, and staged writes (a temporary folder beside the target, moved into
place only when finished, so a failed export or repository entry leaves nothing behind).

Imports nothing of the package but :mod:`mobilenets.errors`.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError

# The pyproject extra that installs each optional package.
EXTRA = {"onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "nncf": "openvino",
         "executorch": "executorch", "torchao": "executorch", "coremltools": "coreml",
         "ai_edge_litert": "litert", "litert_torch": "litert-convert", "ai_edge_quantizer": "litert-convert"}


# ------------------------------------------------------------------------------------------- optional packages
def importable(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it); ``torch`` always can."""
    if module == "torch":
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def _missing(module: str, extra: str | None, what: str | None) -> UserError:
    return UserError(f"{what or module} needs {module}, which is not installed; install the extra: "
                     f"pip install 'mobilenets[{extra or EXTRA[module.split('.')[0]]}]'")


def optional_import(module: str, extra: str | None = None, what: str | None = None):
    """``import module``, or a one-line :class:`UserError` saying that ``what`` needs it and naming
    ``pip install 'mobilenets[extra]'`` (``extra`` defaults to :data:`EXTRA`'s entry for the module)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise _missing(module, extra, what) from e


def require(module: str, extra: str | None = None, what: str | None = None) -> None:
    """The one-line :class:`UserError` of :func:`optional_import` when ``module`` is not installed, without
    importing it (a format's module imports it when it runs, quietly)."""
    if not importable(module):
        raise _missing(module, extra, what)


@contextlib.contextmanager
def failing_as(what: str, hint: str = ""):
    """Turn any exception a converter or runtime raises into one line: ``UserError("{what} (Type: first line);
    {hint}")``. Converters and runtimes raise many types; the model or file is what the user gave us."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{what} ({type(e).__name__}: {first})" + (f"; {hint}" if hint else "")) from e


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what a runtime's C++ side writes to file descriptor 2 (ExecuTorch's cpuinfo probing ARM-only
    files while XNNPACK starts, a line each; LiteRT's converter and quantizer); Python exceptions still carry
    the error."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# ------------------------------------------------------------------------------------------- staged writes
def check_writable(target: Path, option: str = "out") -> None:
    """Refuse (one line naming ``option``) a target whose nearest existing ancestor is a file or not writable."""
    existing = next((p for p in (target.parent, *target.parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"cannot write {target}: {existing} is a file, not a folder; choose another {option}")
    if existing is not None and not os.access(existing, os.W_OK):
        raise UserError(f"cannot write {target}: folder {existing} is not writable; choose another {option}")


@contextlib.contextmanager
def staged(out: Path, option: str = "out", parent: Path | None = None):
    """A temporary folder beside ``out`` (in ``parent``, default ``out.parent``: the same file system, so the
    final ``os.replace`` is atomic), removed afterwards whatever happens: a failed export leaves nothing behind."""
    parent = out.parent if parent is None else parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise UserError(f"cannot write into {parent}: {e.strerror}; choose another {option}") from e
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(written: Path, out: Path, companions: tuple[str, ...] = ()) -> None:
    """Move a finished file from the staging folder onto ``out``, with the files its format writes beside it
    (``companions``: suffixes, e.g. OpenVINO's .bin, ORT's operator config) first, so a reader never sees the
    model without them; on failure none is left half-moved. A folder (Core ML's .mlpackage) replaces an older
    folder of the same name."""
    moved = []
    try:
        for suffix in companions:
            os.replace(written.with_suffix(suffix), out.with_suffix(suffix))
            moved.append(out.with_suffix(suffix))
        if written.is_dir():
            replace_folder(written, out)
        else:
            os.replace(written, out)
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise


def replace_folder(folder: Path, out: Path, aside: Path | None = None) -> None:
    """``os.replace`` for a folder onto a possibly existing one: the old folder is moved aside (into ``aside``,
    default ``out``'s parent; on the same file system), then removed."""
    if not out.exists():
        os.replace(folder, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=aside or out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(folder, out)
    except BaseException:
        os.replace(old / out.name, out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
