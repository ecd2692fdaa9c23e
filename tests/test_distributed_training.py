"""LoRA + head training sharded with FSDP2 on two real processes (CPU, gloo), and the sharding-aware helpers."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import FullyShardedDataParallelPlugin
from safetensors.torch import load_file

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardScorer
from llava_reward.bundle import reward_bundle_state_dict
from llava_reward.bundle import save_reward_bundle
from llava_reward.testing import save_tiny_vlm
from llava_reward.testing import tiny_vlm
from llava_reward.trainers.distributed import gather_trainable_state_dict
from llava_reward.trainers.distributed import load_trainable_state_dict
from llava_reward.trainers.distributed import set_fsdp_wrap_classes
from llava_reward.trainers.distributed import sharding
from llava_reward.trainers.synthetic import write_colour_task
from llava_reward.trainers.trainer import LlavaRewardTrainingConfig
from llava_reward.trainers.trainer import prepare_for_training


REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configuration" / "recipes" / "tiny.yaml")
VENV_BIN = Path(sys.executable).parent
FSDP = ["--fsdp", "true", "--fsdp_config", json.dumps({"version": 2, "state_dict_type": "SHARDED_STATE_DICT"})]
# 4 steps, a checkpoint after step 2; global batch 4 pairs (2 processes x 2, or 1 x 4).
COMMON = [TINY, "--max_steps", "4", "--logging_steps", "1", "--eval_strategy", "no", "--save_steps", "2"]
# The weights of an adapter perspective: the head, and LoRA (with the head's modules_to_save copy) in lora/.
WEIGHT_FILES = ("reward_head.safetensors", "lora/adapter_model.safetensors")

pytestmark = pytest.mark.usefixtures("one_intraop_thread")

DRIVER = """
import json, os, sys
from pathlib import Path
from safetensors.torch import save_file
from torch.distributed.fsdp import FSDPModule
from llava_reward.trainers.distributed import gather_trainable_state_dict
from llava_reward.trainers.train import load_recipe, parse_overrides, train

resume = sys.argv[1] == "resume"
recipe = load_recipe(sys.argv[2], parse_overrides(sys.argv[3:]))
trainer = train(recipe, resume=resume)  # what `python -m llava_reward.trainers.train` runs, on every rank
rank = int(os.environ.get("RANK", "0"))
output = Path(recipe.training.output_dir)
model = trainer.model
# fully_shard gives each unit's module a class "FSDP" + its own class name
units = sorted({type(module).__name__[4:] for module in model.modules() if isinstance(module, FSDPModule)})
local = {name: p.to_local().numel() if hasattr(p, "to_local") else p.numel() for name, p in model.named_parameters()}
report = {
    "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    "world_size": trainer.args.world_size,
    "distributed_type": str(trainer.accelerator.state.distributed_type),
    "fsdp_units": units,
    "local_numel": sum(local.values()),
    "numel": sum(p.numel() for p in model.parameters()),
}
(output / f"rank{rank}.json").write_text(json.dumps(report))
trainable = gather_trainable_state_dict(model, trainer.accelerator)  # every rank takes part; rank 0 gets them
if trainable:
    save_file({name: tensor.contiguous() for name, tensor in trainable.items()}, output / f"rank{rank}.safetensors")
"""


def start(args, cwd) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def finish(process: subprocess.Popen, timeout: float = 300) -> None:
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny recipe trained by two FSDP2 processes and by one process, with the same global batch."""
    root = tmp_path_factory.mktemp("fsdp")
    write_colour_task(root / "tiny-task", train_pairs=16, eval_pairs=4)
    save_tiny_vlm("llava", root / "tiny-task" / "base")
    (root / "driver.py").write_text(DRIVER)
    torchrun = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(root / "driver.py")]
    # Both at once (independent processes, one thread each): the fixture waits for the slower one only.
    sharded = start(
        [*torchrun, "train", *COMMON, *FSDP, "--per_device_train_batch_size", "2", "--output_dir", str(root / "fsdp")],
        root,
    )
    single = start(
        [sys.executable, str(root / "driver.py"), "train", *COMMON, "--per_device_train_batch_size", "4",
         "--output_dir", str(root / "one")],
        root,
    )
    finish(sharded)
    finish(single)
    return root


def test_two_process_fsdp_matches_one_process_and_saves_the_same_bundle(runs):
    ranks = [json.loads((runs / "fsdp" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    reference = json.loads((runs / "one" / "rank0.json").read_text())
    # Really sharded: FSDP (not the DDP accelerate falls back to on CPU), one unit per decoder layer and vision
    # block, and each process holding half of the parameters.
    assert {rank["distributed_type"] for rank in ranks} == {"DistributedType.FSDP"}
    assert {"LlamaDecoderLayer", "CLIPEncoderLayer"} <= set(ranks[0]["fsdp_units"])
    assert ranks[0]["local_numel"] + ranks[1]["local_numel"] == ranks[0]["numel"] > ranks[0]["local_numel"]

    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == 4
    assert ranks[0]["losses"] == pytest.approx(reference["losses"], rel=1e-4, abs=1e-6)
    weights, expected = load_file(runs / "fsdp" / "rank0.safetensors"), load_file(runs / "one" / "rank0.safetensors")
    assert not (runs / "fsdp" / "rank1.safetensors").exists()  # gathered on the main process only
    assert weights.keys() == expected.keys() and any("lora_A" in name for name in expected)
    assert any("value_head" in name for name in expected) and any("multi_modal_projector" in name for name in expected)
    for name, value in expected.items():
        # Summing the gradients of two processes instead of one rounds differently, and Adam (m / sqrt(v)) magnifies
        # that where gradients are nearly zero (loss 1e-4 at step 4): measured up to 1.7e-5 on a LoRA weight, 0.1 % of
        # the 4 steps' largest possible movement (4 x lr 5e-3).
        torch.testing.assert_close(weights[name], value, atol=5e-5, rtol=1e-4, msg=name)

    # The same bundle files as a one-process (or DDP) run, holding the gathered whole tensors.
    bundle_files = {"config.json", "training_data.json", *WEIGHT_FILES, "lora/adapter_config.json"}
    for output in ("fsdp", "one"):
        assert all((runs / output / file).is_file() for file in bundle_files), output
    assert json.loads((runs / "fsdp" / "training_data.json").read_text()) == json.loads(
        (runs / "one" / "training_data.json").read_text()
    )
    for file in WEIGHT_FILES:
        saved, reference_file = load_file(runs / "fsdp" / file), load_file(runs / "one" / file)
        assert saved.keys() == reference_file.keys()
        for name, value in reference_file.items():
            torch.testing.assert_close(saved[name], value, atol=5e-5, rtol=1e-4, msg=f"{file}: {name}")

    images = sorted(str(path) for path in (runs / "tiny-task" / "images").glob("eval_*.png"))
    scores = [
        LlavaRewardScorer.from_pretrained(runs / output).score("a red square", images) for output in ("fsdp", "one")
    ]
    assert scores[0].shape == (len(images),)
    torch.testing.assert_close(scores[0], scores[1], atol=1e-5, rtol=1e-4)

    # The checkpoint after step 2: the bundle (whole tensors) and the optimizer state as one shard per process.
    checkpoint = runs / "fsdp" / "checkpoint-2"
    assert all((checkpoint / file).is_file() for file in WEIGHT_FILES)
    assert len(list((checkpoint / "optimizer_0").glob("*.distcp"))) == 2


@pytest.mark.slow
def test_fsdp_resumes_from_a_sharded_checkpoint_and_ends_where_the_uninterrupted_run_did(runs):
    resumed = runs / "resumed"
    resumed.mkdir()
    shutil.copytree(runs / "fsdp" / "checkpoint-2", resumed / "checkpoint-2")
    resume = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(runs / "driver.py"), "resume"]
    finish(start([*resume, *COMMON, *FSDP, "--per_device_train_batch_size", "2", "--output_dir", str(resumed)], runs))
    state = json.loads((resumed / "rank0.json").read_text())
    uninterrupted = json.loads((runs / "fsdp" / "rank0.json").read_text())
    assert state["losses"][2:] == uninterrupted["losses"][2:]  # steps 3 and 4, run again from the checkpoint
    for file in WEIGHT_FILES:
        saved, reference = load_file(resumed / file), load_file(runs / "fsdp" / file)
        assert saved.keys() == reference.keys()
        for name, value in reference.items():
            torch.testing.assert_close(saved[name], value, atol=1e-6, rtol=1e-5, msg=f"{file}: {name}")


ZERO3_PARTITION_ALL = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
}


@pytest.mark.slow
@pytest.mark.timeout(1500)  # DeepSpeed compiles its op on first use: 4 min of the 8 measured on a busy 2-core machine
def test_zero3_on_one_cpu_process_writes_the_whole_bundle_and_resumes_exactly(runs, tmp_path):
    """DeepSpeed's CPU accelerator runs ZeRO-3 with gloo: the same gather-on-save path as on GPUs (minutes: DeepSpeed
    compiles its shared-memory op on first use). Two CPU processes fail in DeepSpeed's batch-size check."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install deepspeed")
    import yaml

    # ZeRO-3 keeps parameters under 1e5 elements whole on every process (all of a tiny model's): partition them all.
    (tmp_path / "zero3.json").write_text(json.dumps(ZERO3_PARTITION_ALL))
    config = yaml.safe_load((REPO / "configuration" / "accelerate" / "deepspeed_zero3.yaml").read_text())
    # With a DeepSpeed config file, accelerate refuses the fields it holds (precision too) in its own config.
    config["deepspeed_config"] = {"deepspeed_config_file": str(tmp_path / "zero3.json"), "zero3_init_flag": True}
    del config["mixed_precision"]
    (tmp_path / "zero3.yaml").write_text(yaml.safe_dump(config | {"num_processes": 1}))
    launch = [str(VENV_BIN / "accelerate"), "launch", "--config_file", str(tmp_path / "zero3.yaml"),
              str(runs / "driver.py")]
    zero3 = ["--use_cpu", "false", "--per_device_train_batch_size", "2"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([*launch, "train", *COMMON, *zero3, "--output_dir", str(tmp_path / "z3")], cwd=runs,
                          capture_output=True, text=True, env=environment, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "z3" / "rank0.json").read_text())
    assert report["distributed_type"] == "DistributedType.DEEPSPEED"
    assert report["local_numel"] == 0  # every parameter partitioned away: only a gather can see their values
    for file in WEIGHT_FILES:
        saved, reference = load_file(tmp_path / "z3" / file), load_file(runs / "one" / file)
        assert {name: t.shape for name, t in saved.items()} == {name: t.shape for name, t in reference.items()}

    shutil.copytree(tmp_path / "z3" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    done = subprocess.run([*launch, "resume", *COMMON, *zero3, "--output_dir", str(tmp_path / "resumed")], cwd=runs,
                          capture_output=True, text=True, env=environment, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for file in WEIGHT_FILES:
        saved, reference = load_file(tmp_path / "resumed" / file), load_file(tmp_path / "z3" / file)
        assert saved.keys() == reference.keys()
        assert all(torch.equal(saved[name], reference[name]) for name in reference), file
    image = str(next((runs / "tiny-task" / "images").iterdir()))
    assert torch.isfinite(LlavaRewardScorer.from_pretrained(tmp_path / "z3").score("a red square", [image])).all()


# ---- the helpers, on one process (whole parameters) ---------------------------------------------------------------


@pytest.fixture
def lora_model():
    torch.manual_seed(0)
    model = LlavaRewardModel.from_vlm(tiny_vlm("llava")[0], objective="bt")
    args = LlavaRewardTrainingConfig(output_dir="unused", lora_r=4, lora_alpha=8, use_cpu=True)
    return prepare_for_training(model, args)


def test_a_bundle_reads_back_under_the_trained_models_names(lora_model, tmp_path):
    accelerator = Accelerator(cpu=True)
    assert sharding(accelerator) is None
    trained = gather_trainable_state_dict(lora_model, accelerator)
    assert trained and all(lora_model.get_parameter(name).requires_grad for name in trained)
    save_reward_bundle(lora_model, tmp_path, state_dict=trained)  # as the main process does under FSDP / ZeRO-3
    save_reward_bundle(lora_model, tmp_path / "from-parameters")  # as it does with whole parameters
    for file in WEIGHT_FILES:  # the same files either way
        gathered, direct = load_file(tmp_path / file), load_file(tmp_path / "from-parameters" / file)
        assert gathered.keys() == direct.keys() and all(torch.equal(gathered[k], direct[k]) for k in direct), file

    read = reward_bundle_state_dict(lora_model, tmp_path)
    assert trained.keys() <= read.keys()  # every trained tensor, plus the projector when it is frozen
    for name, value in trained.items():
        torch.testing.assert_close(read[name], value, atol=0, rtol=0, msg=name)

    with torch.no_grad():  # lose the trained values, then restore them from the bundle
        for name in trained:
            lora_model.get_parameter(name).zero_()
    load_trainable_state_dict(lora_model, read, accelerator)
    for name, value in trained.items():
        torch.testing.assert_close(lora_model.get_parameter(name).detach(), value, atol=0, rtol=0, msg=name)


def test_loading_names_unknown_and_missing_parameters_and_wrong_shapes(lora_model):
    accelerator = Accelerator(cpu=True)
    trained = gather_trainable_state_dict(lora_model, accelerator)
    name = next(iter(trained))
    with pytest.raises(KeyError, match=rf"unknown \['nope'\], missing \['{name}'\]"):
        load_trainable_state_dict(lora_model, {"nope": torch.zeros(1)} | dict(list(trained.items())[1:]), accelerator)
    shape = tuple(trained[name].shape)
    with pytest.raises(ValueError, match=re.escape(f"{name}: (3,) where the parameter is {shape}")):
        load_trainable_state_dict(lora_model, trained | {name: torch.zeros(3)}, accelerator)


def test_a_checkpoint_of_another_lora_rank_is_refused_by_name(lora_model, tmp_path):
    save_reward_bundle(lora_model, tmp_path)
    model = LlavaRewardModel.from_vlm(tiny_vlm("llava")[0], objective="bt")
    other = prepare_for_training(model, LlavaRewardTrainingConfig(output_dir="unused", lora_r=2, use_cpu=True))
    with pytest.raises(ValueError, match=r"wrong shape: .*lora_A"):
        load_trainable_state_dict(other, reward_bundle_state_dict(other, tmp_path), Accelerator(cpu=True))


def test_fsdp_wraps_the_decoder_layers_and_vision_blocks_the_model_holds(lora_model):
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
    # LLaVA's `_no_split_modules` names CLIPTextEmbeddings, which a LLaVA model does not hold: accelerate would raise.
    assert "CLIPTextEmbeddings" in lora_model._no_split_modules
    wrapped = set_fsdp_wrap_classes(accelerator, lora_model)
    assert wrapped == ["CLIPEncoderLayer", "CLIPVisionEmbeddings", "LlamaDecoderLayer"]
    named = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["LlamaDecoderLayer"]
    )
    assert set_fsdp_wrap_classes(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=named)), lora_model) is None
    assert named.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]  # the user's choice is kept
