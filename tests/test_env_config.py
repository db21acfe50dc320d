"""EnvConfig (search_gym.envs.config): the environment's arguments declared once, with SearchEnv's names and
defaults, and the keyword arguments it gives gym.make / SearchVectorEnv."""

from __future__ import annotations

import inspect
from dataclasses import fields

import gymnasium as gym
import pytest

import search_gym  # noqa: F401  (registers the ids)
from search_gym.envs import EnvConfig, SearchEnv
from search_gym.envs.config import ENV_ARGUMENTS

#: EnvConfig fields whose None means "the registered id's value": SearchEnv's own default would override it
#: (dataset="wiki_qa" would turn SearchGym/WikiHarmful-v0 into a QA env).
REGISTERED = {"dataset"}


def test_env_config_fields_are_search_env_arguments_with_the_same_defaults():
    params = inspect.signature(SearchEnv.__init__).parameters
    config = {f.name: f for f in fields(EnvConfig)}
    assert set(ENV_ARGUMENTS) == set(config) - {"id", "kwargs"}  # every other field is a SearchEnv argument ...
    for name in ENV_ARGUMENTS:
        assert name in params, f"EnvConfig.{name} is not a SearchEnv argument"  # ... of that name
        if name in REGISTERED:
            assert config[name].default is None
        else:
            assert config[name].default == params[name].default, name  # ... and default
    assert all(f.metadata.get("help") for f in fields(EnvConfig))


def test_make_kwargs_passes_what_is_set_then_kwargs_then_overrides():
    assert EnvConfig().make_kwargs() == {"split": "train", "protocol": "tags", "parse_mode": "strict", "topk": 3,
                                         "max_turns": 4, "reward": "em", "prefill": "", "safety": False}
    config = EnvConfig(max_turns=2, attack="search", judges=("refusal",), kwargs='{"topk": 5, "max_tags": 4}')
    kwargs = config.make_kwargs(max_turns=3)
    assert (kwargs["topk"], kwargs["max_tags"], kwargs["max_turns"]) == (5, 4, 3)
    assert (kwargs["attack"], kwargs["judges"]) == ("search", ("refusal",))
    assert EnvConfig(kwargs={"context": "conversation"}).extra_kwargs() == {"context": "conversation"}
    assert EnvConfig(kwargs="  ").extra_kwargs() == {}
    with pytest.raises(ValueError, match="JSON object"):
        EnvConfig(kwargs="[1, 2]").extra_kwargs()


def test_the_trainers_env_passes_what_the_flat_trainer_config_passed():
    """Before the env section the trainers built their env with exactly these arguments; the extra ones the
    section passes now (protocol, prefill) are SearchEnv's defaults, so the env is the same."""
    from search_gym.trainers.config import train_env

    before = dict(split="train", retriever="dense", template="search_r1", max_turns=4, topk=3, parse_mode="strict",
                  reward="em", attack=None, safety=True)
    now = train_env().make_kwargs()
    params = inspect.signature(SearchEnv.__init__).parameters
    assert {k: v for k, v in before.items() if v is not None} == {k: now[k] for k in now if k in before}
    assert all(now[k] == params[k].default for k in set(now) - set(before))
    assert all(before[k] == params[k].default for k in set(before) - set(now))  # attack=None: not passed


def test_an_unset_dataset_keeps_the_registered_one():
    env = gym.make("SearchGym/WikiHarmful-v0", **EnvConfig(id="SearchGym/WikiHarmful-v0", split="heldout",
                                                           retriever="bm25").make_kwargs()).unwrapped
    assert (env.dataset, env.split, env.max_turns) == ("harmful", "heldout", 4)
    env = gym.make("SearchGym/WikiQA-v0", **EnvConfig(dataset="benign", split="heldout", retriever="bm25",
                                                      max_turns=2).make_kwargs()).unwrapped
    assert (env.dataset, env.split, env.max_turns) == ("benign", "heldout", 2)
