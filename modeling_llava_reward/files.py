"""Writing files so that a reader never sees half of one, and nothing of the user's is lost.

A folder is built in a staging folder beside its target (same file system) and moved into place with renames, each
atomic; a file is written to a temporary name beside it and renamed over the target. A failure leaves the previous
version untouched.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from llava_reward.files import write_json
    >>> path = write_json(Path(tempfile.mkdtemp()) / "out" / "metrics.json", {"accuracy": 0.5})
    >>> json.loads(path.read_text())
    {'accuracy': 0.5}
"""

import json
import os
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .image_inputs import InputError
from .image_inputs import missing_path_problem


def make_folder(path: str | os.PathLike) -> Path:
    """Create the output folder `path` (and its parents) if needed; `InputError` saying why it cannot be one.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> make_folder(Path(tempfile.mkdtemp()) / "eval" / "run-1").is_dir()
        True
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        what = "a file" if path.exists() else missing_path_problem(path)
        raise InputError(f"{path}: cannot be the output folder: it is {what}, not a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a parent folder should be, no permission, a read-only file system
        raise InputError(f"{path}: cannot create the output folder ({error.strerror}).") from None
    return path


def staging_dir(target: str | os.PathLike) -> Path:
    """A new empty folder beside `target` (same file system, so that `publish` is a rename), named after it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdir honours the umask (a shared cache stays readable), unlike tempfile.mkdtemp's 0700.
    staging = target.with_name(f".{target.name}.staging-{os.getpid()}-{secrets.token_hex(4)}")
    staging.mkdir()
    return staging


def publish(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished `staging` folder to `target`, replacing what is there (each rename is atomic)."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        staging.rename(target)
        return target
    retired = target.with_name(f".{target.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}")
    target.rename(retired)
    staging.rename(target)
    if retired.is_dir() and not retired.is_symlink():
        shutil.rmtree(retired)
    else:
        retired.unlink()
    return target


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file renamed over it: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def replacing(path: str | os.PathLike, *, keep_partial: bool = False, binary: bool = False):
    """Write the new content of `path` into the file this yields (text in UTF-8, or bytes with `binary`); it replaces
    `path` (a rename) only when the block completes, so that a failure or an interruption never leaves `path`
    truncated or half-written.

    The new content goes to `<name>.partial-<random>` beside `path` (the yielded file's `name`), created with the
    permissions of the file it replaces (or, for a new file, those any new file gets). When the block raises, the
    partial file is deleted, or, with `keep_partial` and something written, kept for the caller to point the user to.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "scores.jsonl"
        >>> with replacing(path) as file:
        ...     _ = file.write("{}\n")
        >>> path.read_text()
        '{}\n'
    """
    path = Path(path)
    partial = path.with_name(f"{path.name}.partial-{secrets.token_hex(4)}")
    # "x": never a file that is already there; the umask applies, as to any new file.
    file = open(partial, "xb") if binary else open(partial, "x", encoding="utf-8")
    try:
        with file:
            if path.exists():
                os.fchmod(file.fileno(), stat.S_IMODE(path.stat().st_mode))
            yield file
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        if not keep_partial or partial.stat().st_size == 0:
            partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def write_json(path: str | os.PathLike, payload) -> Path:
    """`payload` as indented JSON at `path`, written atomically (`write_text`)."""
    return write_text(path, json.dumps(payload, indent=2) + "\n")


__all__ = ["make_folder", "publish", "replacing", "staging_dir", "write_json", "write_text"]
