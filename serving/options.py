"""Options of the reward service: one flat, JSON-able record shared by `serve_reward`, `serve deploy` and the CLI.

Replicas receive these options as a plain dict and load the model themselves from `model` (a path or Hub id).
Values may be given as strings (as `serve run module:build_app key=value` and YAML configs pass them); they are
converted to each field's type, and an unknown or malformed option is refused with its name.

Example:
    >>> options = ServeOptions.from_dict({"model": "my-reward", "max_batch_size": "32", "perspectives": "a,b"})
    >>> options.max_batch_size, options.perspectives, options.max_ongoing_requests
    (32, ['a', 'b'], 64)
"""

import dataclasses
import types
import typing
from dataclasses import dataclass

from .protocol import Limits


@dataclass
class ServeOptions:
    r"""
    How to load the model, batch, scale and protect the service.

    Args:
        model (`str`): the reward model: a folder, a Hub id or `"default"` (`llava-reward train` output, an adapter
            bundle, or the repo of several perspectives when `perspectives` is given), as `llava_reward.load` takes.
        perspectives (`list[str]`, *optional*): serve these perspective subfolders of `model` on one base VLM;
            answers are then `{perspective: [...]}`.
        subfolder (`str`, *optional*): serve this one perspective subfolder of `model` (answers stay lists).
        base_model, trust_remote_code: as for `llava_reward.load`.
        device (`str`, *optional*): where each replica runs the model; defaults to `cuda` when the replica was
            given GPUs (`num_gpus`), the CPU otherwise.
        dtype (`str`, *optional*): e.g. `bfloat16`.
        replicas (`int`): number of replicas (each loads its own copy of the model).
        num_cpus, num_gpus (`float`): Ray resources per replica.
        threads (`int`, *optional*): torch intra-op threads per replica (default: torch's).
        max_batch_size (`int`): most images scored in one forward; images of concurrent requests share batches.
        batch_wait_ms (`float`): how long a batch waits for more images before it runs.
        max_ongoing_requests (`int`, *optional*): requests a replica holds at once (default 2 x max_batch_size).
        max_queued_requests (`int`): requests waiting for a replica at each proxy; beyond it the proxy answers
            503 with a `Retry-After: retry_after_s` header.
        request_timeout_s (`float`): deadline of a request inside the replica; past it the answer is 504.
        max_body_mb, max_images, max_pixels, max_prompt_chars: limits of one request (see `protocol.Limits`).
        image_root (`str`, *optional*): accept `{"path": ...}` images from inside this folder only.
        graceful_shutdown_timeout_s (`float`): how long a stopping replica keeps answering its ongoing requests.
    """

    model: str
    perspectives: list[str] | None = None
    subfolder: str | None = None
    base_model: str | None = None
    trust_remote_code: bool = False
    device: str | None = None
    dtype: str | None = None
    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int | None = None
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_ongoing_requests: int | None = None
    max_queued_requests: int = 128
    retry_after_s: float = 1.0
    request_timeout_s: float = 60.0
    max_body_mb: float = 64.0
    max_images: int = 256
    max_pixels: int = 4096 * 4096
    max_prompt_chars: int = 20_000
    image_root: str | None = None
    graceful_shutdown_timeout_s: float = 75.0

    def __post_init__(self):
        if isinstance(self.perspectives, str):
            self.perspectives = [name.strip() for name in self.perspectives.split(",") if name.strip()] or None
        if self.perspectives and self.subfolder:
            raise ValueError("Give `subfolder` (one perspective) or `perspectives` (several), not both.")
        if self.max_ongoing_requests is None:
            self.max_ongoing_requests = 2 * self.max_batch_size
        for name in ("replicas", "max_batch_size", "max_ongoing_requests", "max_images", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for name in ("batch_wait_ms", "num_cpus", "num_gpus", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        for name in ("request_timeout_s", "max_body_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")

    @classmethod
    def from_dict(cls, values: dict) -> "ServeOptions":
        """Options from a dict (strings are converted to each field's type); unknown keys are refused."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"Unknown serving option(s) {unknown}; known: {', '.join(fields)}.")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _convert(name, value, hints[name]) for name, value in values.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def limits(self) -> Limits:
        return Limits(
            max_body_bytes=int(self.max_body_mb * 2**20),
            max_images=self.max_images,
            max_pixels=self.max_pixels,
            max_prompt_chars=self.max_prompt_chars,
            image_root=self.image_root,
        )


def _convert(name: str, value, hint):
    """`value` as the type `hint` names (`int`, `float | None`, `list[str] | None`, ...), from a string if need be."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    target = next(arg for arg in typing.get_args(hint) if arg is not type(None)) if optional else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none", "null")):
        if optional:
            return None
        raise ValueError(f"`{name}` must be given, got {value!r}.")
    if typing.get_origin(target) is list:  # a list, or comma-separated names (split by __post_init__)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        if isinstance(value, str):
            return value
        raise ValueError(f"`{name}` must be a list of strings or a comma-separated string, got {value!r}.")
    if target is bool:
        text = str(value).lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"`{name}` must be true or false, got {value!r}.")
        return text in ("true", "1", "yes")
    if target in (int, float):
        kind = "an integer" if target is int else "a number"
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or (target is int and not number.is_integer()):
            raise ValueError(f"`{name}` must be {kind}, got {value!r}.")
        return target(number)
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"`{name}` must be a string, got {value!r}.")
    return str(value)
