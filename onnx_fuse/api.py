"""The Python API: optimize a model given as a path, bytes, a ModelProto or an exporter's object."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from . import io
from .manager import PassManager
from .report import ModelStats, Report
from .verify import VerifyOptions


def _all_passes():
    from onnx_fuse.passes import DEFAULT_PASSES

    return DEFAULT_PASSES


def list_passes() -> list[tuple[str, str]]:
    """(name, one-line summary) of every pass, in the order they run."""
    return [(p.name, p.summary) for p in _all_passes()]


def _pass_names(names):
    """A list of pass names (or Pass objects) from a list, a name, or a comma-separated string."""
    if names is None:
        return None
    if isinstance(names, str):
        return [name.strip() for name in names.split(",") if name.strip()]
    return list(names)


def select_passes(passes=None, skip=()):
    """The default passes, or those named in `passes`, minus `skip`. Each is a list of names or
    Pass objects, or a comma-separated string of names ("conv_bn,gemm_bn")."""
    known = {p.name: p for p in _all_passes()}
    wanted = list(known) if passes is None else _pass_names(passes)
    skip = _pass_names(skip) or []
    unknown = [name for name in wanted + skip if isinstance(name, str) and name not in known]
    if unknown:
        raise ValueError(f"unknown pass {', '.join(map(repr, unknown))}; known passes: {', '.join(known)}")
    chosen = [known[p] if isinstance(p, str) else p for p in wanted]
    skipped = {p if isinstance(p, str) else p.name for p in skip}
    return [p for p in chosen if p.name not in skipped]


def check_input_shapes(model: onnx.ModelProto, shapes: dict | None) -> dict | None:
    """`shapes` (input name -> sizes) checked against the model's graph inputs: every name is an
    input (the name "" stands for the only input of a one-input model), every size is a whole
    number >= 1, the rank is the input's, and a size the model fixes is kept. Raises InputError."""
    if not shapes:
        return None
    initializers = {t.name for t in model.graph.initializer}
    inputs = {v.name: v for v in model.graph.input if v.name not in initializers}
    checked = {}
    for name, dims in shapes.items():
        if name == "" and len(inputs) == 1:
            name = next(iter(inputs))
        if name not in inputs:
            known = ", ".join(repr(n) for n in inputs) or "none"
            raise io.InputError(f"input shape for {name!r}: the model has no such input (its inputs: {known})")
        dims = list(dims)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
            raise io.InputError(f"input shape for {name!r}: {dims}: every size must be a whole number >= 1")
        tensor_type = inputs[name].type.tensor_type
        if tensor_type.HasField("shape"):
            declared = tensor_type.shape.dim
            if len(declared) != len(dims):
                raise io.InputError(f"input shape for {name!r}: {dims} has rank {len(dims)}, "
                                    f"the input has rank {len(declared)}")
            for axis, (dim, size) in enumerate(zip(declared, dims)):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    raise io.InputError(f"input shape for {name!r}: size {size} at axis {axis}, "
                                        f"but the model fixes it at {dim.dim_value}")
        checked[name] = dims
    return checked


def _is_graphsurgeon(obj) -> bool:
    """True for an onnx-graphsurgeon object, told by its type's module without importing gs (and
    without touching its attributes: a gs.Graph logs an error for an unknown one)."""
    return type(obj).__module__.split(".")[0] == "onnx_graphsurgeon"


def _from_graphsurgeon(graph) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    if not isinstance(graph, gs.Graph):
        raise io.InputError(f"cannot read a model from onnx_graphsurgeon's {type(graph).__name__}: give a gs.Graph")
    return gs.export_onnx(graph)


def _to_graphsurgeon(model: onnx.ModelProto):
    import onnx_graphsurgeon as gs

    return gs.import_onnx(model)


def record_input_shapes(model: onnx.ModelProto, shapes: dict):
    """Write the given sizes into the model's inputs: merges made for them hold only at them."""
    for vi in model.graph.input:
        if vi.name in shapes:
            del vi.type.tensor_type.shape.dim[:]
            for n in shapes[vi.name]:
                vi.type.tensor_type.shape.dim.add().dim_value = n


@dataclass
class _Job:
    """One model to optimize: the passes, the options, and where its external data lies."""

    source: onnx.ModelProto
    passes: list
    fold_overridable: bool = False
    # checked by check_input_shapes: input name -> sizes. Verification feeds inputs of these
    # sizes; the passes do not see them yet (the hook for them is in run())
    input_shapes: dict | None = None
    external: io.ExternalData | None = None
    progress: object = None  # called with a status line as the work goes on
    verify: VerifyOptions | None = None

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
                    self.progress, self.input_shapes).run(result)
        if self.input_shapes:
            record_input_shapes(result, self.input_shapes)
        report.after = ModelStats.of(result)
        return result, report

    def compare(self, result) -> dict:
        from .verify import compare

        folder = self.external.source_folder if self.external is not None else None
        if self.progress is not None:
            self.progress("verifying in onnxruntime")
        return compare(self.source, result, shapes=self.input_shapes, external_folder=folder,
                       options=self.verify)

    def matches(self, deny) -> bool:
        from .verify import VerificationError

        try:
            self.compare(self.run(frozenset(deny))[0])
        except VerificationError:
            return False
        return True

    def optimize(self) -> tuple[onnx.ModelProto, Report]:
        started = time.perf_counter()
        if self.verify is None:
            # the loaded model is ours to change: io.load copies a caller's ModelProto
            result, report = self.run(copy=False)
        else:
            from .verify import VerificationError

            result, report = self.run(record=self.verify.bisect)
            try:
                report.verification = self.compare(result)
            except VerificationError as error:
                if not self.verify.bisect:
                    report.verification = error.result
                    report.seconds = time.perf_counter() - started
                    error.report = report
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
                         fold_overridable_initializers: bool = False):
    """Like `optimize` (fold normalizations and affines, merge parallel linear branches into one
    Conv), and also return the Report of what was done: `(model, report)`. The arguments are
    those of `optimize`.

    report.summary() is the table the command prints, report.to_dict() the numbers, and
    report.verification the verdict of `verify` (verdict, max abs / rel error, rtol, atol, the
    precision the model computes in). With verify="bisect" (or VerifyOptions(bisect=True)),
    report.undone lists the rewrites that were taken back.
    """
    options = VerifyOptions.of(verify)
    selected = select_passes(passes, skip)
    from_gs = _is_graphsurgeon(model)
    source = _from_graphsurgeon(model) if from_gs else io.load(model)
    io.check_input(source, str(model) if isinstance(model, (str, Path)) else "the model")
    shapes = check_input_shapes(source, input_shapes)
    result, report = _Job(source, selected, fold_overridable_initializers, shapes, verify=options).optimize()
    return (_to_graphsurgeon(result) if from_gs else result), report


def optimize(model, passes=None, skip=(), *, verify=False, input_shapes: dict | None = None,
             fold_overridable_initializers: bool = False):
    """Rewrite a model into its fastest exact form and return the result.

    Folds every BatchNormalization and per-channel Mul/Add/Sub/Div into the Conv, ConvTranspose,
    Gemm or MatMul beside it, and merges parallel linear branches of one input (RepVGG, ACNet,
    DBB, MobileOne, ... : 3x3 + 1x1 + identity and the like) into a single Conv. A rewrite is
    made only when the result computes the same function.

    model       a path, serialized bytes, a ModelProto (left unmodified), any object with a
                `.model_proto` (the ONNXProgram of `torch.onnx.export(..., dynamo=True)`), or an
                onnx-graphsurgeon `gs.Graph`. Returns a new ModelProto, or a new gs.Graph for one.
    passes      the passes to run, in order: names, or one string "conv_bn,gemm_bn" (default: all,
                see `list_passes()`)
    skip        passes to leave out, the same way ("bn_conv" or ["bn_conv"] or "a,b")
    verify      False; True: run both models in onnxruntime and raise VerificationError on a
                mismatch; "bisect": instead undo only the rewrites that changed the outputs;
                or a VerifyOptions(seed=, rtol=, atol=, trials=, inputs=, int_ranges=, bisect=)
    input_shapes  input name -> sizes ({"x": [1, 3, 224, 224]}): written into the result's
                inputs, used by the merges that are exact only at a size and by verification.
                An unknown name, a wrong rank or a size < 1 raises InputError.
    fold_overridable_initializers  treat initializers that are also graph inputs as constants
    """
    return optimize_with_report(model, passes, skip, verify=verify, input_shapes=input_shapes,
                                fold_overridable_initializers=fold_overridable_initializers)[0]


def optimize_file(src, dst, passes=None, skip=(), *, inplace: bool = False, verify=False,
                  input_shapes: dict | None = None, fold_overridable_initializers: bool = False,
                  external_data: str | None = None, external_threshold: int = 1024, progress=None,
                  guard: io.WriteGuard | None = None) -> Report:
    """Optimize the model at `src` (fold normalizations, merge parallel linear branches, as
    `optimize` does) and write it atomically to `dst`. Returns the Report.

    passes, skip, verify, input_shapes and fold_overridable_initializers are those of
    `optimize`; `inplace=True` allows dst to be src. On a verification mismatch nothing is written.
    External data stays in its files while the passes run: only the weights a rewrite touches
    are read, and new large weights go straight to the output's data file (`external_data`,
    default dst's name + ".data"), written beside `dst` when the input had external data, the
    result exceeds 2 GB, or `external_data` is given (tensors of at least `external_threshold`
    bytes go there). `progress`, if given, is called with a one-line status (reading, rewrites
    per pass, verifying, writing) as the work goes on.

    Nothing the run reads is ever written: an output (or its data file) that is the input model
    or one of its data files raises InputError (unless `inplace`). `guard`, shared by the
    models of one run, also refuses two outputs of the run in one place.
    """
    options = VerifyOptions.of(verify)
    progress = progress or (lambda _text: None)
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() and not inplace:
        raise io.InputError(f"{dst}: the output is the input; pass inplace=True (--inplace) to overwrite it")
    selected = select_passes(passes, skip)
    progress("reading")
    source = io.load_path(src, lazy=True)
    io.check_input(source, str(src), src.absolute().parent)
    shapes = check_input_shapes(source, input_shapes)
    guard = guard if guard is not None else io.WriteGuard()
    guard.add_model(src, source)
    guard.add_inputs_files(options.input_files() if options is not None else ())
    owner, replaceable = str(src), io.model_files(src, source) if inplace else ()
    guard.claim(dst, f"the output of {src}", owner, replaceable)
    external = io.ExternalData(src.absolute())
    data_name = io.output_data_name(source, dst, external_data, external)
    if data_name is not None:
        guard.claim(dst.parent / data_name, f"the external data of the output of {src}", owner, replaceable)
    with io.staged(dst) as stage:
        if options is None:  # verification reads the new tensors from memory
            # new large weights go straight to the output's data file, or are held until written
            external.scratch = stage / data_name if data_name is not None else None
            external.hold = data_name is None
        job = _Job(source, selected, fold_overridable_initializers, shapes, external, progress, options)
        model, report = job.optimize()
        if data_name is None and io.needs_external_data(model, external):  # the folds made it exceed 2 GB
            data_name = io.output_data_name(model, dst, None, external)
            guard.claim(dst.parent / data_name, f"the external data of the output of {src}", owner, replaceable)
        progress("writing")
        io.write_model(model, stage / dst.name, external=external, data_name=data_name,
                       threshold=external_threshold)
    return report
