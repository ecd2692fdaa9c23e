"""push_perspective and `llava-reward push`: the Hub's side is a recording stand-in for `HfApi` (no network)."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitOperationAdd
from huggingface_hub import CommitOperationDelete

from llava_reward.cli import main
from llava_reward.hub_cards.cards import REPO_CARD_MARKER
from llava_reward.hub_cards.push import push_perspective
from llava_reward.testing import save_tiny_perspective
from llava_reward.testing import save_tiny_vlm


# What `llava-reward train` leaves in its output folder besides the perspective itself: none of it is uploaded.
TRAINING_LEFTOVERS = {
    "training_args.bin": b"pickle",
    "trainer_state.json": b"{}",
    "optimizer.pt": b"pickle",
    "checkpoint-2/optimizer.pt": b"pickle",
    "checkpoint-2/reward_head.safetensors": b"weights",
    "runs/events.out.tfevents": b"logs",
}
UPLOADED = [
    "README.md",
    "chat_template.jinja",
    "config.json",
    "configuration_llava_reward.py",  # the processor's auto_map names these code files
    "families.py",
    "image_inputs.py",
    "lora/adapter_config.json",
    "lora/adapter_model.safetensors",
    "metrics.json",
    "modeling_llava_reward.py",  # config.json's auto_map: AutoModel loads the perspective with trust_remote_code
    "objectives.py",
    "processing_llava_reward.py",
    "processor_config.json",
    "reward_head.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]


@dataclass
class Commit:
    commit_url: str


class RecordingHfApi:
    """Stands in for `HfApi`: records every call; the repo starts with `existing` files (README text `readme`)."""

    def __init__(self, existing=(".gitattributes",), readme: str | None = None, tmp_path: Path | None = None):
        self.calls = []
        self.existing = list(existing)
        self.readme, self.tmp_path = readme, tmp_path

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def list_repo_files(self, repo_id, **kwargs):
        self.calls.append(("list_repo_files", repo_id, kwargs))
        return list(self.existing)

    def hf_hub_download(self, repo_id, filename, **kwargs):
        self.calls.append(("hf_hub_download", repo_id, filename, kwargs))
        path = self.tmp_path / "downloaded_README.md"
        path.write_text(self.readme)
        return str(path)

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, kwargs))
        self.operations = list(operations)
        return Commit(f"https://huggingface.co/{repo_id}/commit/0123abcd")

    def added(self) -> dict[str, bytes]:
        return {
            op.path_in_repo: Path(op.path_or_fileobj).read_bytes() if isinstance(op.path_or_fileobj, (str, Path)) else op.path_or_fileobj
            for op in self.operations
            if isinstance(op, CommitOperationAdd)
        }

    def deleted(self) -> list[str]:
        return [op.path_in_repo for op in self.operations if isinstance(op, CommitOperationDelete)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A training output folder: an adapter bundle on a tiny base recorded as the Hub id `org/tiny-llava`, its
    metrics.json, and training leftovers."""
    root = tmp_path_factory.mktemp("push")
    base = save_tiny_vlm("llava", root / "base")
    out = save_tiny_perspective(base, root / "train_out", perspective="fidelity", base_model="org/tiny-llava")
    (out / "metrics.json").write_text(json.dumps({"mjbench_fidelity": {"accuracy": 0.8}}))
    for name, content in TRAINING_LEFTOVERS.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(content)
    return out


def test_push_uploads_exactly_the_perspective_in_one_commit(trained, tmp_path):
    api = RecordingHfApi(tmp_path=tmp_path)
    url = push_perspective(trained, "me/llava-reward-tiny", "fidelity", private=True, api=api)
    assert url == "https://huggingface.co/me/llava-reward-tiny/commit/0123abcd"
    assert [call[0] for call in api.calls] == ["create_repo", "list_repo_files", "create_commit"]
    assert api.calls[0] == ("create_repo", "me/llava-reward-tiny", {"private": True, "exist_ok": True})
    assert api.calls[2][2] == {"commit_message": "Upload the fidelity perspective", "revision": None}
    added = api.added()
    assert sorted(added) == ["README.md"] + [f"fidelity/{name}" for name in UPLOADED]
    assert api.deleted() == []
    for name in set(UPLOADED) - {"README.md", "metrics.json", "config.json"}:
        assert added[f"fidelity/{name}"] == (trained / name).read_bytes(), name  # uploaded as saved
    # config.json as saved, but for the local path the VLM config was loaded from (tests/test_push_local_dir.py)
    saved = json.loads((trained / "config.json").read_text())
    saved["vlm_config"]["_name_or_path"] = None
    assert json.loads(added["fidelity/config.json"]) == saved
    assert json.loads(added["fidelity/metrics.json"]) == {"mjbench_fidelity": {"accuracy": 0.8}}
    card = added["fidelity/README.md"].decode()
    assert card.startswith("---\n") and "base_model: org/tiny-llava" in card
    assert 'llava_reward.load("me/llava-reward-tiny", perspective="fidelity")' in card
    assert "| mjbench_fidelity | accuracy | 0.8 |" in card
    root_card = added["README.md"].decode()
    assert REPO_CARD_MARKER in root_card and "[fidelity/README.md](fidelity/README.md)" in root_card


def test_a_repush_deletes_stale_files_and_updates_the_root_card(trained, tmp_path):
    existing = [
        ".gitattributes",
        "README.md",
        "alignment/config.json",
        "alignment/adapter_model.safetensors",
        "fidelity/config.json",
        "fidelity/model.safetensors",  # an earlier full-model push: must not survive next to the adapter
        "fidelity/old_notes.txt",
    ]
    api = RecordingHfApi(existing, readme=f"---\n---\n{REPO_CARD_MARKER}\n# old", tmp_path=tmp_path)
    push_perspective(trained, "me/llava-reward-tiny", "fidelity", revision="v2", api=api)
    assert [call[0] for call in api.calls] == [
        "create_repo",
        "create_branch",
        "list_repo_files",
        "hf_hub_download",
        "create_commit",
    ]
    assert api.calls[1] == ("create_branch", "me/llava-reward-tiny", {"branch": "v2", "exist_ok": True})
    assert api.calls[-1][2]["revision"] == "v2"
    assert sorted(api.deleted()) == ["fidelity/model.safetensors", "fidelity/old_notes.txt"]
    root_card = api.added()["README.md"].decode()
    assert "`alignment`" in root_card and "`fidelity`" in root_card
    assert 'llava_reward.load("me/llava-reward-tiny", perspective=["alignment", "fidelity"])' in root_card
    assert 'revision="v2"' in api.added()["fidelity/README.md"].decode()


def test_a_hand_written_root_card_is_left_alone(trained, tmp_path):
    api = RecordingHfApi([".gitattributes", "README.md"], readme="# Our own card", tmp_path=tmp_path)
    push_perspective(trained, "me/llava-reward-tiny", "fidelity", api=api)
    assert "README.md" not in api.added() and "fidelity/README.md" in api.added()


def test_perspective_and_base_model_are_recorded_in_the_uploaded_config(trained, tmp_path):
    api = RecordingHfApi(tmp_path=tmp_path)
    push_perspective(
        trained, "me/rm", "artifacts", base_model="org/other-llava", base_model_revision="abc123", api=api
    )
    config = json.loads(api.added()["artifacts/config.json"])
    assert (config["perspective"], config["base_model"], config["base_model_revision"]) == (
        "artifacts",
        "org/other-llava",
        "abc123",
    )
    assert json.loads((trained / "config.json").read_text())["perspective"] == "fidelity"  # the source is untouched


def test_a_local_base_model_path_is_refused(tmp_path):
    base = save_tiny_vlm("llava", tmp_path / "base")
    out = save_tiny_perspective(base, tmp_path / "out", perspective="safety", lora=False)
    api = RecordingHfApi(tmp_path=tmp_path)
    with pytest.raises(ValueError, match="which is not a Hub id: nobody else could load it"):
        push_perspective(out, "me/rm", "safety", api=api)
    assert api.calls == []  # nothing happened on the Hub
    push_perspective(out, "me/rm", "safety", base_model="org/tiny-llava", api=api)
    assert "safety/adapter_model.safetensors" not in api.added()  # no LoRA in this bundle


def test_a_full_model_folder_uploads_its_weights_and_code(tmp_path):
    from llava_reward import LlavaRewardModel
    from llava_reward import LlavaRewardProcessor
    from llava_reward.testing import tiny_vlm

    vlm, vlm_processor = tiny_vlm("qwen2_5_vl")
    LlavaRewardModel.from_vlm(vlm, perspective="overall").save_pretrained(tmp_path / "full")
    LlavaRewardProcessor.from_vlm_processor(vlm_processor).save_pretrained(tmp_path / "full")
    torch.save({}, tmp_path / "full" / "optimizer.pt")
    api = RecordingHfApi(tmp_path=tmp_path)
    push_perspective(tmp_path / "full", "me/rm", "overall", api=api)
    uploaded = sorted(path.removeprefix("overall/") for path in api.added() if path.startswith("overall/"))
    assert "model.safetensors" in uploaded and "modeling_llava_reward.py" in uploaded  # trust_remote_code loading
    assert "reward_head.safetensors" not in uploaded and "optimizer.pt" not in uploaded
    assert "| Trained weights | all weights (full fine-tuning" in api.added()["overall/README.md"].decode()


def test_a_folder_without_a_perspective_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="holds no trained perspective"):
        push_perspective(tmp_path, "me/rm", "fidelity", api=RecordingHfApi(tmp_path=tmp_path))


def test_cli_local_dir_writes_a_hub_ready_folder(trained, tmp_path, capsys):
    exit_code = main(["push", str(trained), "--repo-id", "me/llava-reward-tiny", "--local-dir", str(tmp_path / "hub")])
    assert exit_code == 0
    folder = tmp_path / "hub" / "fidelity"
    assert capsys.readouterr().out.strip() == f"wrote {len(UPLOADED)} files to {folder}"
    assert sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()) == UPLOADED
    assert "subfolder=\"fidelity\"" in (folder / "README.md").read_text()
    # The folder loads as a perspective (the base is found through `base=`, as it is not on this machine's Hub cache).
    from llava_reward import LlavaRewardScorer

    LlavaRewardScorer.from_pretrained(tmp_path / "hub", subfolder="fidelity", base=trained.parent / "base")


def test_cli_local_dir_can_render_the_card_into_the_bundle_itself(trained, tmp_path):
    bundle = shutil.copytree(trained, tmp_path / "fidelity")
    assert main(["push", str(bundle), "--repo-id", "me/llava-reward-tiny", "--local-dir", str(tmp_path)]) == 0
    assert "## How to read the reward" in (bundle / "README.md").read_text()
    assert all((bundle / name).is_file() for name in TRAINING_LEFTOVERS)  # nothing else in the folder is touched
    assert (bundle / "lora" / "adapter_model.safetensors").read_bytes() == (trained / "lora" / "adapter_model.safetensors").read_bytes()


def test_cli_dry_run_lists_the_files_and_sends_nothing(trained, capsys):
    assert main(["push", str(trained), "--repo-id", "me/llava-reward-tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "would upload to me/llava-reward-tiny/fidelity/ (dry run, nothing sent):"
    assert [line.split()[0] for line in out[1:]] == UPLOADED


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["push", str(tmp_path / "missing"), "--repo-id", "me/rm", "--perspective", "x", "--dry-run"]) == 1
    assert capsys.readouterr().err.strip() == f"llava-reward push: error: {tmp_path / 'missing'} is not a folder."
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "config.json").write_text('{"perspective": "x"}')
    assert main(["push", str(tmp_path / "not_a_model"), "--repo-id", "me/rm", "--dry-run"]) == 1
    assert "holds no trained perspective" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "--repo-id", "not a repo id", "--perspective", "x", "--dry-run"]) == 1
