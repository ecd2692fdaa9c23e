"""The configuration files the package ships, addressable by name from any directory.

| kind | folder | e.g. |
| --- | --- | --- |
| `recipes` | training recipes (`llava-reward train --config NAME`) | `tiny`, `qwen2_5_vl_alignment`, `default_fidelity` |
| `accelerate` | accelerate configs (`accelerate launch --config_file "$(llava-reward paths accelerate ddp)"`) | `ddp`, `fsdp`, `deepspeed_zero3` |
| `serve` | Ray Serve configs (copy `"$(llava-reward paths serve reward_service)"`, set its model, `serve deploy` it) | `reward_service` |

A name that is an existing file is taken as it is (a user's own recipe); otherwise it names a shipped file, with or
without its `.yaml`.

Example:
    >>> from llava_reward.configuration import named_file, names
    >>> named_file("recipes", "tiny").name
    'tiny.yaml'
    >>> "ddp" in names("accelerate")
    True
"""

import os
from pathlib import Path


FOLDERS = {kind: Path(__file__).parent / kind for kind in ("recipes", "accelerate", "serve")}
LABELS = {"recipes": "recipe", "accelerate": "accelerate config", "serve": "Ray Serve config"}


def names(kind: str) -> list[str]:
    """The names of the shipped files of `kind` (see the module docstring), sorted."""
    return sorted(path.stem for path in _folder(kind).glob("*.yaml"))


def named_file(kind: str, name_or_path: str | os.PathLike) -> Path:
    """The file `name_or_path` names: an existing file as it is, else the shipped file of `kind` of that name.

    Raises `FileNotFoundError` listing the shipped names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = _folder(kind) / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"{name_or_path}: no such file, nor the name of a shipped {LABELS[kind]} ({', '.join(names(kind))})."
    )


def _folder(kind: str) -> Path:
    if kind not in FOLDERS:
        raise ValueError(f"`kind` must be one of {sorted(FOLDERS)}, got {kind!r}.")
    return FOLDERS[kind]


__all__ = ["FOLDERS", "named_file", "names"]
