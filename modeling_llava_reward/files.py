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
import tempfile
from pathlib import Path


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


def write_json(path: str | os.PathLike, payload) -> Path:
    """`payload` as indented JSON at `path`, written atomically (`write_text`)."""
    return write_text(path, json.dumps(payload, indent=2) + "\n")


__all__ = ["publish", "staging_dir", "write_json", "write_text"]
