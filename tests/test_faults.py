"""Faults a run meets, injected: a full disk while a checkpoint is written, a hand-edited or
foreign checkpoint, a corrupt cache. Each gives a clear error or is repaired; nothing is lost."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from bptt import checkpoint
from bptt.cli import main as cli_main

TEXT = "It is a tale told by an idiot, full of sound and fury, signifying nothing.\n" * 60
SMALL = ["--hidden", "8", "--layers", "1", "--embed", "4", "--k1", "5", "--batch", "2",
         "--eval-every", "10", "--eval-chars", "200", "--checkpoint-every", "5"]


def _charlm_run(tmp_path, steps=5):
    data = tmp_path / "c.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    assert cli_main(["train", "charlm", "--data", str(data), "--out", str(out), "--steps",
                     str(steps), *SMALL]) == 0
    return out


def _edit_meta(path, edit):
    arrays, meta = checkpoint.load(path)
    edit(meta)
    checkpoint.save(path, arrays, meta)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("rng"), "metadata is incomplete or was edited (missing 'rng')"),
    (lambda m: m["app"]["config"].update(hidden="lots"), "expected hidden a positive integer"),
    (lambda m: m.update(format="bptt-run-1"), "not a run of this version of bptt"),
    (lambda m: m.update(command="task"), "a run of `bptt task`, not of `bptt train charlm`"),
    (lambda m: m.update(step="ten"), "metadata is incomplete or was edited"),
])
def test_edited_or_foreign_checkpoints_are_clear_errors_and_left_alone(tmp_path, capsys, edit,
                                                                       message):
    out = _charlm_run(tmp_path)
    path = out / "checkpoint.npz"
    _edit_meta(path, edit)
    before = path.read_bytes()
    capsys.readouterr()
    for argv in (["train", "charlm", "--resume", str(out), "--steps", "9"],
                 ["sample", str(out), "--length", "5"]):
        code = cli_main(argv)
        err = capsys.readouterr().err
        if code == 0:            # sampling does not read the training state
            assert argv[0] == "sample" and message.startswith("metadata") and "step" not in err
            continue
        assert code == 1 and err.startswith("bptt: error:") and err.count("\n") == 1, err
        assert message in err and "Traceback" not in err
    assert path.read_bytes() == before                        # nothing overwritten


def test_a_checkpoint_of_another_command_is_refused(tmp_path, capsys):
    out = tmp_path / "task"
    assert cli_main(["task", "adding", "--length", "5", "--hidden", "4", "--steps", "2",
                     "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli_main(["train", "charlm", "--resume", str(out)]) == 1
    assert "a run of `bptt task`, not of `bptt train charlm`" in capsys.readouterr().err
    assert cli_main(["eval", str(out)]) == 1
    assert cli_main(["diagnose", str(_charlm_run(tmp_path))]) == 1
    assert "not of `bptt task`" in capsys.readouterr().err


def _mount_tmpfs(path, size):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True)
    return result.returncode == 0


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys):
    """A real full disk: a small tmpfs (root mounts it), filled after the first checkpoint."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    try:
        data = tmp_path / "c.txt"
        data.write_text(TEXT)
        out = disk / "run"
        assert cli_main(["train", "charlm", "--data", str(data), "--out", str(out), "--steps",
                         "5", *SMALL]) == 0
        before = (out / "checkpoint.npz").read_bytes()
        with open(disk / "filler", "wb") as f:               # take every byte that is left
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        capsys.readouterr()
        assert cli_main(["train", "charlm", "--resume", str(out), "--steps", "10"]) == 1
        err = capsys.readouterr().err
        assert f"could not write {out}/" in err and "No space left" in err, err
        assert "checkpoint is intact" in err
        assert (out / "checkpoint.npz").read_bytes() == before
        assert checkpoint.load(out / "checkpoint.npz")[1]["step"] == 5
        assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---------------------------------------------------------------------- caches
@pytest.fixture
def small_recipe():
    from test_speech import SMALL as recipe
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("espeak-ng and flite are not installed (make test installs them)")
    return recipe


def test_a_corrupt_audio_cache_entry_is_made_again(tmp_path, small_recipe, monkeypatch):
    from bptt.data import speech

    folder, manifest = speech.synthesize_digits(small_recipe, tmp_path)
    victim = folder / manifest["utterances"][3]["file"]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])               # a partial file
    runs = []
    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: runs.append(a) or real(*a, **k))
    folder2, manifest2 = speech.synthesize_digits(small_recipe, tmp_path)
    assert manifest2 == manifest and victim.read_bytes() == good
    synth = [a for a in runs if a[0][0] in ("espeak-ng", "flite") and "--version" not in a[0]]
    assert len(synth) == 1                                   # only the bad one
    (folder / "manifest.json").write_text("{ not json")     # a torn manifest: rebuilt
    assert speech.synthesize_digits(small_recipe, tmp_path)[1] == manifest


def test_a_corrupt_features_cache_is_computed_again(tmp_path, small_recipe):
    pytest.importorskip("python_speech_features")
    from bptt.data import speech

    folder, manifest = speech.synthesize_digits(small_recipe, tmp_path)
    feats = speech.digit_features(folder, manifest)
    (cache,) = folder.glob("features-*.npz")
    arrays = dict(np.load(cache))
    arrays["flat"] = arrays["flat"].copy()
    arrays["flat"][0, 0] += 1.0                              # a changed value, a valid file
    np.savez(cache, **arrays)
    again = speech.digit_features(folder, manifest)
    assert all(np.array_equal(a, b) for a, b in zip(feats, again))
    cache.write_bytes(b"PK\x03\x04 torn")
    assert all(np.array_equal(a, b) for a, b in zip(feats, speech.digit_features(folder,
                                                                                   manifest)))
    json.loads((folder / "manifest.json").read_text())       # untouched
