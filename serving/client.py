"""`RemoteReward`: the reward service as the `reward_fn(images, prompts, metadata) -> (rewards, info)` of RL loops.

A flow_grpo / DDPO trainer that scores with a local `LlavaRewardScorer.reward_fn` switches to a shared service in
one line:

```python
reward_fn = RemoteReward("http://reward-host:8000")     # instead of scorer.reward_fn
rewards, info = reward_fn(images, prompts, metadata)     # images: PIL list, NHWC uint8 array, NCHW float in [0, 1]
```

Images travel as lossless PNG (base64 in JSON; never pickle), so the server sees exactly the pixels the local scorer
would, and the rewards are the same. A call is split into chunks of `chunk_size` images sent `concurrency` at a
time (the server batches them with other callers' images). Each chunk is retried, with exponential backoff and
jitter, at most `max_retries` times on: connection errors and timeouts, 429/503 (honouring `Retry-After`),
408/502/504, and a 500 that is not the server's own JSON error (the proxy's answer when a replica died mid-request).
Scoring is a pure function of its inputs, so a retried chunk gets the same numbers. Other 4xx answers are raised at
once as `RemoteRewardError` naming the server's field. Only the standard library's HTTP client is used.
"""

import base64
import io
import json
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException

import torch

from llava_reward.image_inputs import load_images
from llava_reward.objectives import get_objective


RETRYABLE_STATUSES = (408, 429, 500, 502, 503, 504)


class RemoteRewardError(RuntimeError):
    """The service refused a request (`status`, and the request `field` at fault when it named one) or could not be
    reached within the retries."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field


class RemoteReward:
    r"""
    Client of the LLaVA-Reward service (`llava-reward serve`), usable as an RL reward function.

    Args:
        url (`str`): the service, e.g. `"http://127.0.0.1:8000"`.
        perspective (`str`, *optional*): with a multi-perspective server, the perspective `__call__` returns.
        weights (`dict[str, float]`, *optional*): with a multi-perspective server, return this weighted sum of the
            perspectives' rewards instead.
        chunk_size (`int`, defaults to 32): images per HTTP request.
        concurrency (`int`, defaults to 4): requests in flight per call.
        timeout_s (`float`, defaults to 120): socket timeout of one request.
        max_retries (`int`, defaults to 6): retries per chunk before giving up.
        backoff_s, max_backoff_s (`float`): first and largest wait between retries (doubling, with jitter).

    Example:

    ```python
    >>> reward_fn = RemoteReward("http://127.0.0.1:8000", chunk_size=16)  # doctest: +SKIP
    >>> rewards, info = reward_fn(torch.rand(8, 3, 256, 256), ["a red cat"] * 8, {})  # doctest: +SKIP
    >>> rewards.shape, info["retries"]  # doctest: +SKIP
    (torch.Size([8]), 0)
    ```"""

    def __init__(
        self,
        url: str,
        *,
        perspective: str | None = None,
        weights: dict[str, float] | None = None,
        chunk_size: int = 32,
        concurrency: int = 4,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ):
        if perspective is not None and weights is not None:
            raise ValueError("Give `perspective` or `weights`, not both.")
        if chunk_size < 1 or concurrency < 1 or max_retries < 0:
            raise ValueError("`chunk_size` and `concurrency` must be >= 1 and `max_retries` >= 0.")
        self.url = url.rstrip("/")
        self.perspective = perspective
        self.weights = weights
        self.chunk_size = chunk_size
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.retries = _Counter()  # retried requests since creation, over all calls (`.value`)
        self._info = None

    def info(self) -> dict:
        """The server's `/info` (fetched once): model, perspectives with objective and tau, package version."""
        if self._info is None:
            self._info = self._request("GET", "/info")
        return self._info

    def __call__(self, images, prompts, metadata=None) -> tuple[torch.Tensor, dict]:
        """`(rewards, info)`: a float32 CPU tensor of shape `(N,)`, as `LlavaRewardScorer.reward_fn` returns.

        `metadata` is accepted for the RL contract and unused. `info` holds the perspective(s) used with their
        objective and tau, every perspective's rewards, and the number of retries this call needed.
        """
        perspectives = self.info()["perspectives"]
        used = self._used(perspectives)
        vector = [name for name in used if not get_objective(perspectives[name]["objective"]).scalar]
        if vector:
            kind = get_objective(perspectives[vector[0]]["objective"]).output_kind
            raise ValueError(f"Perspective {vector[0]!r} outputs a {kind}, not a scalar reward: use compare().")
        retries = _Counter()
        rewards = self._score(prompts, images, retries)
        if not isinstance(rewards, dict):
            rewards = {used[0]: rewards}
        if self.weights is not None:
            total = sum(weight * rewards[name] for name, weight in self.weights.items())
        else:
            total = rewards[used[0]]
        info = {
            "perspectives": {name: perspectives[name] for name in used},
            "rewards": rewards,
            "url": self.url,
            "retries": retries.value,
        }
        return total.float(), info

    def _used(self, perspectives: dict) -> list[str]:
        """The perspectives `__call__` returns (one, or those weighted), checked against the server's."""
        wanted = list(self.weights) if self.weights is not None else [self.perspective] if self.perspective else None
        if wanted is None:
            if len(perspectives) > 1:
                raise ValueError(
                    f"The server scores several perspectives ({', '.join(perspectives)}): pass `perspective=` to "
                    "use one, or `weights=` to combine them."
                )
            return list(perspectives)
        missing = [name for name in wanted if name not in perspectives]
        if missing:
            raise ValueError(f"Perspective(s) {missing} not served; the server has {', '.join(perspectives)}.")
        return wanted

    def score(self, prompts, images):
        """Rewards as the local scorer returns them: a tensor `(N,)` / `(N, D)`, or `{perspective: tensor}`."""
        return self._score(prompts, images, _Counter())

    def compare(self, prompts, images_a, images_b):
        """P(images_a[i] preferred over images_b[i]): a tensor `(N,)`, or `{perspective: tensor}`."""
        encoded_a, encoded_b = encode_images(images_a), encode_images(images_b)
        prompts = _one_per_image(prompts, len(encoded_a))
        payload = {"prompts": prompts, "images_a": encoded_a, "images_b": encoded_b}
        return _concat([answer["p_a"] for answer in self._chunked("/compare", payload, _Counter())])

    def _score(self, prompts, images, retries: "_Counter"):
        encoded = encode_images(images)
        payload = {"prompts": _one_per_image(prompts, len(encoded)), "images": encoded}
        return _concat([answer["rewards"] for answer in self._chunked("/score", payload, retries)])

    def _chunked(self, path: str, payload: dict, retries: "_Counter") -> list[dict]:
        """POST `payload` in chunks of `chunk_size` (every list field split alike), answers in order."""
        count = len(payload["prompts"])
        chunks = [
            {key: values[start : start + self.chunk_size] for key, values in payload.items()}
            for start in range(0, count, self.chunk_size)
        ]
        if len(chunks) == 1:
            return [self._request("POST", path, chunks[0], retries)]
        with ThreadPoolExecutor(min(self.concurrency, len(chunks))) as pool:
            return list(pool.map(lambda chunk: self._request("POST", path, chunk, retries), chunks))

    def _request(self, method: str, path: str, payload: dict | None = None, retries: "_Counter | None" = None):
        body = None if payload is None else json.dumps(payload).encode()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(
                self.url + path, data=body, method=method, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                answer = _json_or_none(error.read())
                # A JSON 500 is the server's own failure on this input: the same input would fail again.
                retryable = error.code in RETRYABLE_STATUSES and not (error.code == 500 and answer is not None)
                if not retryable or attempt == self.max_retries:
                    raise _refusal(error.code, answer, method, path, attempt) from None
                delay = _retry_after(error.headers.get("Retry-After"))
            except (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError) as error:
                if attempt == self.max_retries:
                    raise RemoteRewardError(
                        f"{method} {self.url}{path}: no answer after {attempt + 1} attempts ({error})"
                    ) from None
                delay = None
            self.retries.add()
            if retries is not None:
                retries.add()
            backoff = self.backoff_s * 2**attempt * random.uniform(0.5, 1.0)  # jitter: retries do not synchronise
            time.sleep(min(self.max_backoff_s, delay if delay is not None else backoff))
        raise AssertionError("unreachable")


class _Counter:
    """A count shared by threads."""

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def add(self):
        with self._lock:
            self.value += 1


def encode_images(images) -> list[str]:
    """Base64 PNG of each image (PIL, NHWC/HWC array, NCHW/CHW tensor in [0, 1] or uint8): lossless, so the server
    scores exactly the pixels the local scorer would."""
    encoded = []
    for image in load_images(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)  # fast; PNG is lossless at every level
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def _one_per_image(prompts, count: int) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) == 1 and count > 1:
        prompts = prompts * count
    if len(prompts) != count:
        raise ValueError(f"Got {len(prompts)} prompts and {count} images: pass one prompt per image, or one prompt.")
    return prompts


def _concat(parts: list):
    """Chunks' answers (lists, or `{perspective: list}`) -> one float32 tensor, or `{perspective: tensor}`."""
    if isinstance(parts[0], dict):
        return {
            name: torch.tensor([value for part in parts for value in part[name]], dtype=torch.float32)
            for name in parts[0]
        }
    return torch.tensor([value for part in parts for value in part], dtype=torch.float32)


def _json_or_none(body: bytes) -> dict | None:
    try:
        answer = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return answer if isinstance(answer, dict) and "error" in answer else None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After: <seconds>` header (an HTTP date is ignored: the backoff applies)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _refusal(status: int, answer: dict | None, method: str, path: str, attempt: int) -> RemoteRewardError:
    message = answer["error"] if answer else f"HTTP {status}"
    tries = f" (after {attempt + 1} attempts)" if attempt else ""
    return RemoteRewardError(f"{method} {path}: {status} {message}{tries}", status, answer and answer.get("field"))
