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
    """The default passes, or those named in `passes` (names or Pass objects), minus `skip`."""
    known = {p.name: p for p in _all_passes()}
    wanted = list(known) if passes is None else [passes] if isinstance(passes, str) else list(passes)
    skip = [skip] if isinstance(skip, str) else list(skip)
    unknown = [name for name in wanted + skip if isinstance(name, str) and name not in known]
    if unknown:
        raise ValueError(f"unknown pass {', '.join(map(repr, unknown))}; known passes: {', '.join(known)}")
    chosen = [known[p] if isinstance(p, str) else p for p in wanted]
    return [p for p in chosen if p.name not in skip]


def _run(model: onnx.ModelProto, passes, fold_overridable, deny=frozenset(), copy=True):
    """Run the passes on `model` (on a copy of it, unless copy=False)."""
    result = model
    if copy:
        result = onnx.ModelProto()
        result.CopyFrom(model)
    report = Report()
    report.before = ModelStats.of(result)
    PassManager(passes, report, fold_overridable, deny).run(result)
    report.after = ModelStats.of(result)
    return result, report


def optimize_with_report(model, passes=None, skip=(), *, verify=False,
                         input_shapes: dict | None = None,
                         fold_overridable_initializers: bool = False) -> tuple[onnx.ModelProto, Report]:
    """Like `optimize`, and also return the Report of what was done.

    verify=True compares the result with the original in onnxruntime and raises
    VerificationError on a mismatch; verify="bisect" instead finds the rewrites that changed the
    outputs, takes back only those (report.undone) and returns the rest.
    """
    if verify not in (False, True, "bisect"):
        raise ValueError(f"verify is True, False or 'bisect', not {verify!r}")
    selected = select_passes(passes, skip)
    started = time.perf_counter()
    source = io.load(model)
    io.check_input(source, model if isinstance(model, (str, Path)) else "the model")
    if not verify:
        # the loaded model is ours to change: io.load copies a caller's ModelProto
        result, report = _run(source, selected, fold_overridable_initializers, copy=False)
        report.seconds = time.perf_counter() - started
        return result, report
    from .verify import VerificationError, compare

    result, report = _run(source, selected, fold_overridable_initializers)
    try:
        report.verification = compare(source, result, shapes=input_shapes)
    except VerificationError:
        if verify != "bisect":
            raise
        culprits = bisect(source, selected, fold_overridable_initializers, report.rewritten, input_shapes)
        result, report = _run(source, selected, fold_overridable_initializers, frozenset(culprits))
        report.undone = culprits
        report.verification = compare(source, result, shapes=input_shapes)
    report.seconds = time.perf_counter() - started
    return result, report


def bisect(source, passes, fold_overridable, rewrites, input_shapes):
    """The rewrites whose removal makes the result match the original, found one at a time by
    binary search over the order in which they were made."""
    from .verify import VerificationError, compare

    def matches(deny):
        result, _ = _run(source, passes, fold_overridable, frozenset(deny))
        try:
            compare(source, result, shapes=input_shapes)
        except VerificationError:
            return False
        return True

    culprits = []
    while not matches(culprits):
        enabled = [r for r in rewrites if r not in culprits]
        if not enabled:
            break
        low, high = 1, len(enabled)  # the shortest prefix of enabled rewrites that breaks the outputs
        while low < high:
            middle = (low + high) // 2
            if matches(culprits + enabled[middle:]):
                low = middle + 1
            else:
                high = middle
        culprits.append(enabled[low - 1])
    return culprits


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
