"""The `onnx-fuse` command (also `python -m onnx_fuse`). Only the standard library is imported
before the arguments are parsed, so `--version` and `--help` answer at once."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import __version__

EXIT_OK, EXIT_USAGE, EXIT_VERIFY, EXIT_INTERNAL = 0, 2, 3, 4
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); SIGTERM exits with 128 + 15 = 143

DESCRIPTION = """\
Rewrite an ONNX model into its fastest exact form: fold every BatchNormalization and
per-channel Mul/Add/Sub/Div into the Conv, ConvTranspose, Gemm or MatMul beside it, and merge
parallel linear branches of one input (RepVGG, ACNet, DBB, MobileOne ...) into one Conv.
A rewrite is made only when the result computes the same function; everything else,
including unknown ops and custom domains, passes through untouched.
"""

EPILOG = """\
examples:
  onnx-fuse model.onnx model.fused.onnx             fold everything that folds exactly (as onnxsim is called)
  onnx-fuse model.onnx -o model.fused.onnx          the same
  onnx-fuse --verify model.onnx out.onnx            also compare both in onnxruntime; on a mismatch write nothing
  onnx-fuse model.onnx out.onnx --verify --load-inputs x.npz --rtol 1e-3 --atol 1e-4
                                                    compare on real inputs with your tolerance
  onnx-fuse model.onnx out.onnx --verify=bisect     undo only the rewrites that changed the outputs
  onnx-fuse models/*.onnx -o fused/                 several models into a folder, with a table
  onnx-fuse model.onnx out.onnx -v                  list every refused match and why
  onnx-fuse --list-passes                           what each pass does

exit codes: 0 done, 2 bad usage or unusable input (or a write that would overwrite an
input or another output of the run), 3 verification found a mismatch, 4 internal error
(please report it with the model, if you can share it), 130 interrupted (143 on SIGTERM).
"""

VERIFY_VALUES = {"check": "--verify", "bisect": "--bisect"}


def _expand_verify(argv: list) -> list:
    """`--verify=bisect` (and `--verify=check`) as the flags they stand for. `--verify` itself
    takes no value, so it never swallows the input that follows it."""
    expanded = []
    for index, token in enumerate(argv):
        if token == "--":
            return expanded + argv[index:]
        if token.startswith("--verify="):
            value = token.partition("=")[2]
            if value not in VERIFY_VALUES:
                expanded.append(token)  # argparse says it takes no value
                continue
            expanded += ["--verify"] if value == "check" else ["--verify", "--bisect"]
            continue
        expanded.append(token)
    return expanded


def _build_parser():
    parser = argparse.ArgumentParser(prog="onnx-fuse", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="IN",
                        help=".onnx files or folders of them; without -o, `IN OUT` (one input, one output)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list refused matches with reasons")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    run = parser.add_argument_group("what to run")
    run.add_argument("--passes", metavar="A,B", help="run only these passes (see --list-passes)")
    run.add_argument("--skip", metavar="A,B", default="", help="run all passes but these")
    run.add_argument("--list-passes", action="store_true", help="list the passes and exit")
    run.add_argument("--input-shape", action="append", default=[], metavar="NAME:1,3,224,224",
                     help="the sizes of an input (repeatable; NAME may be left out for a one-input model): "
                          "fixed in the output, used by --verify and by merges that are exact only at a size")
    run.add_argument("--fold-overridable-initializers", action="store_true",
                     help="treat initializers that are also graph inputs as constants")
    check = parser.add_argument_group(
        "verification", "compare the original and the result in onnxruntime (its optimizations off); any of "
        "these options implies --verify")
    check.add_argument("--verify", action="store_true",
                       help="on a mismatch write nothing and exit 3")
    check.add_argument("--bisect", action="store_true",
                       help="on a mismatch, find the rewrites responsible, undo only those and write the rest "
                            "(also spelled --verify=bisect)")
    check.add_argument("--seed", type=int, metavar="N", help="seed of the random inputs (default 0)")
    check.add_argument("--rtol", type=_tolerance, metavar="R",
                       help="relative tolerance (default: by the precision the model computes in: "
                            "1e-4 float32, 1e-2 float16, 5e-2 bfloat16)")
    check.add_argument("--atol", type=_tolerance, metavar="A",
                       help="absolute tolerance: |result - original| <= atol + rtol*|original| (default: "
                            "1e-5 float32, 1e-2 float16, 5e-2 bfloat16, times each output's largest value)")
    check.add_argument("--trials", type=_at_least(1), metavar="N",
                       help="random input sets to run (default 1, or one per value an integer input is "
                            "compared with, up to 8)")
    check.add_argument("--load-inputs", action="append", default=[], metavar="FILE",
                       help="real inputs instead of random ones: .npz with one array per input name (or "
                            "in0, in1, ...), or .npy for a one-input model; repeat for more trials")
    check.add_argument("--int-range", action="append", default=[], metavar="[NAME:]LO,HI",
                       help="integer inputs take values LO..HI inclusive (default: the constants the model "
                            "compares them with, else 0..3); without NAME, every integer input")
    out = parser.add_argument_group("output", "nothing the run reads, and no other output of it, is ever written over")
    out.add_argument("-o", "--output", metavar="OUT",
                     help="output file (one input) or folder (several inputs, or a folder)")
    out.add_argument("--inplace", action="store_true", help="allow OUT to be the input file itself")
    out.add_argument("--report", metavar="FILE.json", help="write the report as JSON (schema 1: see the README)")
    out.add_argument("--external-data", metavar="NAME",
                     help="write tensors to the file NAME beside the output (default when the input has "
                          "external data or the result exceeds 2 GB: OUT's name + .data)")
    out.add_argument("--external-data-threshold", metavar="BYTES", type=_at_least(0), default=1024,
                     help="with external data, tensors of at least this many bytes go to the data file "
                          "(default 1024)")
    parser.add_argument("--version", action="version", version=f"onnx-fuse {__version__}")
    return parser


def _tolerance(text):
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


def _at_least(low):
    def whole(text):
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= {low}")
        return value
    whole.__name__ = "whole number"  # what argparse calls it when int() fails
    return whole


def parse_args(argv):
    parser = _build_parser()
    return parser, parser.parse_intermixed_args(_expand_verify(list(argv)))


class UsageError(Exception):
    """A command line that cannot be run: exit 2 with this one line."""


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()] if text else []


def _shapes(items) -> dict:
    """--input-shape NAME:D1,D2,... (NAME "" when left out)."""
    shapes = {}
    for item in items:
        name, _, dims = item.rpartition(":")
        try:
            sizes = [int(d) for d in dims.split(",")]
        except ValueError:
            raise UsageError(f"--input-shape {item!r}: expected NAME:D1,D2,... with whole numbers") from None
        if any(size < 1 for size in sizes):
            raise UsageError(f"--input-shape {item!r}: every size must be at least 1")
        shapes[name] = sizes
    return shapes


def _int_ranges(items) -> dict:
    """--int-range [NAME:]LO,HI -> {name: (lo, hi)}; name "" for every integer input."""
    ranges = {}
    for item in items:
        name, _, span = item.rpartition(":")
        try:
            low, high = (int(v) for v in span.split(","))
        except ValueError:
            raise UsageError(f"--int-range {item!r}: expected [NAME:]LO,HI with whole numbers") from None
        if low > high:
            raise UsageError(f"--int-range {item!r}: {low} is greater than {high}")
        ranges[name] = (low, high)
    return ranges


def _verify_options(args):
    """The VerifyOptions the verification flags ask for, or None without any of them."""
    wanted = (args.verify or args.bisect or args.seed is not None or args.rtol is not None
              or args.atol is not None or args.trials is not None or args.load_inputs or args.int_range)
    if not wanted:
        return None
    for path in args.load_inputs:
        if not Path(path).is_file():
            raise UsageError(f"--load-inputs {path}: no such file")
        if Path(path).suffix not in (".npz", ".npy"):
            raise UsageError(f"--load-inputs {path}: give a .npz or .npy file")
    from .verify import VerifyOptions

    return VerifyOptions(seed=args.seed or 0, rtol=args.rtol, atol=args.atol, trials=args.trials,
                         inputs=list(args.load_inputs) or None, int_ranges=_int_ranges(args.int_range),
                         bisect=args.bisect)


def _is_folder_name(output: str) -> bool:
    return output.endswith(("/", "\\")) or Path(output).is_dir()


def plan(inputs: list, output: str | None) -> tuple[list, list, bool, str]:
    """(sources, destinations, several, output) from the positional arguments and -o.
    Without -o, two positionals are IN OUT (as onnxsim and onnxslim take them). Several inputs,
    or a folder, go into an output folder, which must not look like a file name."""
    if output is None:
        if len(inputs) == 2:
            inputs, output = inputs[:1], inputs[1]
        elif len(inputs) == 1:
            raise UsageError("give the output: onnx-fuse IN OUT, or -o OUT (nothing is overwritten unless "
                             "you say --inplace)")
        else:
            raise UsageError(f"{len(inputs)} inputs: give the output folder with -o FOLDER")
    from .io import InputError

    sources = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(item.glob("*.onnx"))
            if not found:
                raise InputError(f"{item}: the folder holds no .onnx files")
            sources += found
        else:
            sources.append(item)
    given = {}  # one path named twice (directly and in its folder, say) would be written twice
    for source in sources:
        twice = given.setdefault(os.path.abspath(source), source)
        if twice is not source:
            raise InputError(f"{source}: given twice (also as {twice}); give each model once")
    out = Path(output)
    several = len(sources) > 1 or Path(inputs[0]).is_dir()
    if not several and not _is_folder_name(output):
        return sources, [out], False, output
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: {len(sources)} inputs need an output folder, and this is a file")
    if not out.exists() and out.suffix.lower() == ".onnx" and several:
        raise UsageError(f"-o {output}: {len(sources)} inputs need an output folder, not a file name "
                         f"(write -o {out.with_suffix('')}/ or name a folder)")
    if not out.parent.is_dir():
        raise InputError(f"{out}: its parent folder does not exist")
    return sources, [out / source.name for source in sources], several, output


def make_output_folder(out: Path):
    """Create the output folder of several inputs (once every claim has held, so that a refused
    run leaves no folder behind) and check that it takes files."""
    from . import io
    from .io import InputError

    try:
        out.mkdir(exist_ok=True)
    except OSError as error:
        raise InputError(f"{out}: cannot create the output folder ({error.strerror})") from None
    io.check_writable(out)


def claim_files(sources, destinations, several, args):
    """Every file the run will read and write, claimed before anything is written (io.WriteGuard):
    an output over an input of the run, two outputs in one place, or a report over either is
    refused up front."""
    from . import io
    from .io import InputError

    guard = io.WriteGuard()
    replaceable = {}
    for source in sources:
        guard.add_input(source, f"the input model {source}", str(source))
        replaceable[source] = [source]
        if several or args.report:  # their data files, which other outputs and the report must not replace
            try:
                model = io.load_path(source, lazy=True)
            except InputError:
                continue  # its own job says what is wrong with it
            guard.add_model(source, model)
            replaceable[source] = io.model_files(source, model)
    guard.add_inputs_files(args.load_inputs)  # the verification reads them too
    for source, destination in zip(sources, destinations):
        mine = replaceable[source] if args.inplace else ()
        guard.claim(destination, f"the output of {source}", str(source), mine)
        # where its data file would go (another output or input must not be there, even if unused)
        data_name = args.external_data or f"{destination.name}.data"
        guard.claim(destination.parent / data_name, f"the external data of the output of {source}", str(source), mine)
    if args.report:
        report = Path(args.report)
        if report.is_dir():
            raise InputError(f"--report {report}: is a directory; give a file name")
        guard.claim(report, "the report", "report")
    return guard


def write_report(path, document: dict, guard):
    """Write the --report document as JSON, through the run's guard (it has read more files since
    it first claimed the report's place)."""
    import json

    from . import io

    guard.claim(Path(path), "the report", "report")
    io.write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())


def _print_refusals(report, out):
    for r in report.refused:
        print(f"  refused {r.pass_name} at {r.node} ({r.where}): {r.reason}", file=out)


def _is_stdout(path) -> bool:
    """Whether writing `path` writes this program's standard output (/dev/stdout, a pipe's
    /proc/self/fd/1): then what the run says goes to standard error instead."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


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
    import logging

    logging.basicConfig(format="onnx-fuse: %(message)s",
                        level=logging.DEBUG if args.verbose else logging.WARNING)
    from .api import list_passes, select_passes
    from .io import InputError

    if args.list_passes:
        for name, summary in list_passes():
            print(f"{name:14} {summary}")
        return EXIT_OK
    if not args.inputs:
        parser.error("give at least one input model (or --list-passes)")
    try:
        verify = _verify_options(args)
        if args.report and not Path(args.report).resolve().parent.is_dir():
            raise UsageError(f"--report {args.report}: its folder does not exist")
        sources, destinations, several, output = plan(args.inputs, args.output)
        options = dict(passes=_names(args.passes) if args.passes else None, skip=_names(args.skip),
                       verify=verify or False, input_shapes=_shapes(args.input_shape) or None,
                       fold_overridable_initializers=args.fold_overridable_initializers,
                       inplace=args.inplace, external_data=args.external_data,
                       external_threshold=args.external_data_threshold)
        select_passes(options["passes"], options["skip"])
        guard = claim_files(sources, destinations, several, args)
        if several or _is_folder_name(output):
            make_output_folder(Path(output))
    except (UsageError, InputError, ValueError) as error:
        print(f"onnx-fuse: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    from .report import RunTable, model_record, report_document

    # what the run says goes to stderr when stdout carries an output
    say = sys.stderr if any(map(_is_stdout, destinations + ([args.report] if args.report else []))) else sys.stdout
    table = RunTable(say) if several and not args.quiet else None
    if table is not None:
        table.start(len(sources), output)
    worst = EXIT_OK
    records = []
    for source, destination in zip(sources, destinations):
        code, report, error = _one(source, destination, dict(options, guard=guard), args, several, say)
        worst = max(worst, code)
        record = model_record(source, destination, report, code, error)
        records.append(record)
        if table is not None:
            table.row(record)
    if table is not None:
        table.finish(records, output)
    if args.report:
        try:
            write_report(args.report, report_document(records), guard)
        except InputError as error:
            print(f"onnx-fuse: error: --report: {error}", file=sys.stderr)
            return max(worst, EXIT_USAGE)
    return worst


def _one(source: Path, destination: Path, options: dict, args, several: bool, say):
    """Optimize one file: (exit code, Report or None, error line or None). The summary goes to `say`."""
    from .api import optimize_file
    from .io import InputError
    from .progress import Progress
    from .verify import CannotVerify, VerificationError

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
        return EXIT_USAGE, None, str(error)
    except InputError as error:
        print(f"onnx-fuse: error: {error}", file=sys.stderr)
        return EXIT_USAGE, None, str(error)
    except VerificationError as error:
        print(f"onnx-fuse: error: {source}: {error}; nothing written", file=sys.stderr)
        return EXIT_VERIFY, getattr(error, "report", None), str(error)
    except Exception as error:  # a bug in onnx-fuse: say so in one line, traceback with -v
        if args.verbose:
            raise
        print(f"onnx-fuse: internal error on {source}: {type(error).__name__}: {error} (run with -v for details)",
              file=sys.stderr)
        return EXIT_INTERNAL, None, f"{type(error).__name__}: {error}"
    if not args.quiet and (not several or args.verbose):
        print(f"onnx-fuse: {source} -> {destination}", file=say)
        print(report.summary(), file=say)
        if args.verbose:
            _print_refusals(report, say)
    for pass_name, where, node in report.undone:
        print(f"onnx-fuse: warning: {source}: undid {pass_name} at {node} ({where}): it changed the outputs",
              file=sys.stderr)
    return EXIT_OK, report, None
