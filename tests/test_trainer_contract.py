"""The contract of `LlavaRewardTrainer` with TRL's `RewardTrainer`: fails loudly when a TRL release changes the
methods we inherit, the state they read, or the state RewardTrainer's `__init__` sets (which ours replaces)."""

import ast
import inspect
import textwrap

import pytest
from trl import RewardTrainer
from trl.trainer.base_trainer import _BaseTrainer

from llava_reward.trainers import trainer as trainer_module
from llava_reward.trainers.trainer import REWARD_TRAINER_INHERITED
from llava_reward.trainers.trainer import REWARD_TRAINER_OVERRIDDEN
from llava_reward.trainers.trainer import REWARD_TRAINER_STATE
from llava_reward.trainers.trainer import REWARD_TRAINER_STATE_NOT_NEEDED
from llava_reward.trainers.trainer import LlavaRewardTrainer


def own_methods(cls) -> set[str]:
    return {name for name, value in vars(cls).items() if inspect.isfunction(value)}


def self_attributes(function, kind) -> set[str]:
    """`self.<name>` accesses (loads or stores) in `function`'s source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and isinstance(node.ctx, kind)
    }


def test_every_reward_trainer_method_is_accounted_for():
    # A method TRL adds to RewardTrainer is a new hook that may assume a text model: review it, then list it.
    accounted = set(REWARD_TRAINER_INHERITED) | set(REWARD_TRAINER_OVERRIDDEN)
    assert own_methods(RewardTrainer) == accounted
    assert own_methods(LlavaRewardTrainer) >= set(REWARD_TRAINER_OVERRIDDEN)
    inherited_here = {name for name in REWARD_TRAINER_INHERITED if name not in own_methods(LlavaRewardTrainer)}
    assert inherited_here == set(REWARD_TRAINER_INHERITED) - {"log"}  # `log` is extended and calls super().log


def test_the_state_reward_trainer_init_sets_is_replaced_or_known_to_be_unneeded():
    # Our __init__ skips RewardTrainer.__init__: everything it sets on self after building the Trainer must be set by
    # ours too, or be read only by the methods we override.
    stored = self_attributes(RewardTrainer.__init__, ast.Store)
    assert stored == set(REWARD_TRAINER_STATE) | set(REWARD_TRAINER_STATE_NOT_NEEDED)
    assert set(REWARD_TRAINER_STATE) <= self_attributes(LlavaRewardTrainer.__init__, ast.Store)


@pytest.mark.parametrize("method", REWARD_TRAINER_INHERITED)
def test_inherited_methods_read_only_state_we_provide(method):
    read = self_attributes(getattr(RewardTrainer, method), ast.Load)
    own_state = set(REWARD_TRAINER_STATE) | set(REWARD_TRAINER_STATE_NOT_NEEDED)
    from_trainer = {name for name in read if hasattr(_BaseTrainer, name) or not name.startswith("_")}
    unknown = read - own_state - from_trainer - set(dir(LlavaRewardTrainer))
    assert not unknown, f"RewardTrainer.{method} reads {sorted(unknown)}, which LlavaRewardTrainer does not set"
    assert not (read & set(REWARD_TRAINER_STATE_NOT_NEEDED)), f"RewardTrainer.{method} now reads state we skip"


def test_the_skipped_init_is_the_one_we_skip():
    # We call the __init__ below RewardTrainer in the MRO; if TRL moves it, that call would skip the wrong class.
    assert LlavaRewardTrainer.__mro__[1:3] == (RewardTrainer, _BaseTrainer)
    assert "super(RewardTrainer, self).__init__(" in inspect.getsource(trainer_module)
