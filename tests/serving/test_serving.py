"""The reward service on a real local Ray Serve, called over real HTTP on loopback: every answer equals the local
scorer's on the same inputs (to 1e-5); bad requests get a 4xx naming the field and leave the replica serving; the
client retries overload and dead replicas. Ray, Serve and the two shared applications start once per test run."""

import base64
import importlib
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from llava_reward import LlavaRewardScorer
from llava_reward import load_perspectives
from llava_reward.configuration import named_file
from llava_reward.objectives import get_objective
from llava_reward.serving import RemoteReward
from llava_reward.serving import RemoteRewardError
from llava_reward.serving import build_app
from llava_reward.serving import serve_reward
from llava_reward.testing import tiny_images


PERSPECTIVES = ["alignment", "fidelity", "safety"]
PROMPTS = ["a red cat", "two dogs on a mat", "a lighthouse at dusk", "", "a bowl of fruit", "a city at night"]
SIZES = [(32, 32), (24, 40), (40, 24), (33, 31), (48, 48), (20, 36)]
FORMATS = ["PNG", "JPEG", "WEBP", "PNG", "JPEG", "WEBP"]


def encode(image, image_format="PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


IMAGE_FILES = [encode(image, image_format) for image, image_format in zip(tiny_images(6, SIZES, seed=3), FORMATS)]


def request(url: str, body=None, method=None):
    """(status, headers, parsed JSON or text) of one HTTP request."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    outgoing = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(outgoing, timeout=60) as response:
            status, headers, text = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, text = error.code, error.headers, error.read()
    try:
        return status, headers, json.loads(text)
    except json.JSONDecodeError:
        return status, headers, text.decode()


def replica_names(app: str) -> list[str]:
    import ray

    return sorted(actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                  if actor["name"].startswith(f"SERVE_REPLICA::{app}#"))


@pytest.fixture(scope="session")
def serve_address(ray_cluster):
    from ray import serve

    with socket.socket() as probe:  # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return "127.0.0.1", port


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    """A folder of images the server may read, a file outside it, and a symlink inside it pointing out."""
    folder = tmp_path_factory.mktemp("served")
    (folder / "root" / "sub").mkdir(parents=True)
    for index, data in enumerate(IMAGE_FILES):
        (folder / "root" / "sub" / f"{index}.img").write_bytes(data)
    (folder / "secret.png").write_bytes(IMAGE_FILES[0])
    (folder / "root" / "link.png").symlink_to(folder / "secret.png")
    return folder / "root"


@pytest.fixture(scope="session")
def served(serve_address, tiny_reward_repo, image_root) -> dict[str, str]:
    """Two applications, started side by side (their replicas load at the same time), by URL:

    - "single": one perspective (alignment, BT) through `serve_reward`, with an image root and small limits;
    - "multi": three perspectives (BT, GPM, CE) on one base, no image root.
    """
    from ray import serve
    from ray.serve import RunTarget

    host, port = serve_address
    multi = build_app({"model": str(tiny_reward_repo), "perspectives": ",".join(PERSPECTIVES), "threads": 1,
                       "max_batch_size": 8, "batch_wait_ms": 20})
    serve.run_many([RunTarget(multi, name="multi", route_prefix="/multi")], wait_for_applications_running=False)
    service = serve_reward(
        str(tiny_reward_repo / "alignment"), host=host, port=port, name="single", route_prefix="/single",
        threads=1, max_batch_size=8, batch_wait_ms=20, image_root=str(image_root), max_pixels=48 * 48,
        max_body_mb=0.25, max_images=16,
    )
    urls = {"single": service.url, "multi": f"http://{host}:{port}/multi"}
    deadline = time.monotonic() + 300
    while request(f"{urls['multi']}/readyz")[0] != 200:  # 404 until its route exists, 503 while it loads
        assert time.monotonic() < deadline, serve.status().applications["multi"]
        time.sleep(0.5)
    return urls


@pytest.fixture(scope="session")
def single_url(served):
    return served["single"]


@pytest.fixture(scope="session")
def multi_url(served):
    return served["multi"]


@pytest.fixture(scope="session")
def local_single(tiny_reward_repo):
    return LlavaRewardScorer.from_pretrained(tiny_reward_repo / "alignment")


@pytest.fixture(scope="session")
def local_multi(tiny_reward_repo):
    return load_perspectives(tiny_reward_repo, PERSPECTIVES)


def assert_close(answer, expected):
    torch.testing.assert_close(torch.tensor(answer, dtype=torch.float32), expected.float(), atol=1e-5, rtol=1e-5)


def test_score_equals_the_local_scorer(single_url, local_single):
    expected = local_single.score(PROMPTS, IMAGE_FILES)  # the same encoded files, decoded by the local scorer
    status, _, answer = request(f"{single_url}/score", {"prompts": PROMPTS, "images": [b64(f) for f in IMAGE_FILES]})
    assert status == 200, answer
    assert_close(answer["rewards"], expected)
    # One prompt for every image; a data: URL prefix is accepted.
    images = ["data:image/png;base64," + b64(IMAGE_FILES[0]), b64(IMAGE_FILES[1])]
    status, _, answer = request(f"{single_url}/score", {"prompt": "a red cat", "images": images})
    assert status == 200 and len(answer["rewards"]) == 2
    assert_close(answer["rewards"], local_single.score("a red cat", IMAGE_FILES[:2]))


def test_compare_uses_the_objective_and_tau(single_url, local_single):
    status, _, answer = request(f"{single_url}/compare", {
        "prompts": PROMPTS[:3], "images_a": [b64(f) for f in IMAGE_FILES[:3]],
        "images_b": [b64(f) for f in IMAGE_FILES[3:]]})
    assert status == 200, answer
    expected = [local_single.compare(PROMPTS[i], IMAGE_FILES[i], IMAGE_FILES[i + 3]) for i in range(3)]
    np.testing.assert_allclose(answer["p_a"], expected, atol=1e-5)
    assert_close(answer["rewards_a"], local_single.score(PROMPTS[:3], IMAGE_FILES[:3]))


def test_multi_perspective_score_and_compare_equal_the_local_scorer(multi_url, local_multi):
    expected = local_multi.score(PROMPTS, IMAGE_FILES)
    status, _, answer = request(f"{multi_url}/score", {"prompts": PROMPTS, "images": [b64(f) for f in IMAGE_FILES]})
    assert status == 200, answer
    assert list(answer["rewards"]) == PERSPECTIVES
    for name in PERSPECTIVES:
        assert_close(answer["rewards"][name], expected[name])  # fidelity: (6, 2) GPM embeddings
    status, _, answer = request(f"{multi_url}/compare", {
        "prompt": "a cat", "images_a": [b64(f) for f in IMAGE_FILES[:3]],
        "images_b": [b64(f) for f in IMAGE_FILES[3:]]})
    assert status == 200, answer
    assert list(answer["p_a"]) == ["alignment", "fidelity"]  # safety is CE: no pairwise preference
    a, b = local_multi.score("a cat", IMAGE_FILES[:3]), local_multi.score("a cat", IMAGE_FILES[3:])
    for name in ("alignment", "fidelity"):
        config = local_multi.configs[name]
        probability = get_objective(config.objective).preference_probability(a[name], b[name], config.tau)
        assert_close(answer["p_a"][name], probability)


def test_health_readiness_and_identity(single_url, multi_url, tiny_reward_repo):
    assert request(f"{single_url}/healthz")[:1] == (200,)
    status, _, ready = request(f"{single_url}/readyz")
    assert status == 200 and ready["ready"] is True
    _, _, info = request(f"{single_url}/info")
    assert info["model"] == str(tiny_reward_repo / "alignment") and info["multi_perspective"] is False
    assert info["perspectives"] == {"alignment": {"objective": "bt", "tau": 0.1, "reward_dim": 1}}
    assert info["package_version"] == "0.1.0" and info["max_batch_size"] == 8
    assert info["limits"]["image_paths"] is True and info["limits"]["max_pixels"] == 48 * 48
    _, _, info = request(f"{multi_url}/info")
    assert info["multi_perspective"] is True and list(info["perspectives"]) == PERSPECTIVES
    assert info["perspectives"]["fidelity"] == {"objective": "gpm", "tau": 0.1, "reward_dim": 2}


def test_bad_requests_get_a_4xx_naming_the_field_and_the_replica_keeps_serving(single_url, local_single):
    replicas = replica_names("single")
    png, big = b64(IMAGE_FILES[0]), b64(encode(tiny_images(1, [(49, 49)])[0]))
    cases = [
        (b"{", 400, "body"),
        ({"images": [png]}, 422, "prompt"),
        ({"prompt": ["a"], "images": [png]}, 422, "prompt"),
        ({"prompts": ["a", "b"], "images": [png]}, 422, "prompts"),
        ({"prompt": "a"}, 422, "images"),
        ({"prompt": "a", "images": [png, "bm90IGFuIGltYWdl"]}, 422, "images[1]"),  # base64 of "not an image"
        ({"prompt": "a", "images": [png, png, b64(encode(tiny_images(1)[0], "GIF"))]}, 422, "images[2]"),
        ({"prompt": "a", "images": [png, big]}, 413, "images[1]"),  # 49 x 49 > 48 x 48 pixels
        ({"prompt": "a", "images": [png] * 17}, 413, "images"),
        ({"prompt": "a", "images": ["A" * 300_000]}, 413, "body"),  # over 0.25 MB
    ]
    for body, status, field in cases:
        got, _, answer = request(f"{single_url}/score", body)
        assert (got, answer["field"]) == (status, field), answer
        assert answer["error"].startswith(f"{field}: ")
    status, _, answer = request(f"{single_url}/compare", {"prompt": "a", "images_a": [png], "images_b": [png, png]})
    assert status == 422 and answer["field"] == "images_b"
    # Still the same replica (none was restarted), still answering correctly.
    assert replica_names("single") == replicas
    status, _, answer = request(f"{single_url}/score", {"prompt": "a", "images": [png]})
    assert status == 200
    assert_close(answer["rewards"], local_single.score("a", IMAGE_FILES[:1]))


def test_image_paths_only_inside_the_image_root(single_url, multi_url, image_root, local_single):
    paths = [{"path": f"sub/{index}.img"} for index in range(3)]
    status, _, answer = request(f"{single_url}/score", {"prompt": "a cat", "images": paths})
    assert status == 200, answer
    assert_close(answer["rewards"], local_single.score("a cat", IMAGE_FILES[:3]))
    for escaping in ("../secret.png", str(image_root.parent / "secret.png"), "link.png", "sub/../../secret.png"):
        status, _, answer = request(f"{single_url}/score", {"prompt": "a", "images": [{"path": escaping}]})
        assert (status, answer["field"]) == (403, "images[0].path") and "outside the image root" in answer["error"]
    status, _, answer = request(f"{single_url}/score", {"prompt": "a", "images": [{"path": "sub/none.png"}]})
    assert status == 422 and "no such file" in answer["error"]
    status, _, answer = request(f"{multi_url}/score", {"prompt": "a", "images": [{"path": "sub/0.img"}]})
    assert status == 403 and "without an image root" in answer["error"]


def test_remote_reward_is_the_local_reward_fn_for_every_image_layout(single_url, local_single):
    images = tiny_images(7, seed=5)
    prompts = [f"prompt {index}" for index in range(7)]
    expected, _ = local_single.reward_fn(images, prompts)
    uint8 = np.stack([np.asarray(image) for image in images])  # NHWC uint8
    floats = torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 255  # NCHW float in [0, 1]
    reward_fn = RemoteReward(single_url, chunk_size=3, concurrency=2)  # 3 requests, 2 at a time
    for layout in (images, uint8, floats):
        rewards, info = reward_fn(layout, prompts, [{}] * 7)
        assert rewards.shape == (7,) and rewards.dtype == torch.float32
        torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-5)
        assert info["retries"] == 0 and info["perspectives"]["alignment"]["objective"] == "bt"
    with pytest.raises(RemoteRewardError, match="prompts\\[0\\]: expected a string") as caught:
        reward_fn.score([5], images[:1])
    assert caught.value.status == 422


def test_remote_reward_picks_or_weighs_perspectives(multi_url, local_multi):
    images, prompts = tiny_images(4, seed=6), ["a cat", "a dog", "a car", "a tree"]
    expected = local_multi.score(prompts, images)
    rewards, info = RemoteReward(multi_url, perspective="safety")(images, prompts)
    torch.testing.assert_close(rewards, expected["safety"], atol=1e-5, rtol=1e-5)
    assert set(info["rewards"]) == set(PERSPECTIVES)
    rewards, _ = RemoteReward(multi_url, weights={"alignment": 0.5, "safety": 2.0})(images, prompts)
    torch.testing.assert_close(rewards, 0.5 * expected["alignment"] + 2 * expected["safety"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="several perspectives"):
        RemoteReward(multi_url)(images, prompts)
    with pytest.raises(ValueError, match="Perspective 'fidelity' outputs a preference embedding, not a scalar reward"):
        RemoteReward(multi_url, perspective="fidelity")(images, prompts)
    p_a = RemoteReward(multi_url).compare(prompts[:2], images[:2], images[2:])
    b = local_multi.score(prompts[:2], images[2:])["fidelity"]  # images_b with images_a's prompts
    tau = local_multi.configs["fidelity"].tau
    probability = get_objective("gpm").preference_probability(expected["fidelity"][:2], b, tau)
    torch.testing.assert_close(p_a["fidelity"], probability, atol=1e-5, rtol=1e-5)


def test_the_shipped_serve_deploy_config_builds_the_application(tiny_reward_repo):
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from llava_reward.serving import ServeOptions

    # The shipped file, as `llava-reward paths serve reward_service` finds it, and the import path `serve` imports.
    config = ServeDeploySchema.model_validate(yaml.safe_load(named_file("serve", "reward_service").read_text()))
    (application,) = config.applications
    module, builder = application.import_path.split(":")
    assert getattr(importlib.import_module(module), builder) is build_app
    options = ServeOptions.from_dict(application.args)  # every option of the file is known and well-typed
    assert (options.replicas, options.num_gpus, options.max_queued_requests) == (2, 1.0, 256)
    assert config.http_options.request_timeout_s > options.request_timeout_s  # the replica's 504 comes first
    app = build_app({**application.args, "model": str(tiny_reward_repo / "alignment")})
    assert isinstance(app, serve.Application)


# --- Under load and faults (slow: each starts its own small application) ------------------------------------------


@pytest.mark.slow
def test_hundreds_of_concurrent_requests_all_equal_the_local_scorer(single_url, local_single):
    images, prompts = tiny_images(24, seed=7), [f"prompt number {index}" for index in range(24)]
    expected = local_single.score(prompts, images)
    files = encode_images_for(images)
    _, _, before = request(f"{single_url}/info")

    def client(worker: int) -> list[tuple[int, float]]:
        answers = []
        for step in range(40):  # bounded: 8 clients x 40 requests
            index = (worker * 7 + step) % 24
            status, _, answer = request(f"{single_url}/score", {"prompt": prompts[index], "images": [files[index]]})
            assert status == 200, answer
            answers.append((index, answer["rewards"][0]))
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [answer for worker in pool.map(client, range(8)) for answer in worker]
    assert len(answers) == 320
    for index, reward in answers:
        assert abs(reward - expected[index].item()) < 1e-5
    _, _, after = request(f"{single_url}/info")
    batches = after["replica"]["batches"] - before["replica"]["batches"]
    images_scored = after["replica"]["images"] - before["replica"]["images"]
    assert images_scored == 320 and batches < 320  # concurrent requests shared forwards


def encode_images_for(images) -> list[str]:
    return [b64(encode(image)) for image in images]


@pytest.fixture(scope="module")
def tight_url(serve_address, tiny_reward_repo):
    """A replica that takes one request at a time, with one queued at the proxy: overload on demand."""
    from ray import serve

    serve.run(build_app({"model": str(tiny_reward_repo / "alignment"), "threads": 1, "max_batch_size": 1,
                         "max_ongoing_requests": 1, "max_queued_requests": 1, "retry_after_s": 1,
                         "batch_wait_ms": 0}), name="tight", route_prefix="/tight")
    yield f"http://{serve_address[0]}:{serve_address[1]}/tight"
    serve.delete("tight")


@pytest.mark.slow
def test_overload_answers_503_with_retry_after_and_the_client_retries(tight_url, local_single):
    images = tiny_images(12, seed=8)
    expected = local_single.score("a cat", images)
    files = encode_images_for(images)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda file: request(f"{tight_url}/score", {"prompt": "a cat", "images": [file]}),
                                files))
    refused = [(status, headers) for status, headers, _ in answers if status != 200]
    assert refused and all(status == 503 and headers["Retry-After"] == "1" for status, headers in refused)
    for (status, _, answer), reward in zip(answers, expected):
        if status == 200:
            assert abs(answer["rewards"][0] - reward.item()) < 1e-5
    rewards, info = RemoteReward(tight_url, chunk_size=1, concurrency=6, max_retries=20)(images, "a cat")
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-5)
    assert info["retries"] > 0


@pytest.mark.slow
def test_request_deadline_answers_504(serve_address, tiny_reward_repo):
    from ray import serve

    # A batch waits 3 s for company; the deadline is 0.5 s.
    serve.run(build_app({"model": str(tiny_reward_repo / "alignment"), "threads": 1, "max_batch_size": 64,
                         "batch_wait_ms": 3000, "request_timeout_s": 0.5}), name="deadline", route_prefix="/deadline")
    try:
        start = time.monotonic()
        status, _, answer = request(f"http://{serve_address[0]}:{serve_address[1]}/deadline/score",
                                    {"prompt": "a", "images": [b64(IMAGE_FILES[0])]})
        assert status == 504 and "deadline of 0.5 s" in answer["error"]
        assert time.monotonic() - start < 3
    finally:
        serve.delete("deadline")


@pytest.mark.slow
def test_a_replica_killed_mid_request_is_retried_and_no_answer_is_lost(serve_address, tiny_reward_repo,
                                                                        local_single):
    import ray
    from ray import serve

    # Two replicas; each request waits 300 ms in its replica for a batch, so requests are always in flight.
    serve.run(build_app({"model": str(tiny_reward_repo / "alignment"), "threads": 1, "replicas": 2,
                         "max_batch_size": 64, "batch_wait_ms": 300}), name="pair", route_prefix="/pair")
    try:
        images, prompts = tiny_images(30, seed=9), [f"p{index}" for index in range(30)]
        expected = local_single.score(prompts, images)
        reward_fn = RemoteReward(f"http://{serve_address[0]}:{serve_address[1]}/pair", chunk_size=1, concurrency=4,
                                 max_retries=10)
        result = {}
        caller = threading.Thread(target=lambda: result.update(answer=reward_fn(images, prompts)))
        caller.start()
        time.sleep(1.0)
        victim = replica_names("pair")[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=False)
        caller.join(timeout=120)
        rewards, info = result["answer"]
        torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-5)  # every image answered, correctly
        assert info["retries"] >= 1  # the requests the dead replica held were sent again
    finally:
        serve.delete("pair")


@pytest.mark.slow
def test_stopping_the_application_drains_ongoing_requests(serve_address, tiny_reward_repo, local_single):
    from ray import serve

    serve.run(build_app({"model": str(tiny_reward_repo / "alignment"), "threads": 1, "max_batch_size": 64,
                         "batch_wait_ms": 2000}), name="drain", route_prefix="/drain")
    result = {}
    url = f"http://{serve_address[0]}:{serve_address[1]}/drain/score"
    caller = threading.Thread(target=lambda: result.update(
        answer=request(url, {"prompt": "a", "images": [b64(IMAGE_FILES[0])]})))
    caller.start()
    time.sleep(0.5)  # the request is now waiting in the replica for its batch
    serve.delete("drain")  # returns once the application is gone
    caller.join(timeout=60)
    status, _, answer = result["answer"]
    assert status == 200, answer
    assert_close(answer["rewards"], local_single.score("a", IMAGE_FILES[:1]))


# `llava-reward serve` as the console command runs it (`main`), in a Ray of its own in its own folder.
SERVE_COMMAND = """
import sys
import ray
from llava_reward.cli import main
ray.init(num_cpus=2, _temp_dir=sys.argv[1], include_dashboard=False, log_to_driver=False)
code = main(["serve", *sys.argv[2:]])
ray.shutdown()
sys.exit(code)
"""


@pytest.mark.slow
def test_the_serve_command_serves_until_sigterm_then_drains(tiny_reward_repo, local_single, tmp_path):
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # its own Ray, in its own folder
    command = [sys.executable, "-c", SERVE_COMMAND, ray_dir, "--model", str(tiny_reward_repo / "alignment"),
               "--port", str(port), "--threads", "1", "--max-batch-size", "64", "--batch-wait-ms", "5000"]
    log = tmp_path / "serve.log"  # a file, not a pipe: a full pipe would block the server
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if request(f"{url}/readyz")[0] == 200:
                    break
            except urllib.error.URLError:
                pass
            assert server.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        result = {}
        caller = threading.Thread(target=lambda: result.update(
            answer=request(f"{url}/score", {"prompt": "a", "images": [b64(IMAGE_FILES[0])]})))
        caller.start()
        time.sleep(2)  # the request now waits in the replica for its batch (5 s)
        server.send_signal(signal.SIGTERM)
        caller.join(timeout=60)
        assert "answer" in result, log.read_text()[-3000:]
        status, _, answer = result["answer"]
        assert status == 200, answer
        assert_close(answer["rewards"], local_single.score("a", IMAGE_FILES[:1]))
        assert server.wait(timeout=120) == 0
        assert "draining ongoing requests" in log.read_text()
    finally:
        if server.poll() is None:
            server.kill()  # our own child only
        shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.mark.slow
def test_the_serving_benchmark_runs_and_its_ray_data_rewards_equal_the_local_ones(tmp_path):
    """`benchmarks/bench_serving.py --quick` in its own process (its own Ray): a complete report, no failed request.
    Nothing here looks at a timing."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serving.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--threads", "1", "--results-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = [json.loads(path.read_text()) for path in tmp_path.glob("*.json")]
    modes = [row["mode"] for row in report["results"]]
    assert modes.count("server, 1-image requests") == 2 and modes.count("Ray Data score_dataset") == 1
    assert not any("failed requests" in note for note in report["notes"])
    for row in report["results"]:
        if row["mode"] == "Ray Data score_dataset":
            assert row["count"] == 8 and row["max_abs_diff_vs_local"] < 1e-5
        if row["mode"] == "server, 1-image requests":
            assert row["count"] == int(row["parallel"].split()[0]) * 4  # every request answered
