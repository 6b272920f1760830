"""Typed settings (inference/recipes/settings.py): one check for every dataclass, and the CLI's
flags derived from the fields declared with one."""
from dataclasses import dataclass
from typing import List, Optional

import pytest

from inference.recipes.settings import FLAGS, ConfigError, RecipeSettings, TrainerSettings, check, defaults, setting


@dataclass(kw_only=True)
class Example(RecipeSettings):
    count: int = setting(2, ge=1)
    offset: int = setting(0, ge=0)
    rate: float = setting(0.5, gt=0, lt=1)
    weight: float = setting(1.0, ge=0)
    scale: Optional[float] = setting(None, gt=0)
    mode: str = setting("a", choices=("a", "b"))
    on: bool = setting(True)
    stds: List[float] = setting([1.0, 2.0], length=2, gt=0)


GOOD = defaults(Example, lr=0.1, image_size=8, num_train=4)


def test_defaults_are_a_flat_dict_and_pass():
    assert GOOD == dict(lr=0.1, image_size=8, num_train=4, count=2, offset=0, rate=0.5, weight=1.0, scale=None,
                        mode="a", on=True, stds=[1.0, 2.0])
    assert defaults(Example, lr=0.1, image_size=8, num_train=4)["stds"] is not GOOD["stds"]  # lists not shared
    check(Example, GOOD)
    check(Example, dict(GOOD, scale=2, rate=1e-3, weight=0, stds=[3, 4]))  # ints are numbers


@pytest.mark.parametrize("key,value,message", [
    ("count", 0, "count=0: must be a positive integer"),
    ("count", 1.0, "count=1.0: must be a positive integer"),
    ("count", True, "count=True: must be a positive integer"),
    ("offset", -1, "offset=-1: must be a non-negative integer"),
    ("rate", 1, "rate=1: must be a positive number below 1"),
    ("rate", float("nan"), "rate=nan: must be a positive number below 1"),
    ("weight", float("inf"), "weight=inf: must be a non-negative number"),
    ("scale", 0, "scale=0: must be a positive number or null"),
    ("mode", "c", "mode='c': must be one of a, b"),
    ("on", 1, "on=1: must be true or false"),
    ("stds", [1.0], "stds=[1.0]: must be a list of 2 positive numbers"),
    ("stds", [1.0, 0.0], "stds=[1.0, 0.0]: must be a list of 2 positive numbers"),
    ("lr", 0, "--lr=0: must be a positive number"),  # a setting with a flag is named by it
    ("count", None, "count=None: must be a positive integer"),
])
def test_a_bad_value_is_named_with_what_it_must_be(key, value, message):
    with pytest.raises(ConfigError) as e:
        check(Example, dict(GOOD, **{key: value}))
    assert str(e.value) == message


def test_partial_checks_the_keys_present():
    check(RecipeSettings, {"lr": 0.1}, partial=True)
    with pytest.raises(ConfigError, match="--image-size=0"):
        check(RecipeSettings, {"image_size": 0}, partial=True)
    with pytest.raises(KeyError):
        check(RecipeSettings, {"lr": 0.1})


def test_the_cli_has_one_option_per_flagged_setting():
    from inference.svi import main
    from inference.training.config import FLAG_NAME, RESUMABLE_KEYS

    options = {p.name: p for p in main.params}
    assert list(FLAGS) == ["steps", "batch_size", "seed", "workers", "log_every", "val_every", "ckpt_every", "keep",
                           "figures_every", "deterministic", "tensorboard", "lr", "image_size", "num_train"]
    for key, (kind, _) in FLAGS.items():
        assert options[key].opts == [FLAG_NAME[key]] and options[key].default is None
        assert options[key].type.name == {int: "integer", float: "float", bool: "boolean"}[kind]
    assert options["deterministic"].secondary_opts == ["--no-deterministic"]
    assert options["tensorboard"].secondary_opts == ["--no-tensorboard"]
    assert set(RESUMABLE_KEYS) == {"steps", "workers", "log_every", "ckpt_every", "keep", "figures_every", "deterministic",
                                   "tensorboard"}
    assert "val_items" in defaults(TrainerSettings) and "val_items" not in FLAGS
