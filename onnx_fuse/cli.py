"""The `onnx-fuse` command (also `python -m onnx_fuse`)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from . import __version__, io
from .api import list_passes, optimize_file
from .io import InputError
from .progress import Progress
from .verify import CannotVerify, VerificationError

EXIT_OK, EXIT_USAGE, EXIT_VERIFY, EXIT_INTERNAL = 0, 2, 3, 4
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); SIGTERM exits with 128 + 15 = 143

DESCRIPTION = """\
Rewrite an ONNX model into its fastest exact form: fold every BatchNormalization and
per-channel Mul/Add/Sub/Div into the Conv, ConvTranspose, Gemm or MatMul beside it.
A rewrite is made only when the result computes the same function; everything else,
including unknown ops and custom domains, passes through untouched.
"""

EPILOG = """\
examples:
  onnx-fuse model.onnx -o model.fused.onnx          fold everything that folds exactly
  onnx-fuse model.onnx -o out.onnx --verify         also compare both in onnxruntime
  onnx-fuse model.onnx -o out.onnx --verify=bisect  and undo any rewrite that changed the outputs
  onnx-fuse models/*.onnx -o fused/                 several models into a folder
  onnx-fuse model.onnx -o out.onnx -v               list every refused match and why
  onnx-fuse --list-passes                           what each pass does

exit codes: 0 done, 2 bad usage or unusable input (or a write that would overwrite an
input or another output of the run), 3 verification found a mismatch, 4 internal error
(please report it with the model, if you can share it), 130 interrupted (143 on SIGTERM).
"""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="onnx-fuse", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="IN", help=".onnx files, or folders of them")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="output file (one input) or folder (several inputs, or a folder)")
    parser.add_argument("--inplace", action="store_true", help="allow OUT to be the input file itself")
    parser.add_argument("--passes", metavar="A,B", help="run only these passes (see --list-passes)")
    parser.add_argument("--skip", metavar="A,B", default="", help="run all passes but these")
    parser.add_argument("--list-passes", action="store_true", help="list the passes and exit")
    parser.add_argument("--verify", nargs="?", const="check", choices=["check", "bisect"],
                        help="run original and result in onnxruntime on random inputs; on a mismatch write "
                             "nothing (--verify) or find the rewrites responsible, undo only those and write "
                             "the rest (--verify=bisect)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:1,3,224,224",
                        help="shape of an input with dynamic dimensions, for --verify (repeatable)")
    parser.add_argument("--fold-overridable-initializers", action="store_true",
                        help="treat initializers that are also graph inputs as constants")
    parser.add_argument("--external-data", metavar="NAME",
                        help="write tensors to the file NAME beside the output (default when the input has "
                             "external data or the result exceeds 2 GB: OUT's name + .data)")
    parser.add_argument("--external-data-threshold", metavar="BYTES", type=int, default=1024,
                        help="with external data, tensors of at least this many bytes go to the data file "
                             "(default 1024)")
    parser.add_argument("--report", metavar="FILE.json", help="write the full report as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="list refused matches with reasons")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--version", action="version", version=f"onnx-fuse {__version__}")
    return parser, parser.parse_args(argv)


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()] if text else []


def _shapes(items):
    shapes = {}
    for item in items:
        name, _, dims = item.rpartition(":")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise InputError(f"--input-shape {item!r}: expected NAME:D1,D2,... with whole numbers") from None
        if any(d < 0 for d in shapes[name]):
            raise InputError(f"--input-shape {item!r}: a size cannot be negative")
    return shapes


def _jobs(inputs, output, parser):
    """(source, destination) pairs; several inputs or a folder write into the folder OUT."""
    sources = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(item.glob("*.onnx"))
            if not found:
                raise InputError(f"{item}: the folder holds no .onnx files")
            sources += found
        else:
            sources.append(item)
    if output is None:
        parser.error("give the output with -o OUT (nothing is overwritten unless you say --inplace)")
    out = Path(output)
    if len(sources) == 1 and not Path(inputs[0]).is_dir() and not (out.is_dir() or output.endswith(("/", "\\"))):
        return sources, [out], False
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: several inputs need an output folder, and this is a file")
    if not out.parent.is_dir():
        raise InputError(f"{out}: its parent folder does not exist")
    try:
        out.mkdir(exist_ok=True)
    except OSError as error:
        raise InputError(f"{out}: cannot create the output folder ({error.strerror})") from None
    io.check_writable(out)
    return sources, [out / source.name for source in sources], True


def _guard(sources, destinations, many, args) -> io.WriteGuard:
    """Every file the run will read and write, claimed before anything is written: an output over
    an input of the run, two outputs in one place, or a report over either is refused up front."""
    guard = io.WriteGuard()
    replaceable = {}
    for source in sources:
        guard.add_input(source, f"the input model {source}", str(source))
        replaceable[source] = [source]
        if many:  # their external data files, which the other models' outputs must not replace
            try:
                model = io.load_path(source, lazy=True)
            except InputError:
                continue  # its own job says what is wrong with it
            guard.add_model(source, model)
            replaceable[source] = io.model_files(source, model)
    for source, destination in zip(sources, destinations):
        mine = replaceable[source] if args.inplace else ()
        guard.claim(destination, f"the output of {source}", str(source), mine)
        # where its data file would go (another output or input must not be there, even if unused)
        data_name = args.external_data or f"{destination.name}.data"
        guard.claim(destination.parent / data_name, f"the external data of the output of {source}", str(source), mine)
    if args.report:
        report = Path(args.report)
        if not (report.parent if str(report.parent) else Path(".")).is_dir():
            raise InputError(f"--report {report}: the folder {report.parent} does not exist")
        if report.is_dir():
            raise InputError(f"--report {report}: is a directory; give a file name")
        guard.claim(report, "the report", "report")
    return guard


def _print_refusals(report):
    for r in report.refused:
        print(f"  refused {r.pass_name} at {r.node} ({r.where}): {r.reason}")


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that staged files are removed on the way out."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\nonnx-fuse: interrupted; no partial output was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("onnx-fuse: terminated; no partial output was left", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv=None) -> int:
    parser, args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="onnx-fuse: %(message)s",
                        level=logging.DEBUG if args.verbose else logging.WARNING)
    if args.list_passes:
        for name, summary in list_passes():
            print(f"{name:14} {summary}")
        return EXIT_OK
    if not args.inputs:
        parser.error("give at least one input model (or --list-passes)")
    try:
        sources, destinations, many = _jobs(args.inputs, args.output, parser)
        options = dict(passes=_names(args.passes) if args.passes else None, skip=_names(args.skip),
                       verify={None: False, "check": True, "bisect": "bisect"}[args.verify],
                       input_shapes=_shapes(args.input_shape),
                       fold_overridable_initializers=args.fold_overridable_initializers,
                       inplace=args.inplace, external_data=args.external_data,
                       external_threshold=args.external_data_threshold)
        from .api import select_passes

        select_passes(options["passes"], options["skip"])
        guard = _guard(sources, destinations, many, args)
    except (InputError, ValueError) as error:
        print(f"onnx-fuse: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    worst = EXIT_OK
    reports = {}
    for source, destination in zip(sources, destinations):
        code, report = _one(source, destination, dict(options, guard=guard), args)
        worst = max(worst, code)
        if report is not None:
            reports[str(source)] = report.to_dict()
    if many and not args.quiet:
        failed = sum(1 for s in sources if str(s) not in reports)
        print(f"onnx-fuse: {len(sources) - failed} of {len(sources)} models written to {args.output}")
    if args.report and reports:  # nothing to report when no model was written
        data = next(iter(reports.values())) if not many and reports else reports
        try:
            guard.claim(Path(args.report), "the report", "report")  # again: the run has read more files since
            io.write_bytes(args.report, (json.dumps(data, indent=2) + "\n").encode())
        except InputError as error:
            print(f"onnx-fuse: error: --report: {error}", file=sys.stderr)
            return max(worst, EXIT_USAGE)
    return worst


def _one(source: Path, destination: Path, options: dict, args):
    status = None
    if not (args.quiet or args.verbose) and sys.stderr.isatty():  # a status line on a terminal, for long runs
        status = Progress(sys.stderr, prefix=f"onnx-fuse: {source.name}: ")
        options["progress"] = status
    try:
        try:
            report = optimize_file(source, destination, **options)
        finally:  # clear the status line before anything else is printed
            if status is not None:
                status.done()
    except CannotVerify as error:
        print(f"onnx-fuse: error: {source}: {error}", file=sys.stderr)
        return EXIT_USAGE, None
    except InputError as error:
        print(f"onnx-fuse: error: {error}", file=sys.stderr)
        return EXIT_USAGE, None
    except VerificationError as error:
        print(f"onnx-fuse: error: {source}: verification failed, nothing written: {error}", file=sys.stderr)
        return EXIT_VERIFY, None
    except Exception as error:  # a bug in onnx-fuse: say so in one line, traceback with -v
        if args.verbose:
            raise
        print(f"onnx-fuse: internal error on {source}: {type(error).__name__}: {error} (run with -v for details)",
              file=sys.stderr)
        return EXIT_INTERNAL, None
    if not args.quiet:
        print(f"onnx-fuse: {source} -> {destination}")
        print(report.summary())
        if args.verbose:
            _print_refusals(report)
    for pass_name, where, node in report.undone:
        print(f"onnx-fuse: warning: {source}: undid {pass_name} at {node} ({where}): it changed the outputs",
              file=sys.stderr)
    return EXIT_OK, report
