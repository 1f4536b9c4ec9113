r"""Speech as sequences of feature vectors: recorded vowels, and spoken digits synthesized by TTS.

**JapaneseVowels** (Kudo, Toyama & Shimbo 1999; UCI): nine male speakers each say the Japanese
vowels /ae/; every utterance is a sequence of 7-29 frames of 12 LPC cepstral coefficients, and the
task is to name the speaker. 270 training utterances (30 a speaker), 370 test utterances (24-88 a
speaker, recorded on other occasions). The data ship as ``.ts`` files inside the PyPI package
``sktime`` (1.2.0), which this module reads from the package's folder without importing sktime
(``pip install --no-deps sktime==1.2.0`` is all it needs)::

    (x_train, y_train), (x_test, y_test) = load_japanese_vowels()   # lists of (L, 12), labels 0..8

**Spoken digits, synthesized**: the words "zero" ... "nine" spoken by the text-to-speech engines
espeak-ng (formant synthesis: eight English accents times many voice variants, at several speeds
and pitches) and flite (CMU's diphone and statistical voices kal, kal16, awb, rms, slt, at
several durations and pitches). This is synthetic speech, not recordings of people. A
``DigitRecipe`` lists every utterance to make; ``synthesize_digits`` runs the engines (Debian
packages ``espeak-ng`` and ``flite``) once per recipe and caches the WAV files with a manifest
under ``~/.cache/bptt/digits/<recipe key>/``; the engines are deterministic, so a recipe always
gives the same bytes (the manifest records each file's SHA-256). ``digit_features`` turns the
audio into MFCC sequences::

    folder, manifest = synthesize_digits(DigitRecipe())
    feats = digit_features(folder, manifest)          # list of (L, 26) float32, 10 ms frames
    labels = [u["label"] for u in manifest["utterances"]]

Each utterance records its ``voice`` (what a leave-voices-out split holds out: an espeak variant
such as ``espeak/f3`` across every accent, or a flite voice such as ``flite/slt``) and its
``speaker`` (accent and variant for espeak, the voice for flite).
"""

import concurrent.futures
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import wave
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import write_atomic, write_text

SKTIME_INSTALL = "pip install --no-deps sktime==1.2.0"
APT_INSTALL = "apt-get install -y espeak-ng flite"
FEATURES_INSTALL = "pip install python_speech_features==0.6 scipy"

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOWEL_SPEAKERS = 9


# ---------------------------------------------------------------------- JapaneseVowels
def load_japanese_vowels():
    """``((x_train, y_train), (x_test, y_test))``: lists of (L, 12) float64 arrays, one per
    utterance, and int64 speaker labels 0..8 (the files' 1..9 less one)."""
    folder = _package_folder("sktime", SKTIME_INSTALL, "load_japanese_vowels") \
        / "datasets" / "data" / "JapaneseVowels"
    out = []
    for split in ("TRAIN", "TEST"):
        seqs, labels = read_ts(folder / f"JapaneseVowels_{split}.ts")
        out.append((seqs, np.array([int(s) - 1 for s in labels], np.int64)))
    return tuple(out)


def read_ts(path):
    """Read a multivariate ``.ts`` file (sktime's text format, without timestamps or missing
    values): ``(sequences, labels)``, each sequence an (L, D) float64 array and each label the
    string after the last colon."""
    seqs, labels = [], []
    in_data = False
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if line.lower().startswith(("@timestamps true", "@missing true")):
                    raise ValueError(f"read_ts: {path}:{lineno}: timestamps and missing values "
                                     f"are not supported")
                in_data = line.lower() == "@data"
                continue
            *dims, label = line.split(":")
            try:
                rows = [np.array(d.split(","), np.float64) for d in dims]
            except ValueError as e:
                raise ValueError(f"read_ts: {path}:{lineno}: {e}") from None
            if len({len(r) for r in rows}) != 1:
                raise ValueError(f"read_ts: {path}:{lineno}: dimensions of unequal length")
            seqs.append(np.stack(rows, axis=1))
            labels.append(label)
    if not seqs:
        raise ValueError(f"read_ts: {path} holds no @data rows")
    return seqs, labels


def _package_folder(name, install, who):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{who}: the data ship in the package {name}, which is not "
                                  f"installed; install it with: {install}")
    return Path(spec.submodule_search_locations[0])


# ---------------------------------------------------------------------- digits: the recipe
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
                  "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
                   "klatt", "klatt2", "klatt3", "klatt4", "whisper", "whisperf", "croak",
                   "adam", "Andy", "aunty", "benjamin", "david", "ed", "linda", "max", "paul",
                   "rob", "steph", "travis", "victor", "grandma", "grandpa", "michel")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")


@dataclass(frozen=True)
class DigitRecipe:
    """Which utterances to synthesize. espeak-ng: every (accent, variant) speaker says each word
    ``takes`` times, each take at a (speed in words per minute, pitch 0-99) pair drawn with
    ``seed``; flite: every voice says each word at every (duration stretch, f0 target in Hz; 0
    keeps the voice's own) pair (the rms voice ignores the f0 target)."""

    words: tuple = DIGITS
    accents: tuple = ESPEAK_ACCENTS
    variants: tuple = ESPEAK_VARIANTS
    takes: int = 2
    speeds: tuple = (120, 150, 175, 200, 230)
    pitches: tuple = (20, 35, 50, 65, 80)
    flite_voices: tuple = FLITE_VOICES
    stretches: tuple = (0.8, 1.0, 1.25)
    f0s: tuple = (0, 100, 170)
    seed: int = 0

    def __post_init__(self):
        for k in ("words", "speeds", "pitches", "stretches", "f0s"):
            if not isinstance(getattr(self, k), tuple) or not getattr(self, k):
                raise ValueError(f"DigitRecipe: expected {k} a non-empty tuple, got "
                                 f"{getattr(self, k)!r}")
        if not self.accents and not self.flite_voices:
            raise ValueError("DigitRecipe: expected espeak accents or flite voices, got neither")
        if isinstance(self.takes, bool) or not isinstance(self.takes, int) or self.takes < 1:
            raise ValueError(f"DigitRecipe: expected takes a positive integer, got "
                             f"{self.takes!r}")
        bad = [w for w in self.words if not (isinstance(w, str) and w.isalpha())]
        if bad:
            raise ValueError(f"DigitRecipe: expected words of letters only, got {bad}")

    def key(self):
        """12 hex digits naming this recipe (its cache folder)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def utterances(self):
        """Every utterance as a dict: file, word, label, engine, voice, speaker and settings."""
        rng = np.random.default_rng(self.seed)
        out = []
        for accent in self.accents:
            for variant in self.variants:
                for label, word in enumerate(self.words):
                    for take in range(self.takes):
                        speed = int(rng.choice(self.speeds))
                        pitch = int(rng.choice(self.pitches))
                        out.append(dict(
                            file=f"espeak_{accent}_{variant}_{word}_{take}.wav", word=word,
                            label=label, engine="espeak-ng", voice=f"espeak/{variant}",
                            speaker=f"espeak/{accent}+{variant}", accent=accent,
                            variant=variant, speed=speed, pitch=pitch))
        for voice in self.flite_voices:
            for label, word in enumerate(self.words):
                for stretch in self.stretches:
                    for f0 in self.f0s:
                        out.append(dict(
                            file=f"flite_{voice}_{word}_{stretch:g}_{f0}.wav", word=word,
                            label=label, engine="flite", voice=f"flite/{voice}",
                            speaker=f"flite/{voice}", stretch=stretch, f0=f0))
        return out


def _command(u, path):
    if u["engine"] == "espeak-ng":
        return ["espeak-ng", "-v", f"{u['accent']}+{u['variant']}", "-s", str(u["speed"]),
                "-p", str(u["pitch"]), "-w", path, u["word"]]
    cmd = ["flite", "-voice", u["speaker"].split("/")[1], "--setf",
           f"duration_stretch={u['stretch']}"]
    if u["f0"]:
        cmd += ["--setf", f"int_f0_target_mean={u['f0']}"]
    return cmd + ["-t", u["word"], "-o", path]


def _engine_versions(recipe):
    versions = {}
    for tool, needed in (("espeak-ng", bool(recipe.accents)),
                         ("flite", bool(recipe.flite_voices))):
        if not needed:
            continue
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"synthesize_digits: the text-to-speech engine {tool} is not "
                                    f"installed; install it with: {APT_INSTALL} "
                                    f"(or: make speech-deps)")
        flag = "--version"
        text = subprocess.run([tool, flag], capture_output=True, text=True).stdout
        versions[tool] = " ".join(text.split()[:8]) if text else "unknown"
    return versions


def default_cache():
    """``$BPTT_CACHE/digits`` or ``~/.cache/bptt/digits``."""
    root = os.environ.get("BPTT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "bptt")
    return Path(root) / "digits"


def synthesize_digits(recipe=None, cache=None, *, workers=2, progress=False):
    """Make (or find in the cache) every WAV file of ``recipe``; return ``(folder, manifest)``.

    The manifest (``manifest.json``, written last) holds the recipe, the engines' versions and
    one entry per utterance with its file's SHA-256. A cached folder is verified before use:
    a file missing, partial or changed (its SHA-256 differs from the manifest's) is made again,
    and a manifest that does not parse or is of another recipe is rebuilt; nothing unverified
    is used.
    """
    recipe = DigitRecipe() if recipe is None else recipe
    if not isinstance(recipe, DigitRecipe):
        raise TypeError(f"synthesize_digits: expected a DigitRecipe, got "
                        f"{type(recipe).__name__}")
    folder = Path(cache if cache is not None else default_cache()) / recipe.key()
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
        if not path.exists():
            tmp = folder / f".tmp-{u['file']}"
            result = subprocess.run(_command(u, str(tmp)), capture_output=True, text=True)
            if result.returncode != 0 or not tmp.exists():
                raise RuntimeError(f"synthesize_digits: {' '.join(_command(u, 'x.wav'))} "
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
    manifest = {"format": "bptt-digits-1", "recipe": asdict(recipe), "engines": versions,
                "utterances": utterances}
    manifest = json.loads(json.dumps(manifest))     # as a later call will read it back
    write_text(manifest_path, json.dumps(manifest, indent=1))
    return folder, manifest


def _read_manifest(path, recipe):
    """The cached manifest, or None where it does not parse or names another recipe."""
    try:
        manifest = json.loads(path.read_text())
        ok = (manifest.get("format") == "bptt-digits-1" and manifest.get("recipe") ==
              json.loads(json.dumps(asdict(recipe))) and isinstance(manifest["utterances"], list))
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return manifest if ok else None


def _intact(path, sha256):
    try:
        return sha256 is not None and hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


# ---------------------------------------------------------------------- digits: features
FEATURES = dict(winlen=0.025, winstep=0.01, numcep=13, nfilt=26, lowfreq=100, highfreq=3800,
                top_db=40.0, warp=1.0, cmvn=False)


def read_wav(path):
    """``(signal, rate)``: a mono 16-bit PCM WAV file as float64 in [-1, 1)."""
    with wave.open(os.fspath(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"read_wav: {path}: expected mono 16-bit PCM, got "
                             f"{w.getnchannels()} channels of {8 * w.getsampwidth()} bits")
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return data.astype(np.float64) / 32768.0, rate


def trim_silence(signal, rate, top_db=40.0, frame=0.01):
    """The signal from the first to the last 10 ms frame whose energy is within ``top_db`` of
    the loudest frame's (the engines pad each word with silence of their own lengths)."""
    n = max(1, int(round(frame * rate)))
    k = len(signal) // n
    if k == 0:
        return signal
    energy = (signal[:k * n].reshape(k, n) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (-top_db / 10))
    if loud.size == 0:
        return signal
    return signal[loud[0] * n:(loud[-1] + 1) * n]


def mfcc_features(signal, rate, *, winlen=0.025, winstep=0.01, numcep=13, nfilt=26,
                  lowfreq=100, highfreq=3800, top_db=40.0, warp=1.0, cmvn=False):
    """MFCC sequence (L, 2 numcep): ``numcep`` cepstra (c0 replaced by the log frame energy) with
    the utterance's mean subtracted, then their deltas. The mel filters span ``lowfreq`` ..
    ``highfreq`` Hz whatever the sampling rate, so 8 kHz and 22 kHz voices give comparable
    features. Computed by ``python_speech_features``.

    ``warp`` plays the signal ``warp`` times faster (it is read as sampled at ``warp * rate``):
    every frequency, formants and pitch, is scaled by ``warp`` and the duration by 1 / warp, the
    "speed perturbation" of Ko et al. (2015); warp > 1 mimics a shorter vocal tract."""
    try:
        from python_speech_features import delta, mfcc
    except ImportError:
        raise ModuleNotFoundError(f"mfcc_features: needs python_speech_features; install it "
                                  f"with: {FEATURES_INSTALL}") from None
    if not warp > 0:
        raise ValueError(f"mfcc_features: expected warp > 0, got {warp!r}")
    rate = rate * warp
    if highfreq > rate / 2:
        raise ValueError(f"mfcc_features: highfreq {highfreq} Hz is above the Nyquist "
                         f"frequency {rate / 2} Hz of a {rate} Hz signal")
    signal = trim_silence(signal, rate, top_db)
    nfft = 1 << int(np.ceil(np.log2(winlen * rate)))
    c = mfcc(signal, rate, winlen=winlen, winstep=winstep, numcep=numcep, nfilt=nfilt,
             nfft=nfft, lowfreq=lowfreq, highfreq=highfreq)                  # (L, numcep)
    c -= c.mean(axis=0)                         # cepstral mean normalisation: level and channel go
    if cmvn:
        c /= c.std(axis=0) + 1e-8
    return np.concatenate([c, delta(c, 2)], axis=1).astype(np.float32)


def digit_features(folder, manifest, *, only=None, progress=False, **options):
    """MFCC sequences (``mfcc_features`` with ``options``) of every utterance of ``manifest``, in
    order, or of those at the indices ``only``; cached beside the audio as
    ``features-<key>.npz`` (arrays only, no pickle)."""
    settings = {**FEATURES, **options}
    unknown = set(options) - set(FEATURES)
    if unknown:
        raise TypeError(f"digit_features: unknown options {sorted(unknown)}; known: "
                        f"{sorted(FEATURES)}")
    utts = manifest["utterances"]
    ids = list(range(len(utts))) if only is None else [int(i) for i in only]
    key = hashlib.sha256(json.dumps([settings, [utts[i]["sha256"] for i in ids]],
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = Path(folder) / f"features-{key}.npz"
    cached = _read_features(path)
    if cached is not None:
        flat, offsets = cached
        return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    bar = _bar(progress, len(ids), "MFCC")
    feats = []
    for i in ids:
        feats.append(mfcc_features(*read_wav(Path(folder) / utts[i]["file"]), **settings))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    offsets = np.cumsum([0] + [len(f) for f in feats])
    flat = np.concatenate(feats)
    digest = np.frombuffer(_digest(flat, offsets).encode(), np.uint8)
    write_atomic(path, lambda f: np.savez(f, flat=flat, offsets=offsets, sha256=digest), ".npz")
    return feats


def _digest(flat, offsets):
    h = hashlib.sha256(np.ascontiguousarray(flat).tobytes())
    h.update(np.ascontiguousarray(offsets, np.int64).tobytes())
    return h.hexdigest()


def _read_features(path):
    """``(flat, offsets)`` of a features cache whose SHA-256 checks out, else None (then it is
    computed again and the file replaced)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            flat, offsets, digest = z["flat"], z["offsets"], z["sha256"].tobytes().decode()
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError, zipfile.BadZipFile):
        return None
    return (flat, offsets) if _digest(flat, offsets) == digest else None


def _bar(progress, total, desc):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="utt", dynamic_ncols=True)
