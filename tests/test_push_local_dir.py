"""`llava-reward push`: nothing outside the export is written or deleted, nothing outside the model folder is read,
only the code `auto_map` needs is uploaded, and no local path of this machine goes up (issue 15, case 7).

A perspective named `..` (on the command line or in the model's own config.json) used to make `--local-dir` delete
files outside the target folder; links out of the model folder were followed; every `*.py` was uploaded; the
uploaded config.json carried the base model's local path.
"""

import json
import os
from pathlib import Path

import pytest

from llava_reward import LlavaRewardScorer
from llava_reward.cli import main
from llava_reward.testing import save_tiny_perspective
from llava_reward.testing import save_tiny_vlm


CODE = [  # AutoConfig's, AutoModel's and AutoProcessor's modules, and their relative imports
    "configuration_llava_reward.py",
    "families.py",
    "image_inputs.py",
    "modeling_llava_reward.py",
    "objectives.py",
    "processing_llava_reward.py",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny_vlm("llava", tmp_path_factory.mktemp("base") / "base")


@pytest.fixture
def trained(base, tmp_path) -> Path:
    """A trained perspective whose base is recorded as the Hub id `org/tiny-llava` (its VLM config still holds the
    local path it was loaded from), with an evaluation's metrics.json, as `llava-reward evaluate` writes them."""
    out = save_tiny_perspective(base, tmp_path / "train_out", perspective="fidelity", base_model="org/tiny-llava")
    metrics = {"benchmark": "mjbench", "model": str(out), "data": str(tmp_path / "data" / "human"),
               "image_root": None, "results": {"overall": {"accuracy": 0.75}}}
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out


def push(*arguments) -> tuple[int, str, str]:
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["push", *map(str, arguments)])
    return code, stdout.getvalue(), stderr.getvalue()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("name", ["..", ".", "../elsewhere", "a/b", "", "-rf", ".hidden"])
def test_a_perspective_that_is_not_a_plain_folder_name_is_refused_and_nothing_is_touched(trained, tmp_path, name):
    hub = tmp_path / "exports" / "hub"
    hub.mkdir(parents=True)
    (hub / "notes.txt").write_text("the user's")
    (tmp_path / "exports" / "keep.txt").write_text("the user's too")
    before = snapshot(tmp_path)

    code, _, stderr = push(trained, "--repo-id", "me/rm", f"--perspective={name}", "--local-dir", hub)

    assert code == 1 and "Traceback" not in stderr
    assert f"llava-reward push: error: perspective {name!r} is not a plain folder name" in stderr
    assert "It comes from --perspective." in stderr
    assert snapshot(tmp_path) == before


def test_a_perspective_recorded_as_dotdot_in_config_json_is_refused(trained, tmp_path):
    config = json.loads((trained / "config.json").read_text())
    (trained / "config.json").write_text(json.dumps({**config, "perspective": ".."}))
    (tmp_path / "hub").mkdir()
    (tmp_path / "keep.txt").write_text("the user's")
    before = snapshot(tmp_path)

    code, _, stderr = push(trained, "--repo-id", "me/rm", "--local-dir", tmp_path / "hub")

    assert code == 1 and "perspective '..' is not a plain folder name" in stderr
    assert f"It comes from {trained}/config.json (pass --perspective NAME)." in stderr
    assert snapshot(tmp_path) == before


def test_a_target_with_files_an_export_does_not_write_is_refused_unless_overwrite(trained, tmp_path):
    target = tmp_path / "hub" / "fidelity"
    target.mkdir(parents=True)
    (target / "my_notes.txt").write_text("the user's")

    code, _, stderr = push(trained, "--repo-id", "me/rm", "--local-dir", tmp_path / "hub")
    assert code == 1 and f"{target} holds my_notes.txt, which an export does not write" in stderr
    assert sorted(path.name for path in target.iterdir()) == ["my_notes.txt"]

    code, _, stderr = push(trained, "--repo-id", "me/rm", "--local-dir", tmp_path / "hub", "--overwrite")
    assert code == 0, stderr
    assert not (target / "my_notes.txt").exists() and (target / "reward_head.safetensors").is_file()


def test_a_re_export_replaces_the_earlier_one_whole(trained, tmp_path):
    assert push(trained, "--repo-id", "me/rm", "--local-dir", tmp_path / "hub")[0] == 0
    target = tmp_path / "hub" / "fidelity"
    (target / "model.safetensors").write_bytes(b"an earlier full-model export's weights")  # a name exports write
    (trained / "metrics.json").unlink()

    assert push(trained, "--repo-id", "me/rm", "--local-dir", tmp_path / "hub")[0] == 0

    assert not (target / "model.safetensors").exists() and not (target / "metrics.json").exists()
    assert not list((tmp_path / "hub").glob(".*"))  # no staging folder left behind


def test_a_link_out_of_the_model_folder_is_refused(trained, tmp_path):
    (tmp_path / "secret.json").write_text('{"token": "hf_secret"}')
    (trained / "tokenizer_config.json").unlink()
    os.symlink(tmp_path / "secret.json", trained / "tokenizer_config.json")

    code, _, stderr = push(trained, "--repo-id", "me/rm", "--local-dir", tmp_path / "hub")

    assert code == 1 and "Traceback" not in stderr
    assert (f"{trained / 'tokenizer_config.json'} is a symbolic link to {tmp_path / 'secret.json'}, outside "
            f"{trained}: a push never reads files outside the model folder") in stderr
    assert not (tmp_path / "hub").exists()


def test_only_the_code_files_auto_map_needs_are_uploaded(trained, tmp_path):
    (trained / "my_training_notes.py").write_text("API_KEY = 'hf_secret'\n")
    code, stdout, stderr = push(trained, "--repo-id", "me/rm", "--dry-run")
    assert code == 0, stderr
    listed = [line.split()[0] for line in stdout.splitlines()[1:]]
    assert sorted(name for name in listed if name.endswith(".py")) == CODE  # auto_map's modules and their imports


def test_no_local_path_is_uploaded_and_the_export_still_loads(trained, base, tmp_path):
    code, _, stderr = push(trained, "--repo-id", "me/rm", "--local-dir", tmp_path / "hub")
    assert code == 0, stderr
    target = tmp_path / "hub" / "fidelity"
    for name in ("config.json", "metrics.json", "README.md"):
        text = (target / name).read_text()
        assert str(tmp_path) not in text and str(base.parent) not in text, name
    config = json.loads((target / "config.json").read_text())
    assert config["base_model"] == "org/tiny-llava" and config["vlm_config"]["_name_or_path"] is None
    metrics = json.loads((target / "metrics.json").read_text())
    assert (metrics["model"], metrics["data"]) == ("train_out", "human")  # their names, not their local paths
    assert metrics["results"] == {"overall": {"accuracy": 0.75}}
    LlavaRewardScorer.from_pretrained(target, base=base)
