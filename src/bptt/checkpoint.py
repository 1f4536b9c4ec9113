"""Checkpoints: one ``.npz`` file, written atomically, that runs no code when loaded.

The file holds named arrays plus a ``__meta__`` entry: UTF-8 JSON (configuration, step, data
position, RNG states, optimizer scalars). It is read with ``allow_pickle=False``, so loading a
checkpoint never executes anything. It is written to a temporary file in the same folder, flushed
and fsync'ed, then renamed over the old one (and the folder fsync'ed): a crash or a kill at any
moment leaves either the old checkpoint or the new one, never a torn file.
"""

import io
import json
import os
import tempfile

import numpy as np

META = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or of another format."""


def save(path, arrays, meta):
    """Write ``arrays`` (name -> ndarray) and ``meta`` (JSON-able) to ``path`` atomically."""
    path = os.fspath(path)
    if META in arrays:
        raise ValueError(f"checkpoint: the array name {META!r} is reserved")
    payload = dict(arrays)
    payload[META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    write_atomic(path, lambda f: np.savez(f, **payload), ".npz")


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically, as ``save`` writes a checkpoint: a reader
    finds the old file or the whole new one, never a part (run reports that mark work done)."""
    write_atomic(path, lambda f: f.write(text.encode()))


def write_atomic(path, write, suffix=".tmp"):
    """Call write(f) on a binary file that then becomes ``path`` atomically: a temporary file
    in the same folder, fsync'ed, renamed over ``path`` (the folder fsync'ed after); on an
    error the temporary goes and ``path`` is as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path):
    """Return ``(arrays, meta)`` from a checkpoint written by ``save``; a clear error otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint: no file at {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"checkpoint: cannot read {path}: {e.strerror or e}") from None
    if not data.startswith(b"PK"):
        # not a zip archive: never pass it to a reader that would offer to unpickle it
        raise CheckpointError(f"checkpoint: {path} is corrupt: not a bptt checkpoint (an .npz "
                              f"archive); it was not read")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}   # reading each member checks its CRC
    except Exception as e:  # noqa: BLE001 (zipfile raises many kinds on a damaged archive)
        reason = "it holds an object array" if "pickle" in str(e) else str(e)
        raise CheckpointError(f"checkpoint: {path} is truncated or corrupt ({reason})") from None
    if META not in arrays:
        raise CheckpointError(f"checkpoint: {path} has no {META} entry; not a bptt checkpoint")
    try:
        meta = json.loads(arrays.pop(META).tobytes().decode())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"checkpoint: {path} has unreadable metadata ({e})") from None
    return arrays, meta
