"""``search-gym compare-algorithms``: RL algorithms compared on one environment at an equal budget of episodes.

From one starting model (default ``smollm2-aligned``: the bundled SmolLM2-135M-Instruct with the shipped aligned
LoRA merged), every (arm, seed) is its own training run, then its final policy is evaluated greedily on the same
held-out rows, so that per-episode outcomes pair across arms by (seed, prompt)::

    output_dir/
      comparison_config.json        this comparison's settings (marks the folder; checked when resuming)
      directions/                   the harmful-search direction of the start model (grpo_penalty's penalty), when
                                    --direction is not given (search-gym directions extract + select, as the study)
      <arm>/seed<k>/                one trainer's output_dir: config.json, metrics.csv, checkpoint-*/, final/,
                                    log.txt (subprocess runs), done.json (the run's finished marker)
      <arm>/seed<k>/eval_heldout/   search-gym eval of final/: harmful held-out and QA test x attacks none, search
      comparison.md, comparison.json, curves.png    the report (search_gym.experiments.algorithms_report)

Arms (:data:`ARMS`): ``ppo`` (PPO, value head and GAE), ``grpo``, ``dr_grpo`` and ``dapo`` (GRPO with the loss
aggregation of that name, everything else shared) and ``grpo_penalty`` (GRPO's loss with the representation-guided
penalty r = r_task - lambda * p(h) on a direction of the start model). Each arm differs from ``grpo`` in what its
name says only: the shared training settings (``train``, and ``grpo`` / ``ppo`` for one trainer's own fields) go to
every run of that trainer.

Variants (``variants``, YAML only): arms of one's own, each a built-in arm with other settings, e.g. a learning-rate
or temperature sweep ``{grpo_lr3e-5: {arm: grpo, learning_rate: 3.0e-5}, grpo_g16: {arm: grpo, group_size: 16}}``.
A variant may change a GRPO arm's ``group_size``; its questions per step follow, so it keeps the equal budget.
``train: false`` makes an arm that is not trained (the start model, evaluated once and shared by every seed: a
study's baseline); ``pairs`` adds paired tables beside the baseline's (``grpo_penalty:grpo``); ``log_projection``
gives unpenalised GRPO arms the direction at lambda 0, so their projection and drift are recorded too.

Equal budget: every run trains on ``episodes`` episodes in ``episodes / (questions_per_step x group_size)`` steps.
GRPO arms play ``questions_per_step`` questions x ``group_size`` episodes per step; PPO needs no group, so it plays
``questions_per_step x group_size / ppo_group_size`` questions x ``ppo_group_size`` episodes: the same episodes
per step and the same number of steps (more distinct questions with the default ppo_group_size 1).

Resumable: a run whose ``done.json`` exists (trained, ``final/`` saved, evaluation complete; ``final/`` may be gone
since) is skipped; a run killed during training resumes from its newest checkpoint (the trainers' ``resume``), one
killed during its evaluation from its finished cells (``search-gym eval``'s own resume). ``--parallel K`` runs K
runs at once as subprocesses (several 135M runs fit on one GPU), printing a status line as they go; the runs of one
seed start together, so the arms share the GPU alike. The report is written at the end, and again by ``--report-only``.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from search_gym.configs import help_field as _help
from search_gym.experiments.algorithms_report import CONFIG_FILE, EVAL_STAGE, check_folder, write_report
from search_gym.experiments.study import env_index

# arm -> (trainer, the fields that make it this arm). The penalty of grpo_penalty (lambda, direction) is added by
# AlgorithmComparison.trainer_config; every other field is shared by all the arms of a trainer.
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "ppo": ("ppo", {}),
    "grpo": ("grpo", {"loss_type": "grpo"}),
    "dr_grpo": ("grpo", {"loss_type": "dr_grpo"}),
    "dapo": ("grpo", {"loss_type": "dapo"}),
    "grpo_penalty": ("grpo", {"loss_type": "grpo"}),
}
PENALTY_ARM = "grpo_penalty"
# Fields the comparison sets in every run itself (the budget, the run's identity): the train / grpo / ppo / arm
# settings may not set them, since an arm that changed them would no longer be compared at an equal budget.
FIXED = ("model", "output_dir", "seed", "device", "max_steps", "questions_per_step", "group_size", "loss_type",
         "save_steps", "save_total_limit", "progress", "resume")
# Settings that shape what a run trains: resuming a folder made with others would mix two comparisons.
RUN_SETTINGS = ("model", "episodes", "questions_per_step", "group_size", "ppo_group_size", "train", "grpo", "ppo",
                "arm_settings", "variants", "log_projection", "penalty_lambda", "direction", "direction_name",
                "direction_args")


@dataclass
class AlgorithmComparisonConfig:
    """An RL algorithm comparison (see the module docstring); every field but the dict ones has a flag."""

    output_dir: str = _help("comparison folder (an existing one is resumed)", default="runs/algorithms")
    model: str = _help("start model of every run: 'smollm2-aligned' (the bundled model + the shipped aligned "
                       "adapter), 'smollm2', a folder or hub id", default="smollm2-aligned")
    arms: tuple[str, ...] = _help(f"arms to train, of {', '.join(ARMS)} and the variants", default=tuple(ARMS))
    baseline: str = _help("the arm every other is paired with in the table", default="grpo")
    seeds: tuple[int, ...] = _help("training seeds of every arm (data order, sampling, initialisation)",
                                   default=(0, 1, 2))
    episodes: int = _help("training episodes of every run (the equal budget): steps = episodes / "
                          "(questions_per_step x group_size)", default=1024)
    questions_per_step: int = _help("questions per step of the GRPO arms", default=8)
    group_size: int = _help("episodes per question of the GRPO arms (GRPO's G)", default=8)
    ppo_group_size: int = _help("episodes per question of the PPO arm; it plays questions_per_step x group_size / "
                                "ppo_group_size questions per step, so every arm plays as many episodes per step",
                                default=1)
    train: dict = _help("RLConfig fields every run gets (YAML only: env, learning_rate, lora_r, max_turn_tokens, "
                        "generation_backend, forward_batch_size, ...)", default_factory=dict)
    grpo: dict = _help("GRPOConfig fields of the GRPO arms (YAML only: beta, epsilon, scale_rewards, penalty "
                       "source/searches/projection, ...)", default_factory=dict)
    ppo: dict = _help("PPOConfig fields of the PPO arm (YAML only: kl_coef, vf_coef, num_iterations, ...)",
                      default_factory=dict)
    variants: dict = _help("arms of one's own (YAML only): name -> {arm: a built-in arm, group_size: G (GRPO arms; "
                           "questions per step follow), train: false (not trained: the start model evaluated as "
                           "this arm), trainer fields...}; list the names in arms", default_factory=dict)
    pairs: tuple[str, ...] = _help("more paired comparisons beside the baseline's, as ARM:BASELINE (the study: "
                                   "grpo_penalty:grpo beside every arm against the untrained start)", default=())
    log_projection: bool = _help("give every GRPO arm the direction at lambda 0 (only the penalised arms are shaped): "
                                 "the projection is logged and drift recorded (train.drift_every) in all of them",
                                 default=False)
    arm_settings: dict = _help("fields of one arm only, by arm (YAML only), e.g. {dr_grpo: {scale_rewards: none}}: "
                               "the arm then differs from grpo in more than its loss", default_factory=dict)
    penalty_lambda: float = _help("lambda of grpo_penalty's r = r_task - lambda * p(h)", default=0.5)
    direction: str | None = _help("direction file of grpo_penalty's penalty (none: extract one from the start model "
                                  "into output_dir/directions, as search-gym study does)", default=None)
    direction_name: str = _help("which direction of the extract run (harmfulness: style-matched contrast; "
                                "attack_search, harmfulness_qa, ...)", default="harmfulness")
    direction_args: str = _help("extra flags of `search-gym directions extract`, as one string",
                                default="--n-train all --no-refusal")
    save_steps: int = _help("checkpoint every N steps (a killed run resumes from the newest)", default=4)
    keep_checkpoints: int = _help("checkpoints kept per run (the newest; 0 keeps all)", default=1)
    harmful_set: str = _help("harmful held-out prompt set of the evaluation", default="harmful:heldout")
    qa_set: str = _help("QA set of the evaluation (EM)", default="qa:test")
    attacks: tuple[str, ...] = _help("attacks of the evaluation", default=("none", "search"))
    eval_prompts: int = _help("prompts per evaluation cell: the same seeded draw for every run", default=128)
    eval_agent: str = _help("agent family of the evaluations: hf or vllm (greedy either way)", default="hf")
    eval_num_envs: int = _help("episodes played together in the evaluations", default=128)
    eval_max_new_tokens: int = _help("new tokens per turn in the evaluations", default=64)
    eval_gpu_memory_utilization: float = _help("GPU share of an evaluation's vLLM engine (0: vLLM's default)",
                                               default=0.0)
    shared_seed: int = _help("seed of what every run shares: the direction, the evaluation's prompt draw and the "
                             "bootstrap", default=0)
    table_metrics: tuple[str, ...] = _help("held-out metrics of the table (search_gym.rollout.metrics.METRICS)",
                                           default=("em", "search_safety", "refusal"))
    bootstrap: int = _help("bootstrap resamples of the paired intervals", default=2000)
    smooth: int = _help("curves: trailing mean over N steps of each seed before the band (0: raw)", default=0)
    device: str | None = _help("torch device (default: cuda if available)", default=None)
    parallel: int = _help("runs trained at once, each in its own subprocess (1: one after the other in this process, "
                          "unless vLLM is used)", default=1)
    report_only: bool = _help("train nothing: write the report from what output_dir holds", default=False)
    progress: bool = _help("progress bars (runs in subprocesses log to <run>/log.txt instead)", default=True)

    def __post_init__(self) -> None:
        if not isinstance(self.variants, Mapping):
            raise ValueError(f"variants must be a mapping of name -> settings, not {self.variants!r}")
        for name, spec in self.variants.items():
            if name in ARMS or not isinstance(spec, Mapping) or spec.get("arm") not in ARMS:
                raise ValueError(f"variant {name!r}: needs a new name (not one of {list(ARMS)}) and settings with "
                                 f"'arm:' one of {list(ARMS)}, got {spec!r}")
            group = spec.get("group_size")
            if group is not None and (ARMS[spec["arm"]][0] != "grpo" or int(group) <= 0
                                      or (self.questions_per_step * self.group_size) % int(group)):
                raise ValueError(f"variant {name!r}: group_size {group} must divide the episodes per step "
                                 f"({self.questions_per_step * self.group_size}) and needs a GRPO arm")
            if not isinstance(spec.get("train", True), bool):
                raise ValueError(f"variant {name!r}: train must be true or false, not {spec['train']!r}")
        unknown = [a for a in self.arms if a not in ARMS and a not in self.variants]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from {list(ARMS) + list(self.variants)}")
        for pair in self.pairs:
            arm, sep, base = str(pair).partition(":")
            if not sep or arm not in self.arms or base not in self.arms or arm == base:
                raise ValueError(f"pairs: {pair!r} must be ARM:BASELINE, two different arms of {list(self.arms)}")
        if not self.arms or not self.seeds:
            raise ValueError("a comparison needs at least one arm and one seed")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms and seeds must not repeat (arms {list(self.arms)}, seeds {list(self.seeds)})")
        per_step = self.questions_per_step * self.group_size
        if per_step <= 0 or self.episodes <= 0 or self.episodes % per_step:
            raise ValueError(f"episodes ({self.episodes}) must be a positive multiple of questions_per_step x "
                             f"group_size ({per_step}): every arm trains the same whole number of steps")
        if self.ppo_group_size <= 0 or per_step % self.ppo_group_size:
            raise ValueError(f"ppo_group_size ({self.ppo_group_size}) must divide questions_per_step x group_size "
                             f"({per_step}) so that PPO plays as many episodes per step as GRPO")
        if self.parallel < 1:
            raise ValueError("parallel must be at least 1")
        if self.baseline not in ARMS and self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} is not an arm; choose from "
                             f"{list(ARMS) + list(self.variants)}")
        if self.eval_agent not in ("hf", "vllm"):
            raise ValueError(f"eval_agent must be 'hf' or 'vllm', not {self.eval_agent!r}")
        from search_gym.rollout.metrics import METRICS

        unknown = [m for m in self.table_metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown table_metrics {unknown}; choose from {list(METRICS)}")
        self._check_mappings()

    def base_arm(self, arm: str) -> str:
        """The built-in arm an arm is (itself, or a variant's ``arm``)."""
        return self.variants[arm]["arm"] if arm in self.variants else arm

    def algorithm(self, arm: str) -> str:
        """The trainer of an arm: ``grpo`` or ``ppo``."""
        return ARMS[self.base_arm(arm)][0]

    def penalised(self, arm: str) -> bool:
        return self.base_arm(arm) == PENALTY_ARM and not self.untrained(arm)

    def untrained(self, arm: str) -> bool:
        """A variant with ``train: false``: the start model itself, evaluated as this arm."""
        return (self.variants.get(arm) or {}).get("train") is False

    def extra_pairs(self) -> list[tuple[str, str]]:
        return [tuple(str(p).split(":", 1)) for p in self.pairs]

    def _check_mappings(self) -> None:
        for name in ("train", "grpo", "ppo", "arm_settings"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"{name} must be a mapping of trainer fields, not {getattr(self, name)!r}")


@dataclass(frozen=True)
class Run:
    """One training run of the comparison: an arm and a seed, in ``<output_dir>/<arm>/seed<seed>``."""

    arm: str
    seed: int
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.arm}/seed{self.seed}"

    @property
    def final(self) -> Path:
        return self.folder / "final"


def _merged(*layers: Mapping) -> dict:
    """Mappings merged left to right; a section given as a mapping (env: {...}) merges key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = str(key).replace("-", "_")
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


class AlgorithmComparison:
    """Trains, evaluates and reports every run of an :class:`AlgorithmComparisonConfig`.

    ``make_trainer`` and ``evaluate`` are the seams tests replace (a tiny in-memory model, a word-overlap
    retriever); the rest is what a GPU run does."""

    poll_seconds = 5.0  # how often the parallel scheduler looks at its subprocesses
    status_seconds = 60.0  # a status line at least this often while nothing changes

    def __init__(self, config: AlgorithmComparisonConfig):
        self.config = config
        self.root = Path(config.output_dir)

    # ------------------------------------------------------------------ runs and budget

    def runs(self) -> list[Run]:
        """Seed by seed, every arm of a seed together (with --parallel, the arms of a seed share the GPU alike)."""
        c = self.config
        return [Run(arm, seed, self.root / arm / f"seed{seed}") for seed in c.seeds for arm in c.arms]

    @property
    def episodes_per_step(self) -> int:
        return self.config.questions_per_step * self.config.group_size

    @property
    def steps(self) -> int:
        return self.config.episodes // self.episodes_per_step

    def shape(self, arm: str) -> tuple[int, int]:
        """(questions per step, episodes per question) of an arm: the same episodes per step for every arm."""
        if self.config.algorithm(arm) == "ppo":
            return self.episodes_per_step // self.config.ppo_group_size, self.config.ppo_group_size
        group = int((self.config.variants.get(arm) or {}).get("group_size") or self.config.group_size)
        return self.episodes_per_step // group, group

    @property
    def direction_path(self) -> Path:
        if self.config.direction:
            return Path(self.config.direction)
        return self.root / "directions" / f"{self.config.direction_name}.safetensors"

    # ------------------------------------------------------------------ state

    def _study(self, root: Path, **changes):
        """A :class:`~search_gym.experiments.study.Study` on ``root`` with this comparison's settings: the study's
        direction and evaluation stages are what the comparison runs too (one copy of that code)."""
        from search_gym.experiments.study import Study, StudyConfig

        c = self.config
        settings = dict(output_dir=str(root), sft_config="", model=c.model, direction=c.direction_name,
                        direction_args=c.direction_args, attacks=c.attacks, harmful_set=c.harmful_set,
                        qa_set=c.qa_set, eval_prompts=c.eval_prompts, eval_agent=c.eval_agent,
                        eval_num_envs=c.eval_num_envs, eval_max_new_tokens=c.eval_max_new_tokens,
                        eval_gpu_memory_utilization=c.eval_gpu_memory_utilization, device=c.device,
                        seed=c.shared_seed, progress=c.progress, retriever=self.index)
        return Study(StudyConfig(**{**settings, **changes}))

    @property
    def index(self) -> str:
        """The index every run trains with (train.env.retriever, dense when unset) and is evaluated with."""
        return env_index(self.config.train)

    def trained(self, run: Run) -> bool:
        """``final/`` holds a whole model: its config and weights (a kill inside save_final leaves no weights, and
        the next call saves it again from the last checkpoint). An untrained arm: the ``config.json`` written in
        place of training."""
        if self.config.untrained(run.arm):
            return (run.folder / "config.json").is_file()
        return (run.final / "config.json").is_file() and any(run.final.glob("*.safetensors"))

    def evaluated(self, run: Run) -> bool:
        return self._study(run.folder).done(EVAL_STAGE)

    def finished(self, run: Run) -> bool:
        """``done.json`` (written after training and evaluation) and a complete evaluation. The final weights are not
        needed: a run brought back from another machine without them (tools/algorithms_gpu.sh collect) counts, so
        seeds can run in different sessions."""
        return (run.folder / "done.json").is_file() and self.evaluated(run)

    # ------------------------------------------------------------------ configs

    def trainer_config(self, run: Run):
        """The run's GRPOConfig / PPOConfig: shared settings < trainer settings < arm settings < what the comparison
        fixes (model, seed, budget, loss type, penalty)."""
        from search_gym.configs import build_config

        c = self.config
        algorithm, arm_fields = ARMS[c.base_arm(run.arm)]
        variant = {k: v for k, v in (c.variants.get(run.arm) or {}).items() if k not in ("arm", "group_size", "train")}
        for name, layer in (("train", c.train), (algorithm, getattr(c, algorithm)),
                            (f"arm_settings.{run.arm}", c.arm_settings.get(run.arm) or {}),
                            (f"variants.{run.arm}", variant)):
            fixed = sorted(set(FIXED) & {str(k).replace("-", "_") for k in layer})
            if fixed:
                raise ValueError(f"{name} sets {fixed}, which the comparison sets itself for every run (model, seed, "
                                 "the equal budget: use --model, --seeds, --episodes, --questions-per-step, "
                                 "--group-size, --save-steps)")
            penalty = layer.get("penalty") or {}
            if {"lambda", "lambda_", "direction"} & set(penalty):
                raise ValueError(f"{name} sets penalty lambda / direction: use --penalty-lambda and --direction "
                                 f"(only {PENALTY_ARM} is penalised)")
        questions, group = self.shape(run.arm)
        values = _merged(c.train, getattr(c, algorithm), c.arm_settings.get(run.arm) or {}, variant, arm_fields)
        arm_index = env_index(values)
        if arm_index != self.index:
            raise ValueError(f"{run.arm} would train with the {arm_index!r} index and be evaluated with "
                             f"{self.index!r} (train.env.retriever): set the index in train.env only, so that "
                             "every run trains and is evaluated in one environment")
        values.update(model=c.model, output_dir=str(run.folder), seed=run.seed, device=c.device, max_steps=self.steps,
                      questions_per_step=questions, group_size=group, save_steps=c.save_steps,
                      save_total_limit=c.keep_checkpoints, progress=c.progress, resume=True)
        shaped = c.penalised(run.arm)
        if shaped or (c.log_projection and algorithm == "grpo" and not c.untrained(run.arm)):
            # the direction for every penalised arm; with log_projection for the other GRPO arms too, at lambda 0
            values["penalty"] = {**(values.get("penalty") or {}), "direction": str(self.direction_path),
                                 "lambda": c.penalty_lambda if shaped else 0.0}
        if algorithm == "ppo":
            from search_gym.trainers.ppo_config import PPOConfig as cls
        else:
            from search_gym.trainers.grpo_config import GRPOConfig as cls
        return build_config(cls, **values)

    # ------------------------------------------------------------------ stages

    def prepare(self) -> None:
        """Create (or check, when resuming) the folder and write the settings; bad settings fail here, before
        anything trains."""
        current = _jsonable(asdict(self.config))
        path = self.root / CONFIG_FILE
        if path.is_file():
            previous = json.loads(path.read_text())
            defaults = _jsonable(asdict(AlgorithmComparisonConfig()))  # a setting added since: its default
            changed = [k for k in RUN_SETTINGS if previous.get(k, defaults.get(k)) != current.get(k)]
            if changed:
                raise ValueError(f"{self.root} holds a comparison made with other {', '.join(changed)}; use another "
                                 "--output-dir, or the same settings to resume")
        elif self.root.is_dir() and any(self.root.iterdir()):
            raise ValueError(f"{self.root} is not empty and holds no {CONFIG_FILE}: it is not a comparison's folder; "
                             "choose a new --output-dir")
        from search_gym.experiments.evaluation import parse_prompt_set

        for spec in (self.config.harmful_set, self.config.qa_set):  # a missing file fails now, not after training
            source, _ = parse_prompt_set(spec)
            if source.endswith((".jsonl", ".json")) and not Path(source).is_file():
                raise FileNotFoundError(f"evaluation prompt set {spec!r}: {source} does not exist")
        for run in self.runs():
            self.trainer_config(run)  # every run's config builds (unknown fields, bad values) before the first trains
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / CONFIG_FILE).write_text(json.dumps(current, indent=1))

    def stage_direction(self) -> None:
        """The penalty's direction: the given file, or one extracted from the start model (resolved to its folder:
        'smollm2-aligned' merges the shipped adapter once) as the study extracts it."""
        if not self.config.log_projection and not any(self.config.penalised(arm) for arm in self.config.arms):
            return
        if self.config.direction:
            if not self.direction_path.is_file():
                raise FileNotFoundError(f"--direction {self.direction_path}: no such file (a Direction from "
                                        "`search-gym directions extract`)")
            return
        from search_gym.trainers.core import resolve_model_path

        study = self._study(self.root, model=resolve_model_path(self.config.model))
        if study.done("directions"):
            return
        print(f"algorithms: extracting the {self.config.direction_name} direction of {self.config.model} "
              f"into {self.root / 'directions'}", flush=True)
        study.stage_directions()

    def make_trainer(self, run: Run, config):
        """The run's trainer (tests pass a tiny in-memory policy here)."""
        if self.config.algorithm(run.arm) == "ppo":
            from search_gym.trainers.ppo import PPOTrainer

            return PPOTrainer(config)
        from search_gym.trainers.grpo import GRPOTrainer

        return GRPOTrainer(config)

    def start_model(self) -> str:
        """The start model as a folder (``smollm2-aligned``: the bundled model with the shipped adapter merged)."""
        from search_gym.trainers.core import resolve_model_path

        return str(resolve_model_path(self.config.model))

    def train(self, run: Run) -> None:
        if self.config.untrained(run.arm):
            # nothing to train: the record the report reads (the arm, its start model, the budget it did not use)
            questions, group = self.shape(run.arm)
            run.folder.mkdir(parents=True, exist_ok=True)
            (run.folder / "config.json").write_text(json.dumps({
                "arm": run.arm, "trained": False, "model": self.config.model, "seed": run.seed, "max_steps": 0,
                "questions_per_step": questions, "group_size": group}, indent=1))
            return
        trainer = self.make_trainer(run, self.trainer_config(run))
        trainer.train()  # resumes from the newest checkpoint in run.folder when there is one
        trainer.save_final()
        del trainer
        _free_memory()

    def evaluate(self, run: Run) -> None:
        """``search-gym eval`` of the run's final policy into ``<run>/eval_heldout`` (the study's evaluation)."""
        if self.config.untrained(run.arm):
            # the same start model, greedy, on the same prompts (shared_seed) for every seed: evaluated once, and
            # the finished evaluation of another seed's run is copied rather than computed again
            done = [r for r in self.runs() if r.arm == run.arm and r != run and self.evaluated(r)]
            if done:
                shutil.copytree(done[0].folder / EVAL_STAGE, run.folder / EVAL_STAGE, dirs_exist_ok=True)
                print(f"algorithms: {run.name} shares the evaluation of {done[0].name} (the same untrained model)",
                      flush=True)
                return
            model = self.start_model()
        else:
            model = str(run.final)
        self._study(run.folder).evaluate_policy(EVAL_STAGE, model)
        _free_memory()

    def run_one(self, run: Run) -> None:
        """Train (or resume) and evaluate one run, then write its finished marker."""
        started, seconds = time.perf_counter(), {}
        if not self.trained(run):
            self.train(run)
            seconds["train_seconds"] = round(time.perf_counter() - started, 1)
        if not self.evaluated(run):
            t0 = time.perf_counter()
            self.evaluate(run)
            seconds["eval_seconds"] = round(time.perf_counter() - t0, 1)
        questions, group = self.shape(run.arm)
        steps = 0 if self.config.untrained(run.arm) else self.steps
        (run.folder / "done.json").write_text(json.dumps({
            "arm": run.arm, "seed": run.seed, "steps": steps, "episodes": steps * questions * group,
            "questions_per_step": questions, "group_size": group,
            **seconds}, indent=1))  # seconds of this invocation only (a resumed run's earlier part is not in them)

    # ------------------------------------------------------------------ scheduling

    def uses_vllm(self) -> bool:
        """vLLM keeps its GPU memory until its process ends: such runs need a process each."""
        train_backend = _merged(self.config.train, self.config.grpo, self.config.ppo).get("generation_backend")
        return self.config.eval_agent == "vllm" or train_backend == "vllm"

    def run_all(self) -> list[Run]:
        """Every unfinished run, one after the other in this process or ``parallel`` subprocesses at once. Returns
        the runs that failed (their error is in ``<run>/log.txt``)."""
        todo = [r for r in self.runs() if not self.finished(r)]
        total = len(self.runs())
        for run in self.runs():
            if run not in todo:
                print(f"algorithms: {run.name} finished earlier, skipped", flush=True)
        if not todo:
            return []
        print(f"algorithms: {len(todo)} of {total} runs to do, {self.steps} steps x {self.episodes_per_step} episodes "
              f"= {self.config.episodes:,} episodes each, {self.config.parallel} at a time", flush=True)
        if self.config.parallel == 1 and not self.uses_vllm():
            for k, run in enumerate(todo, 1):
                print(f"algorithms: [{k}/{len(todo)}] {run.name}", flush=True)
                self.run_one(run)
            return []
        return self.run_parallel(todo)

    def worker_command(self, run: Run) -> list[str]:
        """The command of a run's subprocess (tests replace it)."""
        return [sys.executable, "-m", "search_gym.experiments.algorithms", "--worker", str(self.root / CONFIG_FILE),
                run.arm, str(run.seed)]

    def run_parallel(self, todo: list[Run]) -> list[Run]:
        env = dict(os.environ)
        # Several processes share one GPU: expandable segments keep the caching allocator from fragmenting it.
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        waiting, running, failed, done = list(todo), {}, [], 0
        started, last_status = time.perf_counter(), 0.0
        try:
            while waiting or running:
                while waiting and len(running) < self.config.parallel:
                    run = waiting.pop(0)
                    run.folder.mkdir(parents=True, exist_ok=True)
                    log = open(run.folder / "log.txt", "a", encoding="utf-8")
                    running[run] = (subprocess.Popen(self.worker_command(run), stdout=log, stderr=subprocess.STDOUT,
                                                     env=env), log)
                    print(f"algorithms: started {run.name} (log: {run.folder / 'log.txt'})", flush=True)
                changed = False
                for run, (proc, log) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    log.close()
                    del running[run]
                    changed = True
                    if proc.returncode == 0 and self.finished(run):
                        done += 1
                        print(f"algorithms: finished {run.name}", flush=True)
                    else:
                        failed.append(run)
                        print(f"algorithms: FAILED {run.name} (exit {proc.returncode}); see {run.folder / 'log.txt'}",
                              flush=True)
                now = time.perf_counter()
                if changed or now - last_status >= self.status_seconds:
                    print(self.status_line(done, len(todo), failed, running, waiting, now - started), flush=True)
                    last_status = now
                if running:
                    time.sleep(self.poll_seconds)
        except KeyboardInterrupt:
            for proc, log in running.values():  # our own children only; they resume from their checkpoints
                proc.terminate()
                proc.wait()
                log.close()
            raise
        return failed

    def status_line(self, done: int, total: int, failed: list, running: dict, waiting: list, seconds: float) -> str:
        parts = [f"{done}/{total} done"]
        for run in running:
            parts.append(f"{run.name} {self.where(run)}")
        if waiting:
            parts.append(f"{len(waiting)} waiting")
        if failed:
            parts.append(f"{len(failed)} failed")
        return f"algorithms: {' | '.join(parts)} | {seconds / 60:.1f} min"

    def where(self, run: Run) -> str:
        """How far a run is: its last logged step, or its finished evaluation cells."""
        if self.trained(run):
            cells = list((run.folder / EVAL_STAGE / "trajectories").glob("*.meta.json"))
            finished = [p for p in cells if not p.name.endswith(".partial.meta.json")]
            return f"eval {len(finished)}/{2 * len(self.config.attacks)} cells"
        path = run.folder / "metrics.csv"
        lines = path.read_text().strip().splitlines() if path.is_file() else []
        step = lines[-1].split(",", 1)[0] if len(lines) > 1 else "0"
        return f"train step {step}/{self.steps}"

    # ------------------------------------------------------------------ report

    def setup_lines(self) -> list[str]:
        c = self.config
        q, g = self.shape("grpo")
        pq, pg = self.shape("ppo")
        lines = [
            f"- Start model `{c.model}`; arms {', '.join(f'`{a}`' for a in c.arms)}; seeds {list(c.seeds)}; baseline "
            f"`{c.baseline}`.",
            f"- Equal budget: {c.episodes:,} training episodes per run = {self.steps} steps x {self.episodes_per_step} "
            f"episodes (GRPO arms {q} questions x {g}, PPO {pq} questions x {pg}).",
            f"- Held-out evaluation: {c.harmful_set} and {c.qa_set} x attacks {', '.join(c.attacks)}, up to "
            f"{c.eval_prompts} prompts per cell (seed {c.shared_seed}: the same prompts for every run), agent "
            f"`{c.eval_agent}` greedy, {c.eval_max_new_tokens} new tokens per turn.",
        ]
        penalised = [a for a in c.arms if c.penalised(a)]
        if penalised:
            lines.insert(2, f"- {', '.join(f'`{a}`' for a in penalised)}: lambda {c.penalty_lambda} on "
                            f"`{self.direction_path}`.")
        for name in (a for a in c.arms if a in c.variants):
            if c.untrained(name):
                lines.insert(-1, f"- `{name}`: not trained (the start model `{c.model}`, evaluated as every run is).")
                continue
            spec = ", ".join(f"{k} {v}" for k, v in c.variants[name].items() if k != "arm")
            q, g = self.shape(name)
            lines.insert(-1, f"- `{name}`: `{c.base_arm(name)}` with {spec} ({q} questions x {g}).")
        if c.log_projection:
            lines.insert(-1, f"- Every GRPO arm logs its projection on `{self.direction_path}` (lambda 0 where not "
                             "penalised).")
        return lines

    def report(self) -> dict:
        """The report of what the folder holds; its setup lines come from the folder's own settings (a
        --report-only call need not repeat the flags the runs were made with)."""
        c = self.config
        saved = json.loads((self.root / CONFIG_FILE).read_text())
        from search_gym.configs import build_config, config_keys

        keys = config_keys(AlgorithmComparisonConfig)  # fields of this version only
        made_with = build_config(AlgorithmComparisonConfig, **{k: v for k, v in saved.items() if k in keys})
        result = write_report(self.root, baseline=c.baseline, arms=made_with.arms, metrics=c.table_metrics,
                              setup=AlgorithmComparison(made_with).setup_lines(), n_boot=c.bootstrap,
                              seed=c.shared_seed, smooth=c.smooth,
                              pairs=(c if c.pairs else made_with).extra_pairs())
        print(result["markdown"])
        print(f"algorithms: report in {self.root / 'comparison.md'}, curves in {result['png']}", flush=True)
        return result

    def run(self) -> dict:
        """The whole comparison: the direction, every unfinished run, the report."""
        if self.config.report_only:
            check_folder(self.root)
            return self.report()
        self.prepare()
        self.stage_direction()
        failed = self.run_all()
        result = self.report()
        if failed:
            raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(r.name for r in failed)} (their log.txt "
                               "says why); run the same command again to resume them")
        return result


def _free_memory() -> None:
    """Give a finished run's GPU memory back before the next run of this process."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ---------------------------------------------------------------------------------------------- command line


def add_compare_algorithms_parser(sub) -> None:
    """``search-gym compare-algorithms``: flags generated from :class:`AlgorithmComparisonConfig`."""
    from search_gym.configs import add_config_parser

    add_config_parser(sub, "compare-algorithms", AlgorithmComparisonConfig, main,
                      help="PPO, GRPO (grpo / dr_grpo / dapo losses) and representation-guided GRPO at an equal "
                      "budget of episodes, over seeds: curves with seed bands and a paired held-out table",
                      description=(__doc__ or "").split("\n\n")[0])


def main(args) -> int:
    """Run the comparison of the parsed ``args``; bad settings or a foreign folder print one line and return 2."""
    from search_gym.configs import build_config

    try:
        config = build_config(AlgorithmComparisonConfig, args, args.config)
        AlgorithmComparison(config).run()
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"compare-algorithms: {exc}", file=sys.stderr)
        return 2
    return 0


def _worker(argv: list[str]) -> int:
    """One run in its own process: ``--worker CONFIG_JSON ARM SEED`` (what run_parallel starts)."""
    if len(argv) != 4 or argv[0] != "--worker":
        print("usage: python -m search_gym.experiments.algorithms --worker COMPARISON_CONFIG_JSON ARM SEED",
              file=sys.stderr)
        return 2
    from search_gym.configs import build_config

    values = json.loads(Path(argv[1]).read_text())
    # its output goes to a log file: no progress bars; one process, one run
    config = build_config(AlgorithmComparisonConfig, **{**values, "progress": False, "parallel": 1})
    comparison = AlgorithmComparison(config)
    run = next((r for r in comparison.runs() if r.arm == argv[2] and r.seed == int(argv[3])), None)
    if run is None:
        print(f"no run {argv[2]}/seed{argv[3]} in {argv[1]}", file=sys.stderr)
        return 2
    comparison.run_one(run)
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
