r"""Connected speech with transcripts: strings of spoken digits synthesized by TTS, and recorded
Russian sentences.

**Digit strings, synthesized** (in the manner of TIDIGITS): strings of 1-7 digits, each spoken
as one text ("three one four") by espeak-ng and flite, with the voices, accents, speeds and
pitches of ``bptt.data.speech.DigitRecipe``. A ``StringRecipe`` lists every utterance;
``synthesize_strings`` runs the engines once and caches the WAV files under
``$BPTT_CACHE/digit-strings/<recipe key>/`` (default ``~/.cache/bptt``) with a manifest of every
file's SHA-256, verified before each use as ``synthesize_digits`` does (the same helpers). The
features are those of the isolated digits (``bptt.data.speech.digit_features``: 13 MFCCs and
their deltas every 10 ms, in the band 100-3800 Hz whatever the engine's sampling rate)::

    folder, manifest = synthesize_strings(StringRecipe())
    feats = digit_features(folder, manifest)            # list of (L, 26) float32
    texts = [u["text"] for u in manifest["utterances"]]   # "three one four"

This is synthetic speech, not recordings of people.

**festvox-ru** (Debian package ``festvox-ru``, Nickolay Shmyrev 2005, BSD-like licence): 620
recorded sentences of Russian literary prose read by one male speaker, 16 kHz mono, 99.5
minutes, with their text (``etc/txt.done.data``, ``+`` before a stressed vowel) and time-aligned
phones (``lab/*.lab``). ``load_festvox_ru`` reads the list; ``normalize_russian`` turns a text
into the labels of character-level CTC (lower-case Cyrillic letters and single spaces; stress
marks, punctuation and apostrophes dropped, hyphens read as spaces); ``festvox_features``
computes MFCCs in the band 100-7600 Hz and caches them, with their SHA-256, under
``$BPTT_CACHE/festvox-ru/``::

    utts = load_festvox_ru()                  # [{"id": "ru_0001", "wav": Path, "text": ...}]
    feats = festvox_features(utts)            # list of (L, 26) float32, 10 ms frames
"""

import concurrent.futures
import hashlib
import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import write_atomic, write_text
from .speech import (DIGITS, ESPEAK_ACCENTS, ESPEAK_VARIANTS, FLITE_VOICES, _bar, _command,
                     _digest, _engine_versions, _intact, _read_features, default_cache,
                     mfcc_features, read_wav)

FORMAT = "bptt-digit-strings-1"


# ---------------------------------------------------------------------- digit strings
@dataclass(frozen=True)
class StringRecipe:
    """Which digit strings to synthesize. espeak-ng: every (accent, variant) speaker says
    ``strings`` strings, each of a length drawn from ``min_digits``..``max_digits`` with digits
    drawn uniformly, at a (speed, pitch) drawn from ``speeds`` and ``pitches``; flite: every
    voice says ``flite_strings`` strings at every (duration stretch, f0 target in Hz, 0 keeping
    the voice's own) pair. Everything is drawn from ``default_rng(seed)``."""

    accents: tuple = ESPEAK_ACCENTS
    variants: tuple = ESPEAK_VARIANTS
    strings: int = 24
    min_digits: int = 1
    max_digits: int = 7
    speeds: tuple = (120, 150, 175, 200, 230)
    pitches: tuple = (20, 35, 50, 65, 80)
    flite_voices: tuple = FLITE_VOICES
    flite_strings: int = 12
    stretches: tuple = (0.8, 1.0, 1.25)
    f0s: tuple = (0, 100, 170)
    seed: int = 0

    def __post_init__(self):
        for k in ("speeds", "pitches", "stretches", "f0s"):
            if not isinstance(getattr(self, k), tuple) or not getattr(self, k):
                raise ValueError(f"StringRecipe: expected {k} a non-empty tuple, got "
                                 f"{getattr(self, k)!r}")
        if not self.accents and not self.flite_voices:
            raise ValueError("StringRecipe: expected espeak accents or flite voices, got neither")
        for k in ("strings", "flite_strings", "min_digits", "max_digits"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"StringRecipe: expected {k} a positive integer, got {v!r}")
        if self.min_digits > self.max_digits:
            raise ValueError(f"StringRecipe: expected min_digits <= max_digits, got "
                             f"{self.min_digits} > {self.max_digits}")

    def key(self):
        """12 hex digits naming this recipe (its cache folder)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def _digits(self, rng):
        n = int(rng.integers(self.min_digits, self.max_digits + 1))
        return [int(d) for d in rng.integers(0, 10, n)]

    def utterances(self):
        """Every utterance as a dict: file, text, labels (the digits), engine, voice, speaker
        and settings; ``voice`` is what a leave-voices-out split holds out, as for the isolated
        digits (``espeak/<variant>`` across every accent, ``flite/<voice>``)."""
        rng = np.random.default_rng(self.seed)
        out = []
        for accent in self.accents:
            for variant in self.variants:
                for k in range(self.strings):
                    digits = self._digits(rng)
                    speed, pitch = int(rng.choice(self.speeds)), int(rng.choice(self.pitches))
                    out.append(dict(
                        file=f"espeak_{accent}_{variant}_{k:03d}.wav", text=_say(digits),
                        labels=digits, engine="espeak-ng", voice=f"espeak/{variant}",
                        speaker=f"espeak/{accent}+{variant}", accent=accent, variant=variant,
                        speed=speed, pitch=pitch))
        for voice in self.flite_voices:
            for stretch in self.stretches:
                for f0 in self.f0s:
                    for k in range(self.flite_strings):
                        digits = self._digits(rng)
                        out.append(dict(
                            file=f"flite_{voice}_{stretch:g}_{f0}_{k:03d}.wav",
                            text=_say(digits), labels=digits, engine="flite",
                            voice=f"flite/{voice}", speaker=f"flite/{voice}", stretch=stretch,
                            f0=f0))
        return out


def _say(digits):
    return " ".join(DIGITS[d] for d in digits)


def strings_cache():
    """``$BPTT_CACHE/digit-strings`` or ``~/.cache/bptt/digit-strings``."""
    return default_cache().parent / "digit-strings"


def synthesize_strings(recipe=None, cache=None, *, workers=2, progress=False):
    """Make (or find in the cache) every WAV file of ``recipe``; return ``(folder, manifest)``.

    As ``bptt.data.speech.synthesize_digits``: the manifest (``manifest.json``, written last)
    holds the recipe, the engines' versions and every file's SHA-256; a cached folder is
    verified before use, a missing, partial or changed file made again, a manifest that does
    not parse or names another recipe rebuilt.
    """
    recipe = StringRecipe() if recipe is None else recipe
    if not isinstance(recipe, StringRecipe):
        raise TypeError(f"synthesize_strings: expected a StringRecipe, got "
                        f"{type(recipe).__name__}")
    folder = Path(cache if cache is not None else strings_cache()) / recipe.key()
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        manifest = _read_manifest(manifest_path, recipe)
        if manifest is not None:
            bad = [u for u in manifest["utterances"] if not _intact(folder / u["file"],
                                                                   u.get("sha256"))]
            if not bad:
                return folder, manifest
            for u in bad:                     # made again below, from the recipe
                (folder / u["file"]).unlink(missing_ok=True)
    versions = _engine_versions(recipe)
    folder.mkdir(parents=True, exist_ok=True)
    utterances = recipe.utterances()

    def make(u):
        path = folder / u["file"]
        spoken = {**u, "word": u["text"]}       # the digits' command line, with the string
        if not path.exists():
            tmp = folder / f".tmp-{u['file']}"
            result = subprocess.run(_command(spoken, str(tmp)), capture_output=True, text=True)
            if result.returncode != 0 or not tmp.exists():
                raise RuntimeError(f"synthesize_strings: {' '.join(_command(spoken, 'x.wav'))} "
                                   f"failed: {result.stderr.strip()[:300]}")
            os.replace(tmp, path)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    bar = _bar(progress, len(utterances), "synthesizing")
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for u, digest in zip(utterances, pool.map(make, utterances)):
            u["sha256"] = digest
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    manifest = {"format": FORMAT, "recipe": asdict(recipe), "engines": versions,
                "utterances": utterances}
    manifest = json.loads(json.dumps(manifest))     # as a later call will read it back
    write_text(manifest_path, json.dumps(manifest, indent=1))
    return folder, manifest


def _read_manifest(path, recipe):
    """The cached manifest, or None where it does not parse or names another recipe."""
    try:
        manifest = json.loads(path.read_text())
        ok = (manifest.get("format") == FORMAT and manifest.get("recipe") ==
              json.loads(json.dumps(asdict(recipe))) and isinstance(manifest["utterances"], list))
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return manifest if ok else None


# ---------------------------------------------------------------------- festvox-ru
FESTVOX_RU = Path("/usr/share/festival/voices/russian/msu_ru_nsh_clunits")
FESTVOX_INSTALL = "apt-get install -y festvox-ru"
RUSSIAN_LETTERS = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
RUSSIAN_ALPHABET = " " + RUSSIAN_LETTERS          # the CTC labels 1.. (0 is the blank)
# 16 kHz recordings: the band up to 7600 Hz keeps the fricatives (с, ш, щ, ж, з, ц, ф, х)
FESTVOX_FEATURES = dict(winlen=0.025, winstep=0.01, numcep=13, nfilt=40, lowfreq=100,
                        highfreq=7600, top_db=40.0)
_LINE = re.compile(r'^\(\s*(\S+)\s+"(.*)"\s*\)\s*$')


def festvox_ru_folder(root=None):
    """The voice's folder (default where Debian installs it), checked to hold the transcripts
    and the recordings; a clear error with the install line where it does not."""
    folder = Path(FESTVOX_RU if root is None else root)
    if not (folder / "etc" / "txt.done.data").is_file() or not (folder / "wav").is_dir():
        raise FileNotFoundError(f"festvox-ru: the recorded Russian speech is not at {folder}; "
                                f"install the Debian package with: {FESTVOX_INSTALL} (or: make "
                                f"speech-deps)")
    return folder


def normalize_russian(text):
    """The transcript as CTC labels see it: lower case, ``+`` (stress) and apostrophes dropped,
    hyphens and other punctuation read as spaces, spaces single; every character left is in
    ``RUSSIAN_ALPHABET``."""
    text = text.lower().replace("+", "").replace("'", "")
    text = re.sub(f"[^{RUSSIAN_LETTERS}]+", " ", text)
    return text.strip()


def load_festvox_ru(root=None):
    """Every utterance of festvox-ru, in the transcript file's order: dicts with ``id``,
    ``wav`` (Path), ``text`` (as written, stress marks and punctuation included) and
    ``transcript`` (``normalize_russian(text)``)."""
    folder = festvox_ru_folder(root)
    path = folder / "etc" / "txt.done.data"
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"festvox-ru: {path}:{lineno}: expected ( id \"text\" ), got "
                             f"{line[:60]!r}")
        uid, text = m.groups()
        wav = folder / "wav" / f"{uid}.wav"
        if not wav.is_file():
            raise FileNotFoundError(f"festvox-ru: {path}:{lineno} names {uid}, but {wav} is "
                                    f"missing; reinstall with: {FESTVOX_INSTALL}")
        out.append(dict(id=uid, wav=wav, text=text, transcript=normalize_russian(text)))
    return out


def festvox_cache():
    """``$BPTT_CACHE/festvox-ru`` or ``~/.cache/bptt/festvox-ru``."""
    return default_cache().parent / "festvox-ru"


def festvox_features(utterances, cache=None, *, warp=1.0, progress=False, workers=1):
    """MFCC sequences (L, 26) of ``utterances`` (``load_festvox_ru``'s dicts), in order:
    ``mfcc_features`` with ``FESTVOX_FEATURES`` (and ``warp``). Cached as
    ``features-<key>.npz`` in ``cache`` (default ``festvox_cache()``), the key naming the
    settings and the recordings' SHA-256, the file carrying the features' own SHA-256: a
    changed recording or a damaged cache is computed again."""
    files = [Path(u["wav"]) for u in utterances]
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    settings = {**FESTVOX_FEATURES, "warp": warp}
    key = hashlib.sha256(json.dumps([settings, digests], sort_keys=True).encode()
                         ).hexdigest()[:12]
    path = Path(cache if cache is not None else festvox_cache()) / f"features-{key}.npz"
    cached = _read_features(path)
    if cached is not None:
        flat, offsets = cached
        return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]

    def one(f):
        return mfcc_features(*read_wav(f), **settings)

    bar = _bar(progress, len(files), "MFCC")
    feats = []
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for f in pool.map(one, files):
            feats.append(f)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    offsets = np.cumsum([0] + [len(f) for f in feats])
    flat = np.concatenate(feats)
    digest = np.frombuffer(_digest(flat, offsets).encode(), np.uint8)
    write_atomic(path, lambda f: np.savez(f, flat=flat, offsets=offsets, sha256=digest), ".npz")
    return feats


def split_utterances(n, seed=0, valid=0.1, test=0.1):
    """Index arrays ``(train, valid, test)`` of ``n`` utterances: a permutation drawn from
    ``default_rng(seed)`` cut into the fractions ``1 - valid - test``, ``valid``, ``test``
    (each part sorted)."""
    if not (0 < valid < 1 and 0 < test < 1 and valid + test < 1):
        raise ValueError(f"split_utterances: expected fractions valid, test in (0, 1) with a "
                         f"sum below 1, got {valid!r}, {test!r}")
    order = np.random.default_rng(seed).permutation(n)
    n_valid, n_test = max(1, round(valid * n)), max(1, round(test * n))
    if n_valid + n_test >= n:
        raise ValueError(f"split_utterances: {n} utterances are too few for a training, a "
                         f"validation and a test part")
    return (np.sort(order[n_valid + n_test:]), np.sort(order[:n_valid]),
            np.sort(order[n_valid:n_valid + n_test]))
