"""The installed package is ONE import name, `llava_reward`, whose layers only import downwards."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


REPOSITORY = Path(__file__).resolve().parents[1]
# Folder -> installed name (setup.cfg's package_dir); the core may import none of the layers above it.
CORE = "modeling_llava_reward"
MIDDLE = {"trainers": "trainers", "evaluation": "evaluation", "hub_cards": "hub_cards", "serving": "serving", "steering": "steering"}
TOP = {"cli": "cli"}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names `path` imports (relative imports resolved against its installed package)."""
    package = installed_name(path.parent)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


def installed_name(folder: Path) -> str:
    relative = folder.relative_to(REPOSITORY).parts
    top = {CORE: "llava_reward"}.get(relative[0], f"llava_reward.{relative[0]}")
    return ".".join([top, *relative[1:]])


def python_files(folder: str) -> list[Path]:
    return sorted(path for path in (REPOSITORY / folder).rglob("*.py") if "metrics" not in path.parts)


@pytest.mark.parametrize("folder", [CORE, "configuration"])
def test_the_core_imports_no_layer_above_it(folder):
    above = tuple(f"llava_reward.{name}" for name in (*MIDDLE.values(), *TOP.values()))
    for path in python_files(folder):
        offending = sorted(name for name in imported_modules(path) if name.startswith(above))
        assert not offending, f"{path.relative_to(REPOSITORY)} imports {offending}"


@pytest.mark.parametrize("folder", sorted(MIDDLE))
def test_middle_layers_import_the_core_only(folder):
    others = tuple(f"llava_reward.{name}" for name in (*MIDDLE.values(), *TOP.values()) if name != MIDDLE[folder])
    for path in python_files(folder):
        offending = sorted(name for name in imported_modules(path) if name.startswith(others))
        assert not offending, f"{path.relative_to(REPOSITORY)} imports {offending}"


def test_no_underscore_name_is_imported_across_modules():
    for folder in (CORE, "configuration", *MIDDLE, *TOP):
        for path in python_files(folder):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                    private = [alias.name for alias in node.names if alias.name.startswith("_")]
                    assert not private, f"{path.relative_to(REPOSITORY)} imports {private} from {node.module}"


def test_the_wheel_holds_one_top_level_import_name(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=REPOSITORY, check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("llava_reward-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"llava_reward"}
    for expected in (
        "llava_reward/configuration/recipes/tiny.yaml",
        "llava_reward/evaluation/metrics/pairwise_accuracy/pairwise_accuracy.py",
        "llava_reward/hub_cards/templates/perspective_card.md",
        "llava_reward/cli/__init__.py",
        "llava_reward/configuration/serve/reward_service.yaml",
        "llava_reward/serving/server.py",
        "llava_reward/steering/fk.py",
    ):
        assert expected in names
    # The embedded default model (`llava_reward.load("default")` after `pip install`): exactly the files of its folder.
    shipped = REPOSITORY / "modeling_llava_reward" / "default_model"
    in_folder = {f"llava_reward/default_model/{path.relative_to(shipped).as_posix()}"
                 for path in shipped.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    assert {"llava_reward/default_model/config.json", "llava_reward/default_model/reward_head.safetensors"} <= in_folder
    assert {name for name in names if name.startswith("llava_reward/default_model/")} == in_folder
