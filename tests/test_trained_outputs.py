"""What a user does with `llava-reward train` output, from the command line: its card and training-data record, a
Hub-ready export whose metadata the Hub's parser accepts, evaluations that know which images the model saw, every
data format `train` reads, and the command line's manners (the model it loaded, devices, progress, paths)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from huggingface_hub import ModelCard
from huggingface_hub import metadata_load

from llava_reward.cli import main


VENV_BIN = Path(sys.executable).parent


def cli(*arguments, cwd, **env):
    return subprocess.run(
        [str(VENV_BIN / "llava-reward"), *map(str, arguments)], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def test_train_writes_a_card_and_what_the_model_saw(tiny_trained):
    output = tiny_trained["lora"]
    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "llava-reward" and card.data.pipeline_tag == "zero-shot-image-classification"
    assert "text-to-image-reward" in card.data.tags and "base_model: ''" not in card.content  # not PEFT's blank card
    assert 'llava_reward.load("' in card.content and str(tiny_trained["work"]) not in card.content
    record = json.loads((output / "training_data.json").read_text())
    assert record["num_images"] == 16 == len(record["image_fingerprints"])  # 8 pairs of 2 distinct images
    assert not (output / "lora" / "README.md").exists()  # PEFT's blank template is not shipped


def test_push_local_dir_is_hub_ready_and_its_metadata_parses(tiny_trained, tmp_path):
    output = tiny_trained["lora"]
    runs = [
        {"benchmark": "mjbench", "dataset_name": "human", "held_out": True,
         "results": {"overall": {"accuracy_with_ties": 0.71, "accuracy_without_ties": 0.72}}},
        {"benchmark": "mjbench", "dataset_name": "training", "held_out": False,
         "results": {"overall": {"accuracy_with_ties": 0.99, "accuracy_without_ties": 0.99}}},
    ]
    (tmp_path / "metrics.json").write_text(json.dumps(runs))
    code = main(["push", str(output), "--repo-id", "me/llava-reward-tiny", "--perspective", "alignment",
                 "--base-model", "org/tiny-llava", "--metrics", str(tmp_path / "metrics.json"),
                 "--license", "apache-2.0", "--local-dir", str(tmp_path / "hub")])
    assert code == 0
    folder = tmp_path / "hub" / "alignment"
    metadata = metadata_load(folder / "README.md")
    for key in ("library_name", "pipeline_tag", "base_model", "tags", "license", "model-index"):
        assert key in metadata, key
    assert metadata["base_model"] == "org/tiny-llava"
    card = ModelCard.load(folder / "README.md")
    results = {(result.dataset_name, result.metric_type): result.metric_value for result in card.data.eval_results}
    assert results == {("MJ-Bench human", "accuracy_with_ties"): 0.71, ("MJ-Bench human", "accuracy_without_ties"): 0.72}
    assert "NOT held out" in card.content  # the contaminated run is shown, marked, and kept out of the model-index
    assert str(tiny_trained["work"]) not in card.content and "/tmp" not in card.content
    assert (folder / "lora" / "adapter_config.json").is_file() and (folder / "training_data.json").is_file()


def test_evaluate_knows_when_the_benchmark_is_the_training_data(tiny_trained, tmp_path):
    work, model = tiny_trained["work"], tiny_trained["lora"]
    seen = cli("evaluate", "--model", model, "--benchmark", "pairwise", "--data", "tiny-task/train_pairs.json",
               "--output", tmp_path / "seen", "--bootstrap", "0", cwd=work)
    assert seen.returncode == 0, seen.stderr
    assert "warning: Not held out: the model was trained on images of 8 of these 8 rows" in seen.stderr
    metrics = json.loads((tmp_path / "seen" / "metrics.json").read_text())
    assert metrics["held_out"] is False and metrics["training_overlap"] == {"rows": 8, "images": 16, "of_rows": 8}
    assert "**Not held out:**" in (tmp_path / "seen" / "report.md").read_text()

    unseen = cli("evaluate", "--model", model, "--benchmark", "pairwise", "--data", "tiny-task/eval_pairs.json",
                 "--output", tmp_path / "unseen", "--bootstrap", "0", cwd=work)
    assert unseen.returncode == 0 and "Not held out" not in unseen.stderr
    metrics = json.loads((tmp_path / "unseen" / "metrics.json").read_text())
    assert metrics["held_out"] is True and metrics["training_overlap"]["rows"] == 0


def test_score_and_evaluate_read_every_format_train_reads(tiny_trained, tmp_path, monkeypatch, capsys):
    # In process (`main`): the console script's subprocess route is tested above and below.
    monkeypatch.chdir(tmp_path)
    work, model = tiny_trained["work"], str(tiny_trained["lora"])
    rows = json.loads((work / "tiny-task" / "eval_pairs.json").read_text())
    pairs = [{"prompt": row["prompt"], "chosen": str(work / "tiny-task" / row["chosen_path"]),
              "rejected": str(work / "tiny-task" / row["reject_path"])} for row in rows]
    dataset = datasets.Dataset.from_list(pairs)
    dataset.to_parquet(str(tmp_path / "pairs.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    results = {}
    for source in ("pairs.parquet", "saved", "pairs.jsonl"):
        assert main(["score", "--model", model, "--input", source, "--progress", "none"]) == 0
        results[source] = [line["p_chosen"] for line in map(json.loads, capsys.readouterr().out.splitlines())]
        assert main(["evaluate", "--model", model, "--benchmark", "pairwise", "--data", source, "--output",
                     f"eval-{source}", "--bootstrap", "0"]) == 0
        evaluated = json.loads((tmp_path / f"eval-{source}" / "metrics.json").read_text())
        assert evaluated["results"]["overall"]["num_pairs"] == 4
    assert len(results["pairs.parquet"]) == 4
    assert results["pairs.parquet"] == pytest.approx(results["saved"], abs=1e-6)
    assert results["pairs.parquet"] == pytest.approx(results["pairs.jsonl"], abs=1e-6)


def test_the_command_line_says_what_it_loaded_reports_plain_progress_and_refuses_missing_devices(tiny_trained):
    work, model = tiny_trained["work"], tiny_trained["lora"]
    images = sorted((work / "tiny-task" / "images").glob("eval_*.png"))
    done = cli("score", "--model", model, "--prompt", "a red square", *images, "--batch-size", "1", "--progress",
               "plain", cwd=work)
    assert done.returncode == 0, done.stderr
    assert f"llava-reward score: model {model}: overall perspective, objective bt, base ../base, on cpu" in done.stderr
    assert "scoring: 8/8 batches (" in done.stderr  # plain lines, also when stderr is not a terminal
    assert "FutureWarning" not in done.stderr and "Traceback" not in done.stderr
    device = cli("score", "--model", model, "--prompt", "x", images[0], "--device", "cuda:7", cwd=work)
    assert device.returncode == 1
    assert device.stderr.startswith("llava-reward score: error: --device cuda:7: no cuda device is available (")
    assert device.stderr.count("\n") == 1


def test_recipes_accelerate_configs_and_metrics_by_name(tmp_path, monkeypatch, capsys):
    # In process from a folder outside the checkout; the last call is the console script's, for its exit code.
    monkeypatch.chdir(tmp_path)

    def printed(*arguments) -> str:
        assert main(list(arguments)) == 0
        return capsys.readouterr().out

    with pytest.raises(SystemExit) as help_exit:
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert help_exit.value.code == 0
    assert "qwen2_5_vl_alignment" in help_text and "tiny" in help_text and "--data.train" in help_text
    listed = printed("paths", "recipes").split()
    assert {"tiny", "default_fidelity", "qwen2_5_vl_alignment"} <= set(listed)
    ddp = Path(printed("paths", "accelerate", "ddp").strip())
    assert ddp.is_file() and ddp.name == "ddp.yaml"
    import evaluate

    metric = evaluate.load(printed("paths", "metrics", "pairwise_accuracy").strip())
    assert metric.compute(chosen_scores=[1.0], rejected_scores=[0.0], num_bootstrap=0)["accuracy_with_ties"] == 1.0
    missing = cli("train", "--config", "no_such_recipe", cwd=tmp_path)
    assert missing.returncode == 1 and "nor the name of a shipped recipe (default_fidelity, " in missing.stderr


def test_broken_model_folders_are_named_in_one_line(tiny_trained, tmp_path):
    import shutil

    lora, full = (shutil.copytree(tiny_trained[name], tmp_path / name, ignore=shutil.ignore_patterns("checkpoint-*"))
                  for name in ("lora", "full"))
    shutil.copytree(tiny_trained["work"] / "tiny-task" / "base", tmp_path / "base")
    image = next((tiny_trained["work"] / "tiny-task" / "images").glob("*.png"))
    (lora / "reward_head.safetensors").write_bytes((lora / "reward_head.safetensors").read_bytes()[:100])
    (full / "model.safetensors").write_bytes((full / "model.safetensors").read_bytes()[:1000])
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    (tmp_path / "unknown").mkdir()
    shutil.copytree(tiny_trained["full"], tmp_path / "unknown" / "m", ignore=shutil.ignore_patterns("checkpoint-*"))
    (tmp_path / "unknown" / "m" / "config.json").write_text(json.dumps({**config, "objective": "elo"}))
    for folder, message in (
        (lora, "reward_head.safetensors: not a readable safetensors file ("),
        (full, "a weights file is not valid safetensors ("),
        (tmp_path / "unknown" / "m", "`objective` must be one of ('bt', 'gpm', 'ce'), got 'elo'"),
    ):
        done = cli("score", "--model", folder, "--prompt", "a red square", image, cwd=tmp_path)
        last = done.stderr.strip().splitlines()[-1]  # after the base model's loading bar, if any
        assert done.returncode == 1 and "Traceback" not in done.stderr and message in last, done.stderr
        assert last.startswith(f"llava-reward score: error: --model {folder}: ")


def test_a_head_file_of_the_wrong_shape_is_refused_naming_it(tiny_trained, tmp_path):
    """A (1, 1) value head where (1, H) is expected must not load by broadcasting (issue 15, case 2)."""
    import shutil

    from safetensors.torch import load_file
    from safetensors.torch import save_file

    import llava_reward

    lora = shutil.copytree(tiny_trained["lora"], tmp_path / "lora", ignore=shutil.ignore_patterns("checkpoint-*"))
    shutil.copytree(tiny_trained["work"] / "tiny-task" / "base", tmp_path / "base")
    head_file = lora / "reward_head.safetensors"
    tensors = load_file(head_file)
    name = next(name for name, tensor in tensors.items() if tensor.ndim == 2 and tensor.shape[0] == 1)
    tensors[name] = tensors[name][:, :1].clone()
    save_file(tensors, head_file)
    with pytest.raises(ValueError, match=rf"{head_file} holds tensors of the wrong shape: {name}: \(1, 1\) where the "
                                         r"model has \(1, \d+\)"):
        llava_reward.load(lora)
