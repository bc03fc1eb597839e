"""The Python API: optimize a model given as a path, bytes, a ModelProto or an exporter's object."""

from __future__ import annotations

import time
from dataclasses import dataclass
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


@dataclass
class _Job:
    """One model to optimize: the passes, the options, and where its external data lies."""

    source: onnx.ModelProto
    passes: list
    fold_overridable: bool = False
    input_shapes: dict | None = None
    external: io.ExternalData | None = None
    progress: object = None  # called with a status line as the work goes on

    def run(self, deny=frozenset(), copy=True, record=False):
        """Run the passes on the source (on a copy of it, unless copy=False); with `record`, the
        report lists every rewrite made."""
        result = self.source
        if copy:
            result = onnx.ModelProto()
            result.CopyFrom(self.source)
        report = Report()
        report.before = ModelStats.of(result)
        PassManager(self.passes, report, self.fold_overridable, deny, self.external, record,
                    self.progress).run(result)
        report.after = ModelStats.of(result)
        return result, report

    def compare(self, result) -> dict:
        from .verify import compare

        folder = self.external.source_folder if self.external is not None else None
        if self.progress is not None:
            self.progress("verifying in onnxruntime")
        return compare(self.source, result, shapes=self.input_shapes, external_folder=folder)

    def matches(self, deny) -> bool:
        from .verify import VerificationError

        try:
            self.compare(self.run(frozenset(deny))[0])
        except VerificationError:
            return False
        return True

    def optimize(self, verify) -> tuple[onnx.ModelProto, Report]:
        if verify not in (False, True, "bisect"):
            raise ValueError(f"verify is True, False or 'bisect', not {verify!r}")
        started = time.perf_counter()
        if not verify:
            # the loaded model is ours to change: io.load copies a caller's ModelProto
            result, report = self.run(copy=False)
        else:
            from .verify import VerificationError

            result, report = self.run(record=verify == "bisect")
            try:
                report.verification = self.compare(result)
            except VerificationError:
                if verify != "bisect":
                    raise
                culprits = self.bisect(report.rewritten)
                result, report = self.run(frozenset(culprits), record=True)
                report.undone = culprits
                report.verification = self.compare(result)
        report.seconds = time.perf_counter() - started
        return result, report

    def bisect(self, rewrites) -> list:
        """The rewrites whose removal makes the result match the original, found one at a time
        by binary search over the order in which they were made."""
        culprits = []
        while not self.matches(culprits):
            enabled = [r for r in rewrites if r not in culprits]
            if not enabled:
                break
            low, high = 1, len(enabled)  # the shortest prefix of enabled rewrites that breaks the outputs
            while low < high:
                middle = (low + high) // 2
                if self.matches(culprits + enabled[middle:]):
                    low = middle + 1
                else:
                    high = middle
            culprits.append(enabled[low - 1])
        return culprits


def optimize_with_report(model, passes=None, skip=(), *, verify=False, input_shapes: dict | None = None,
                         fold_overridable_initializers: bool = False) -> tuple[onnx.ModelProto, Report]:
    """Like `optimize`, and also return the Report of what was done.

    verify=True compares the result with the original in onnxruntime and raises
    VerificationError on a mismatch; verify="bisect" instead finds the rewrites that changed the
    outputs, takes back only those (report.undone) and returns the rest.
    """
    selected = select_passes(passes, skip)
    source = io.load(model)
    io.check_input(source, str(model) if isinstance(model, (str, Path)) else "the model")
    return _Job(source, selected, fold_overridable_initializers, input_shapes).optimize(verify)


def optimize(model, passes=None, skip=(), **options) -> onnx.ModelProto:
    """Fold normalizations and affine ops into the linear operators around them.

    `model` is a path, serialized bytes, a ModelProto (left unmodified) or any object with a
    `.model_proto` (what `torch.onnx.export(..., dynamo=True)` returns). `passes` names the
    passes to run (default: all, see `list_passes()`), `skip` those to leave out. Returns a new
    ModelProto. With `verify=True`, both models are run in onnxruntime and a mismatch raises
    `VerificationError`.
    """
    return optimize_with_report(model, passes, skip, **options)[0]


def optimize_file(src, dst, passes=None, skip=(), *, inplace: bool = False, verify=False,
                  input_shapes: dict | None = None, fold_overridable_initializers: bool = False,
                  external_data: str | None = None, external_threshold: int = 1024, progress=None,
                  guard: io.WriteGuard | None = None) -> Report:
    """Optimize the model at `src` and write it atomically to `dst`. Returns the Report.

    External data stays in its files while the passes run: only the weights a rewrite touches
    are read, and new large weights go straight to the output's data file (`external_data`,
    default dst's name + ".data"), written beside `dst` when the input had external data, the
    result exceeds 2 GB, or `external_data` is given. `progress`, if given, is called with a
    one-line status (reading, rewrites per pass, verifying, writing) as the work goes on.

    Nothing the run reads is ever written: an output (or its data file) that is the input model
    or one of its data files raises InputError (unless `inplace`). `guard`, shared by the
    models of one run, also refuses two outputs of the run in one place.
    """
    progress = progress or (lambda _text: None)
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() and not inplace:
        raise io.InputError(f"{dst}: the output is the input; pass inplace=True (--inplace) to overwrite it")
    selected = select_passes(passes, skip)
    progress("reading")
    source = io.load_path(src, lazy=True)
    io.check_input(source, str(src), src.absolute().parent)
    guard = guard if guard is not None else io.WriteGuard()
    guard.add_model(src, source)
    owner, replaceable = str(src), io.model_files(src, source) if inplace else ()
    guard.claim(dst, f"the output of {src}", owner, replaceable)
    external = io.ExternalData(src.absolute())
    data_name = io.output_data_name(source, dst, external_data, external)
    if data_name is not None:
        guard.claim(dst.parent / data_name, f"the external data of the output of {src}", owner, replaceable)
    with io.staged(dst) as stage:
        if not verify:  # verification reads the new tensors from memory
            # new large weights go straight to the output's data file, or are held until written
            external.scratch = stage / data_name if data_name is not None else None
            external.hold = data_name is None
        job = _Job(source, selected, fold_overridable_initializers, input_shapes, external, progress)
        model, report = job.optimize(verify)
        if data_name is None and io.needs_external_data(model, external):  # the folds made it exceed 2 GB
            data_name = io.output_data_name(model, dst, None, external)
            guard.claim(dst.parent / data_name, f"the external data of the output of {src}", owner, replaceable)
        progress("writing")
        io.write_model(model, stage / dst.name, external=external, data_name=data_name,
                       threshold=external_threshold)
    return report
