"""The reward service on Ray Serve: one deployment holding the scorer, dynamic batching, FastAPI ingress.

Endpoints (JSON only; formats in `llava_reward.serving.protocol`): `POST /score`, `POST /compare`, `GET /healthz`
(the replica answers), `GET /readyz` (the model is loaded and has scored a warm-up image), `GET /info` (model,
perspectives with their objective and tau, package version, batching and limits).

How a request flows: the body is read under the size limit, checked field by field, its images decoded in a worker
thread (under the pixel limit); each (prompt, image) pair then joins `@serve.batch`'s queue, so that images of
concurrent requests share one forward of up to `max_batch_size` images. Forwards run one at a time on the replica's
single scoring thread: `LlavaRewardScorer` is not thread-safe (its forward registers hooks on shared decoder layers),
and a separate thread keeps the event loop free to accept, refuse and time out requests while the model computes.

Under load: a replica holds at most `max_ongoing_requests` requests; the proxy queues `max_queued_requests` more and
refuses the rest with 503 and `Retry-After` (Serve's `BackpressureConfig`; its body is plain text, not JSON). A
request still unanswered `request_timeout_s` after it reached the replica gets 504. A bad request gets a 4xx naming
the field and never reaches the model; if the image processor refuses one image of a batch, the batch is rescored
image by image so that only the request holding it fails. Stopping a replica (`serve.delete`, a redeploy,
scale-down) lets its ongoing requests finish first (`graceful_shutdown_timeout_s`).

Example (a local Ray is started for you; `llava-reward serve` calls this):

```python
>>> from llava_reward.serving import serve_reward  # doctest: +SKIP
>>> service = serve_reward("outputs/fidelity", port=8000, max_batch_size=16)  # doctest: +SKIP
>>> service.url  # doctest: +SKIP
'http://127.0.0.1:8000'
```
"""

import asyncio
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import ray
import torch
from fastapi import FastAPI
from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from ray import serve
from ray.serve.config import BackpressureConfig

from llava_reward.image_inputs import InputError
from llava_reward.scoring import score_rows

from .loading import LoadedScorer
from .options import ServeOptions
from .protocol import RequestError
from .protocol import decode_image
from .protocol import parse_request


logger = logging.getLogger("ray.serve")
DEPLOYMENT_NAME = "LlavaReward"
WARM_UP_IMAGE = Image.new("RGB", (32, 32), (128, 128, 128))

api = FastAPI(title="LLaVA-Reward", docs_url=None, redoc_url=None, openapi_url=None)


@dataclass
class _Item:
    """One (prompt, image) pair waiting for a batch; `name` is the request field it came from (for errors)."""

    name: str
    prompt: str
    image: Image.Image


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit` bytes: never read whole before that."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError("body", f"{declared} bytes is over the limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError("body", f"over the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class RewardDeployment:
    """One replica: loads the model from `options["model"]` itself and answers the HTTP endpoints."""

    def __init__(self, options: dict):
        self.options = ServeOptions.from_dict(options)
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        device = self.options.device or ("cuda" if ray.get_gpu_ids() else None)
        self.reward = LoadedScorer.load(
            self.options.model,
            perspectives=self.options.perspectives,
            subfolder=self.options.subfolder,
            base_model=self.options.base_model,
            device=device,
            dtype=self.options.dtype,
            trust_remote_code=self.options.trust_remote_code,
        )
        self.limits = self.options.limits()
        # One thread: forwards never overlap (the scorer is not thread-safe), and the event loop stays free.
        self.scoring_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llava-reward-scorer")
        self.score_batch.set_max_batch_size(self.options.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(self.options.batch_wait_ms / 1000)
        self.reward.score(["warm-up"], [WARM_UP_IMAGE])  # a model that cannot score fails the replica's start
        self.batches, self.batched_images = 0, 0  # the batches this replica formed and the images they held
        self.info = {
            **self.reward.describe(),
            "device": str(device or "cpu"),
            "max_batch_size": self.options.max_batch_size,
            "batch_wait_ms": self.options.batch_wait_ms,
            "request_timeout_s": self.options.request_timeout_s,
            "limits": {
                "max_body_bytes": self.limits.max_body_bytes,
                "max_images": self.limits.max_images,
                "max_pixels": self.limits.max_pixels,
                "max_prompt_chars": self.limits.max_prompt_chars,
                "image_paths": self.limits.image_root is not None,
            },
        }

    @api.get("/healthz")
    def healthz(self):
        return {"status": "ok"}

    @api.get("/readyz")
    def readyz(self):
        return {"ready": True, "model": self.reward.model_id}

    @api.get("/info")
    def describe(self):
        """The model and the service's settings, and what this replica has batched so far."""
        return {**self.info, "replica": {"batches": self.batches, "images": self.batched_images}}

    @api.post("/score")
    async def score(self, request: Request):
        return await self._answer(request, "score")

    @api.post("/compare")
    async def compare(self, request: Request):
        return await self._answer(request, "compare")

    async def _answer(self, request: Request, kind: str) -> JSONResponse:
        try:
            body = await _read_body(request, self.limits.max_body_bytes)
            parsed = parse_request(body, self.limits, kind)
            answer = await asyncio.wait_for(self._compute(parsed, kind), timeout=self.options.request_timeout_s)
            return JSONResponse(answer)
        except RequestError as error:
            return JSONResponse(error.to_json(), status_code=error.status)
        except TimeoutError:
            message = f"no answer within the request deadline of {self.options.request_timeout_s} s"
            return JSONResponse({"error": message, "field": None}, status_code=504)
        except Exception as error:  # a bug or a model failure: answer it, keep the replica serving
            logger.exception("request failed")
            return JSONResponse({"error": f"internal error: {error}", "field": None}, status_code=500)

    async def _compute(self, parsed, kind: str) -> dict:
        images = await asyncio.to_thread(
            lambda: {field: [decode_image(name, source, self.limits) for name, source in found]
                     for field, found in parsed.images.items()}
        )
        names = {field: [name for name, _ in found] for field, found in parsed.images.items()}
        if kind == "score":
            rewards = await self._rewards(parsed.prompts, images["images"], names["images"])
            return {"rewards": self._shape(rewards)}
        if not self.reward.pairwise():
            raise RequestError(None, "this model's objective is 'ce', which scores each image on its own: use /score")
        rewards_a, rewards_b = await asyncio.gather(
            self._rewards(parsed.prompts, images["images_a"], names["images_a"]),
            self._rewards(parsed.prompts, images["images_b"], names["images_b"]),
        )
        p_a = self.reward.preference(rewards_a, rewards_b)
        return {"p_a": self._shape(p_a), "rewards_a": self._shape(rewards_a), "rewards_b": self._shape(rewards_b)}

    async def _rewards(self, prompts: list[str], images: list, names: list[str]) -> dict[str, torch.Tensor]:
        """`{perspective: (N,) or (N, D)}` for the pairs, each pair batched with those of concurrent requests."""
        results = await asyncio.gather(*(self.score_batch(_Item(*item)) for item in zip(names, prompts, images)))
        for result in results:
            if isinstance(result, RequestError):
                raise result
        return self.reward.split(torch.cat(results))

    def _shape(self, values: dict[str, torch.Tensor]):
        """A list for a single-perspective model, `{perspective: list}` for several."""
        lists = {name: tensor.tolist() for name, tensor in values.items()}
        return lists if self.reward.multi else next(iter(lists.values()))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)  # both reset from the options in __init__
    async def score_batch(self, items: list[_Item]) -> list:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.scoring_thread, self._score_items, items)

    def _score_items(self, items: list[_Item]) -> list:
        """Per item: its `(1, W)` packed rewards, or the `RequestError` of an image the processor refused (the batch
        is then rescored item by item, so that only the request holding that image fails)."""
        self.batches, self.batched_images = self.batches + 1, self.batched_images + len(items)
        results = score_rows(self.reward, [([item.prompt], [item.image]) for item in items], batch_size=len(items))
        return [
            RequestError(item.name, str(result).removeprefix("in the batch of inputs 0 to 0: "))
            if isinstance(result, InputError) else result
            for item, result in zip(items, results)
        ]

    def __del__(self):
        scoring_thread = getattr(self, "scoring_thread", None)
        if scoring_thread is not None:
            scoring_thread.shutdown(wait=False, cancel_futures=True)


def build_app(args: dict):
    """The Serve application for `args` (the options of `ServeOptions`, as a dict of values or strings).

    This is the application builder that `serve deploy "$(llava-reward paths serve reward_service)"` and
    `serve run llava_reward.serving.server:build_app model=PATH` import.
    """
    options = ServeOptions.from_dict(dict(args))
    return RewardDeployment.options(
        num_replicas=options.replicas,
        ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
        max_ongoing_requests=options.max_ongoing_requests,
        max_queued_requests=options.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=options.retry_after_s),
        graceful_shutdown_timeout_s=options.graceful_shutdown_timeout_s,
    ).bind(options.to_dict())


@dataclass
class RewardService:
    """A running reward application: its `url`; `stop()` deletes it after its ongoing requests finish."""

    url: str
    name: str
    started_ray: bool

    def stop(self):
        serve.delete(self.name)  # replicas drain their ongoing requests first (graceful_shutdown_timeout_s)
        if self.started_ray:
            serve.shutdown()
            ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def serve_reward(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "llava-reward",
    route_prefix: str = "/",
    ray_address: str | None = None,
    blocking: bool = False,
    **options,
) -> RewardService:
    r"""
    Start the reward service for `model` on Ray Serve and return once it answers (or, `blocking`, serve until
    interrupted, then drain and stop: what `llava-reward serve` does).

    A local Ray is started when none is running and `ray_address` is not given (`"auto"` joins a running cluster).
    `host` and `port` take effect when this call starts Serve; a Serve instance already running keeps its own.
    `options` are those of `ServeOptions` (perspectives, replicas, max_batch_size, batch_wait_ms, image_root,
    num_gpus, ...).

    Example:

    ```python
    >>> service = serve_reward("outputs/fidelity", replicas=2, max_batch_size=16)  # doctest: +SKIP
    >>> from llava_reward.serving import RemoteReward  # doctest: +SKIP
    >>> rewards, info = RemoteReward(service.url)(images, prompts)  # doctest: +SKIP
    ```"""
    checked = ServeOptions.from_dict({"model": model, **options})  # bad options fail here, before a cluster starts
    if not blocking:
        return _start(checked, host, port, name, route_prefix, ray_address)
    # SIGTERM (a process manager stopping us) is honoured from here on, also while the service starts.
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        service = _start(checked, host, port, name, route_prefix, ray_address)
        _serve_until(service, stop)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return service


def _start(options: ServeOptions, host: str, port: int, name: str, route_prefix: str, ray_address) -> RewardService:
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=ray_address)
    service = RewardService(f"http://{host}:{port}{route_prefix.rstrip('/')}", name, started_ray)
    try:
        # The proxy's own timeout (answered 408) stays behind the replica's deadline (answered 504).
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": options.request_timeout_s + 30})
        serve.run(build_app(options.to_dict()), name=name, route_prefix=route_prefix, blocking=False)
        _check_reachable(service)
    except BaseException:
        if started_ray:  # leave no cluster behind a failed start
            serve.shutdown()
            ray.shutdown()
        raise
    return service


def _check_reachable(service: RewardService, attempts: int = 20):
    """Fail loudly if the service is not where its URL says (Serve was already running on another host/port)."""
    host = service.url.split("//", 1)[1].split("/", 1)[0]
    probe = service.url.replace("//0.0.0.0:", "//127.0.0.1:") + "/healthz"
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(probe, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"The application {service.name!r} was deployed, but nothing answers at {service.url}: Serve was probably "
        f"already running with other HTTP options ({host} is only used when this call starts Serve)."
    )


def _serve_until(service: RewardService, stop: threading.Event):
    """Serve until `stop` is set (SIGTERM) or Ctrl-C, then drain the ongoing requests and stop."""
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"LLaVA-Reward service at {service.url} (Ctrl-C to stop)", flush=True)
    try:
        stop.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        print("draining ongoing requests, then stopping", flush=True)
        service.stop()
