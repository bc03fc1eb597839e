"""The Python API: optimize a model given as a path, bytes, a ModelProto or an exporter's object."""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from . import io
from .manager import PassManager
from .report import ModelStats, Report


def _all_passes():
    from onnx_fuse.passes import DEFAULT_PASSES

    return DEFAULT_PASSES


def list_passes() -> list[tuple[str, str]]:
    """(name, one-line summary) of every pass, in the order they run."""
    return [(p.name, p.summary) for p in _all_passes()]


def select_passes(passes=None, skip=()):
    """The default passes, or those named in `passes`, minus those named in `skip`."""
    known = {p.name: p for p in _all_passes()}
    wanted = list(known) if passes is None else [passes] if isinstance(passes, str) else list(passes)
    skip = [skip] if isinstance(skip, str) else list(skip)
    unknown = [name for name in wanted + skip if name not in known]
    if unknown:
        raise ValueError(f"unknown pass {', '.join(map(repr, unknown))}; known passes: {', '.join(known)}")
    return [known[name] for name in wanted if name not in skip]


def optimize_with_report(model, passes=None, skip=(), *, verify: bool = False,
                         input_shapes: dict | None = None,
                         fold_overridable_initializers: bool = False) -> tuple[onnx.ModelProto, Report]:
    """Like `optimize`, and also return the Report of what was done."""
    selected = select_passes(passes, skip)
    started = time.perf_counter()
    result = io.load(model)
    io.check_input(result, model if isinstance(model, (str, Path)) else "the model")
    original = None
    if verify:
        original = onnx.ModelProto()
        original.CopyFrom(result)
    report = Report()
    report.before = ModelStats.of(result)
    PassManager(selected, report, fold_overridable_initializers).run(result)
    report.after = ModelStats.of(result)
    if verify:
        from .verify import compare

        report.verification = compare(original, result, shapes=input_shapes)
    report.seconds = time.perf_counter() - started
    return result, report


def optimize(model, passes=None, skip=(), **options) -> onnx.ModelProto:
    """Fold normalizations and affine ops into the linear operators around them.

    `model` is a path, serialized bytes, a ModelProto (left unmodified) or any object with a
    `.model_proto` (what `torch.onnx.export(..., dynamo=True)` returns). `passes` names the
    passes to run (default: all, see `list_passes()`), `skip` those to leave out. Returns a new
    ModelProto. With `verify=True`, both models are run in onnxruntime and a mismatch raises
    `VerificationError`.
    """
    return optimize_with_report(model, passes, skip, **options)[0]


def optimize_file(src, dst, passes=None, skip=(), **options) -> Report:
    """Optimize the model at `src` and write it atomically to `dst`. Returns the Report."""
    if Path(dst).resolve() == Path(src).resolve() and not options.pop("inplace", False):
        raise io.InputError(f"{dst}: the output is the input; pass inplace=True to overwrite it")
    options.pop("inplace", None)
    model, report = optimize_with_report(Path(src), passes, skip, **options)
    io.save(model, dst)
    return report
