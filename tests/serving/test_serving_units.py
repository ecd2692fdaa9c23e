"""The serving parts that need no Ray: request checking, image decoding under limits, the image-root rule, options
and the `serve` command's flags, the client's retries against a real HTTP server on loopback, and the offline
engine's rows, shard files and output-folder rules."""

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from llava_reward.cli import build_parser
from llava_reward.cli import main
from llava_reward.cli.serve import serve_options
from llava_reward.data_formats import BadRow
from llava_reward.image_inputs import InputError
from llava_reward.serving import RemoteReward
from llava_reward.serving import RemoteRewardError
from llava_reward.serving.client import encode_images
from llava_reward.serving.offline import ShardWriter
from llava_reward.serving.offline import read_scores
from llava_reward.serving.offline import read_skipped
from llava_reward.serving.offline import score_dataset
from llava_reward.serving.offline import source_rows
from llava_reward.serving.options import ServeOptions
from llava_reward.serving.protocol import Limits
from llava_reward.serving.protocol import RequestError
from llava_reward.serving.protocol import decode_image
from llava_reward.serving.protocol import parse_request
from llava_reward.testing import tiny_images
from llava_reward.testing import write_bad_image_files


def encoded(image: Image.Image, image_format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return base64.b64encode(buffer.getvalue()).decode()


PNG = encoded(tiny_images(1)[0])


@pytest.mark.parametrize(
    "body, status, field",
    [
        (b"{not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        ({"images": [PNG]}, 422, "prompt"),
        ({"prompt": "a", "prompts": ["a"], "images": [PNG]}, 422, "prompt"),
        ({"prompt": 3, "images": [PNG]}, 422, "prompt"),
        ({"prompts": ["a", "b"], "images": [PNG]}, 422, "prompts"),
        ({"prompts": ["a", 7], "images": [PNG, PNG]}, 422, "prompts[1]"),
        ({"prompt": "a"}, 422, "images"),
        ({"prompt": "a", "images": PNG}, 422, "images"),
        ({"prompt": "a", "images": []}, 422, "images"),
        ({"prompt": "a", "images": [PNG, 5]}, 422, "images[1]"),
        ({"prompt": "a", "images": ["not base64!"]}, 422, "images[0]"),
        ({"prompt": "a", "images": [{"path": "x.png"}]}, 403, "images[0].path"),  # no image root
        ({"prompt": "a", "image": [PNG]}, 422, "image"),  # a typo is named, not ignored
        ({"prompt": "a", "images": [PNG] * 5}, 413, "images"),
        ({"prompt": "x" * 101, "images": [PNG]}, 413, "prompt"),
    ],
)
def test_bad_requests_name_the_field(body, status, field):
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as caught:
        parse_request(body, Limits(max_images=4, max_prompt_chars=100), "score")
    assert (caught.value.status, caught.value.field) == (status, field)
    assert str(caught.value).startswith(f"{field}: ")


def test_compare_requests_need_two_image_lists_of_one_length():
    limits = Limits()
    parsed = parse_request(json.dumps({"prompt": "a", "images_a": [PNG], "images_b": [PNG]}).encode(), limits,
                           "compare")
    assert parsed.prompts == ["a"] and [len(found) for found in parsed.images.values()] == [1, 1]
    with pytest.raises(RequestError, match="images_b: has 2 images, images_a has 1"):
        parse_request(json.dumps({"prompt": "a", "images_a": [PNG], "images_b": [PNG, PNG]}).encode(), limits,
                      "compare")


def test_body_over_the_limit_is_refused_before_parsing():
    with pytest.raises(RequestError) as caught:
        parse_request(b"x" * 101, Limits(max_body_bytes=100), "score")
    assert caught.value.status == 413 and caught.value.field == "body"


def test_decode_image_formats_and_limits(tmp_path):
    image = tiny_images(1, [(20, 10)])[0]
    for image_format in ("PNG", "JPEG", "WEBP"):
        data = base64.b64decode(encoded(image, image_format))
        decoded = decode_image("images[0]", data, Limits())
        assert decoded.size == (20, 10) and decoded.mode == "RGB"
    png = base64.b64decode(encoded(image))
    assert np.array_equal(np.asarray(decode_image("x", png, Limits())), np.asarray(image))  # lossless
    bad_files = write_bad_image_files(tmp_path)
    cases = {
        "GIF": (base64.b64decode(encoded(image, "GIF")), 422, "GIF images are not accepted"),
        "pixels": (png, 413, "20x10 = 200 pixels is over the limit of 199"),
        "text": (b"a caption, not an image", 422, "undecodable"),
        "truncated": (bad_files["truncated"].read_bytes(), 422, "corrupt or truncated"),
        # Its header claims 20000 x 20000: refused from the header, before any pixel is decoded.
        "bomb": (bad_files["decompression_bomb"].read_bytes(), 413, "over the pixel limit"),
    }
    for name, (data, status, message) in cases.items():
        with pytest.raises(RequestError, match=message) as caught:
            decode_image("images[3]", data, Limits(max_pixels=199 if name == "pixels" else 4096 * 4096))
        assert caught.value.status == status and caught.value.field == "images[3]", name


def test_image_paths_resolve_inside_the_root_only(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    tiny_images(1)[0].save(root / "sub" / "in.png")
    tiny_images(1)[0].save(outside / "secret.png")
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "dir_link").symlink_to(outside)
    limits = Limits(image_root=str(root))

    def locate(path):
        body = json.dumps({"prompt": "a", "images": [{"path": path}]}).encode()
        return parse_request(body, limits, "score").images["images"][0][1]

    assert locate("sub/in.png") == (root / "sub" / "in.png").resolve()
    assert locate("sub/../sub/in.png") == (root / "sub" / "in.png").resolve()
    for escaping in ("../outside/secret.png", str(outside / "secret.png"), "link.png", "dir_link/secret.png"):
        with pytest.raises(RequestError, match="outside the image root") as caught:
            locate(escaping)
        assert caught.value.status == 403 and caught.value.field == "images[0].path"
    with pytest.raises(RequestError, match="no such file"):
        locate("sub/missing.png")
    with pytest.raises(RequestError, match="is not a file"):
        locate("sub")


def test_serve_options_convert_strings_and_refuse_unknown_or_bad_values():
    options = ServeOptions.from_dict(
        {"model": "m", "perspectives": "a, b", "max_batch_size": "8", "num_gpus": "0.5", "image_root": "null"}
    )
    assert (options.perspectives, options.max_batch_size, options.num_gpus, options.image_root) == (
        ["a", "b"], 8, 0.5, None)
    assert options.max_ongoing_requests == 16 and options.limits().max_body_bytes == 64 * 2**20
    for values, message in [
        ({"model": "m", "max_batch_sise": 8}, "Unknown serving option"),
        ({"model": "m", "max_batch_size": "8.5"}, "`max_batch_size` must be an integer"),
        ({"model": "m", "replicas": 0}, "`replicas` must be >= 1"),
        ({"model": "m", "trust_remote_code": "perhaps"}, "must be true or false"),
        ({}, "missing 1 required positional argument: 'model'"),
    ]:
        with pytest.raises((ValueError, TypeError), match=message):
            ServeOptions.from_dict(values)


def test_serve_command_flags_are_the_serve_options():
    parser = build_parser()
    args = parser.parse_args(["serve", "--model", "m", "--perspectives", "a,b", "--replicas", "2", "--max-batch-size",
                              "16", "--batch-wait-ms", "2.5", "--host", "0.0.0.0", "--port", "9000", "--image-root",
                              "/d", "--trust-remote-code"])
    options = ServeOptions.from_dict(serve_options(args))
    assert (options.perspectives, options.replicas, options.max_batch_size, options.batch_wait_ms) == (
        ["a", "b"], 2, 16, 2.5)
    assert options.image_root == "/d" and options.trust_remote_code and options.request_timeout_s == 60.0
    assert (args.host, args.port) == ("0.0.0.0", 9000)
    with pytest.raises(SystemExit):  # --model is required
        parser.parse_args(["serve", "--replicas", "2"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--replicas", "0"], "--replicas must be >= 1, got 0."),
        (["--perspectives", "a", "--subfolder", "b"], "Give --subfolder (one perspective) or --perspectives"),
        (["--image-root", "/no/such/folder"], "--image-root /no/such/folder: no such folder."),
        (["--device", "nonsense"], "--device nonsense: "),
        (["--port", "70000"], "--port 70000: not a TCP port"),
    ],
)
def test_serve_command_refuses_bad_values_in_one_line_before_starting_ray(flags, message, capsys, tmp_path):
    code = main(["serve", "--model", str(tmp_path), *flags])
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("llava-reward serve: error: ") and message in error
    assert error.count("\n") == 1


def test_serve_and_ray_score_refuse_a_model_they_cannot_read_before_starting_ray(capsys, tmp_path):
    ray_score = ["score", "--engine", "ray", "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    for command in (["serve"], ray_score):
        assert main([*command, "--model", str(tmp_path / "missing")]) == 1
        assert f"--model {tmp_path / 'missing'}: no such folder." in capsys.readouterr().err
        assert main([*command, "--model", str(tmp_path)]) == 1  # a folder, but no reward model in it
        assert f"--model {tmp_path}: not a LLaVA-Reward model ({tmp_path} holds no config.json)." in \
            capsys.readouterr().err
        assert main([*command, "--model", str(tmp_path), "--perspectives", "alignment"]) == 1
        assert f"--model {tmp_path} (alignment): no such folder {tmp_path / 'alignment'}." in capsys.readouterr().err


# --- The client's retries, against a real HTTP server on loopback -------------------------------------------------


class ScriptedServer:
    """An HTTP server on 127.0.0.1 answering POSTs from a script of (status, headers, body), then 200 rewards."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._send(200, {}, json.dumps({"perspectives": {"overall": {"objective": "bt", "tau": 0.1}}}))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if server.script:
                    self._send(*server.script.pop(0))
                else:  # reward = the prompt's length: tells which chunk came back where
                    self._send(200, {}, json.dumps({"rewards": [float(len(p)) for p in body["prompts"]]}))

            def _send(self, status, headers, body):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.http.shutdown()
        self.http.server_close()


def test_client_retries_overload_and_dead_replicas_then_answers_in_order():
    script = [
        (503, {"Retry-After": "0"}, "Request dropped due to backpressure"),
        (429, {}, "slow down"),
        (500, {}, "Internal Server Error"),  # the proxy's plain answer when a replica died mid-request
        (504, {}, json.dumps({"error": "no answer within the request deadline", "field": None})),
    ]
    with ScriptedServer(script) as server:
        client = RemoteReward(server.url, chunk_size=2, concurrency=1, backoff_s=0.01)
        prompts = ["a", "bb", "ccc", "dddd", "eeeee"]
        rewards, info = client(tiny_images(5), prompts, {})
    assert rewards.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] and rewards.dtype == torch.float32
    assert info["retries"] == 4 and client.retries.value == 4
    assert len(server.requests) == 3 + 4  # three chunks, four retried attempts


def test_client_does_not_retry_refusals_and_bounds_its_retries():
    refusal = json.dumps({"error": "images[0]: not a PNG, JPEG or WebP image (undecodable)", "field": "images[0]"})
    internal = json.dumps({"error": "internal error: boom", "field": None})
    with ScriptedServer([(422, {}, refusal), (500, {}, internal)] + [(503, {}, "busy")] * 3) as server:
        client = RemoteReward(server.url, max_retries=2, backoff_s=0.01)
        with pytest.raises(RemoteRewardError, match="422 images\\[0\\]: not a PNG") as caught:
            client.score("a", tiny_images(1))
        assert (caught.value.status, caught.value.field) == (422, "images[0]")
        with pytest.raises(RemoteRewardError, match="500 internal error: boom"):  # the server's own error: not retried
            client.score("a", tiny_images(1))
        with pytest.raises(RemoteRewardError, match="503 HTTP 503 \\(after 3 attempts\\)"):
            client.score("a", tiny_images(1))
        assert len(server.requests) == 1 + 1 + 3


def test_client_gives_up_on_an_unreachable_server():
    with ScriptedServer([]) as server:
        url = server.url
    client = RemoteReward(url, max_retries=2, backoff_s=0.01)
    with pytest.raises(RemoteRewardError, match="no answer after 3 attempts"):
        client.score("a", tiny_images(1))


def test_client_encodes_every_image_layout_to_the_same_pixels():
    images = tiny_images(3, seed=4)
    uint8 = np.stack([np.asarray(image) for image in images])  # NHWC uint8
    floats = torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 255  # NCHW float in [0, 1]
    assert encode_images(images) == encode_images(uint8) == encode_images(floats)


# --- The offline engine's rows, shards and output folder ----------------------------------------------------------


def write_rows(folder, rows: list) -> str:
    path = folder / "rows.jsonl"
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return str(path)


def test_source_rows_are_the_local_engines_rows_in_its_order(tmp_path):
    from llava_reward.cli.score import read_rows as local_rows

    for index, image in enumerate(tiny_images(3)):
        image.save(tmp_path / f"{index}.png")
    source = write_rows(tmp_path, [
        {"prompt": "a cat", "path": "0.png", "label": 1},
        {"prompt": ["a dog", "a wolf"], "chosen_path": "1.png", "reject_path": "2.png", "c_rate": 3, "r_rate": 1},
        "not json",
        {"prompt": "a car", "path": "missing.png", "label": 0},
        {"prompt": "a tree", "image": "sub/none.png"},
    ])
    rows, name = source_rows(source)
    assert name == source
    expected = local_rows(source)
    assert [json.loads(row["row"]) for row in rows] == [getattr(row, "number", getattr(row, "row", None))
                                                         for row in expected] == [0, 1, 2, 3, 4]
    assert [row["index"] for row in rows] == [0, 1, 2, 3, 4]
    assert json.loads(rows[0]["head"]) == {"row": 0, "prompt": "a cat", "path": "0.png", "label": 1}
    assert rows[0]["paths"] == [str((tmp_path / "0.png").resolve())] and rows[0]["data"] == [None]
    assert rows[1]["prompts"] == ["a dog", "a wolf"] and len(rows[1]["paths"]) == 2  # chosen, rejected
    assert [row["error"] for row in rows if row["error"]] == [str(bad.problem) for bad in expected
                                                              if isinstance(bad, BadRow)]
    assert rows[2]["error"].startswith("not valid JSON") and "missing.png" in rows[3]["error"]
    with pytest.raises(InputError, match="`prompt` applies to an image folder only"):
        source_rows(source, prompt="a cat")


def test_image_folder_rows_take_one_prompt_or_caption_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name, image in zip(["b.png", "a.jpg", "sub/c.webp"], tiny_images(3)):
        image.save(tmp_path / name)
    (tmp_path / "a.txt").write_text("a caption\n")
    (tmp_path / "notes.md").write_text("not an image")
    rows, _ = source_rows(tmp_path, prompt="one prompt")
    assert [json.loads(row["head"]) for row in rows] == [
        {"row": 0, "prompt": "one prompt", "image": "a.jpg"}, {"row": 1, "prompt": "one prompt", "image": "b.png"},
        {"row": 2, "prompt": "one prompt", "image": "sub/c.webp"}]
    rows, _ = source_rows(tmp_path)
    assert rows[0]["prompts"] == ["a caption"] and rows[0]["error"] is None
    assert rows[1]["error"] == "b.png: no prompt: pass a prompt for every image, or write a caption file b.txt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        source_rows(tmp_path / "empty")


def test_dataset_rows_carry_their_embedded_image_bytes(tmp_path):
    from datasets import Dataset
    from datasets import Image as ImageFeature

    images = tiny_images(2)
    dataset = Dataset.from_dict({"prompt": ["a", "b"], "image": images, "label": [1, 0]}).cast_column(
        "image", ImageFeature())
    rows, _ = source_rows(dataset)
    assert [json.loads(row["head"]) for row in rows] == [{"row": 0, "prompt": "a", "label": 1},
                                                         {"row": 1, "prompt": "b", "label": 0}]
    decoded = decode_image("x", rows[1]["data"][0], Limits())
    assert rows[1]["paths"] == [None] and np.array_equal(np.asarray(decoded), np.asarray(images[1]))


def test_shard_writer_writes_whole_shards_in_row_order_whatever_order_rows_arrive(tmp_path):
    writer = ShardWriter(tmp_path, num_rows=7, shard_size=3)

    def part(indices, bad=()):
        return pa.table({
            "index": pa.array(indices, pa.int64()),
            "row": [json.dumps(index) for index in indices],
            "line": [None if index in bad else json.dumps({"row": index, "reward": index / 10}) for index in indices],
            "error": ["broken" if index in bad else None for index in indices],
        })

    assert writer.add(part([4, 0])) == []
    assert list(tmp_path.iterdir()) == []  # no shard is complete: nothing written, not even partly
    assert writer.add(part([6, 2, 1], bad=[1])) == [2, 0]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "shard-00000-of-00003.jsonl", "shard-00002-of-00003.jsonl", "skipped-00000-of-00003.jsonl"]
    assert writer.add(part([5, 3])) == [1]
    assert [row["row"] for row in read_scores(tmp_path)] == [0, 2, 3, 4, 5, 6]
    assert read_scores(tmp_path)[1] == {"row": 2, "reward": 0.2}
    assert read_skipped(tmp_path) == [BadRow(1, "broken")]


def test_output_folder_is_never_shared_by_two_jobs(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    tiny_images(1)[0].save(images / "a.png")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(InputError, match="not empty and holds no scoring.json"):
        score_dataset("some-model", images, tmp_path / "mine", prompt="a cat")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"
    # A finished job: its manifest and its only shard exist, so a rerun loads no model and starts no Ray.
    done = tmp_path / "done"
    with pytest.raises(InputError, match="missing.jsonl: file not found"):  # fails before the folder is made
        score_dataset("some-model", images / "missing.jsonl", done)
    assert not done.exists()
    from llava_reward.serving.offline import fingerprint

    manifest = {"source": str(images), "rows_fingerprint": fingerprint(source_rows(images, prompt="a cat")[0]),
                "num_rows": 1, "shard_size": 4, "model": "some-model", "perspectives": None, "subfolder": None,
                "base_model": None}
    done.mkdir()
    (done / "scoring.json").write_text(json.dumps(manifest))
    (done / "shard-00000-of-00001.jsonl").write_text('{"row": 0, "reward": 1.0}\n')
    summary = score_dataset("some-model", images, done, prompt="a cat", shard_size=4)
    assert summary.written == [] and [path.name for path in summary.skipped] == ["shard-00000-of-00001.jsonl"]
    with pytest.raises(InputError, match="holds scores of another job \\(rows_fingerprint: "):
        score_dataset("some-model", images, done, prompt="a dog", shard_size=4)
    with pytest.raises(InputError, match="holds scores of another job \\(shard_size: 4 -> 8"):
        score_dataset("some-model", images, done, prompt="a cat", shard_size=8)
    tiny_images(1)[0].save(images / "b.png")  # a new image changes the rows
    with pytest.raises(InputError, match="rows_fingerprint"):
        score_dataset("some-model", images, done, prompt="a cat", shard_size=4)
