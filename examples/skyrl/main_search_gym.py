"""SkyRL entrypoint that registers search-gym's env (``environment.env_class=search_gym``) and trains.

SkyRL builds environments inside its Ray entrypoint task, so the env is registered there, with the defaults of
``SEARCH_GYM_SKYRL_CONFIG`` (default: examples/skyrl/search_gym_env.yaml). Written against SkyRL's ``skyrl``
package layout (``skyrl.train``, as in its examples/train/multiply/main_multiply.py); run_search_gym.sh has the
command. Needs GPUs and SkyRL's own install (``uv`` + its fsdp/vllm extras); not run on search-gym's CPU CI.
"""

import os
import sys
from pathlib import Path

import ray
import yaml
from skyrl.train.config import SkyRLTrainConfig
from skyrl.train.entrypoints.main_base import BasePPOExp, validate_cfg
from skyrl.train.utils import initialize_ray

DEFAULTS = os.environ.get("SEARCH_GYM_SKYRL_CONFIG", str(Path(__file__).with_name("search_gym_env.yaml")))


@ray.remote(num_cpus=1)
def skyrl_entrypoint(cfg: SkyRLTrainConfig, defaults: dict):
    from search_gym.integrations.skyrl import register_skyrl_env

    register_skyrl_env(**defaults)  # in this task: the generator's envs are made here
    BasePPOExp(cfg).run()


def main() -> None:
    cfg = SkyRLTrainConfig.from_cli_overrides(sys.argv[1:])
    validate_cfg(cfg)
    with open(DEFAULTS, encoding="utf-8") as f:
        defaults = yaml.safe_load(f) or {}
    initialize_ray(cfg)
    ray.get(skyrl_entrypoint.remote(cfg, defaults))


if __name__ == "__main__":
    main()
