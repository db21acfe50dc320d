"""``search-gym study``: the reference study end to end, one resumable command.

RL-search-safety's question on the bundled model: does GRPO on benign QA erode an aligned search agent's safety,
and does a representation-guided penalty keep it? Stages, each skipped when its output is complete (every stage
also resumes inside itself: SFT and GRPO from their newest checkpoint, the evaluations per finished cell)::

    output_dir/
      sft/               SFT warm start (SFTConfig from sft_config; its final/ is the aligned starting point)
      directions/        harmful-search direction of the SFT model (search-gym directions extract + select:
                         style-matched contrast, layer chosen on the validation matched pairs)
      eval_sft/          safety eval under attacks on held-out harmful prompts + EM on the QA test split
      grpo/              GRPO on benign QA (penalty lambda 0: the projection and drift are logged, not used)
      eval_grpo/
      grpo_penalty/      representation-guided GRPO from the same SFT checkpoint (penalty_lambda > 0)
      eval_grpo_penalty/
      study.md, study.json, curves.png, drift.png    the table (95% intervals), curves and drift of both runs

Held-out discipline: the direction's layer is chosen on validation matched pairs; the evaluation reads only the
held-out harmful prompts and the QA test split, which no stage trains or selects on.
"""

from __future__ import annotations

import functools
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_gym.configs import help_field as _help

STAGES = ("sft", "directions", "eval_sft", "grpo", "eval_grpo", "grpo_penalty", "eval_grpo_penalty", "report")
RUNS = {"sft": "eval_sft", "grpo": "eval_grpo", "grpo_penalty": "eval_grpo_penalty"}
TABLE_METRICS = (("search_safety", "search safety", 1), ("refusal", "refusal", 1), ("refusal_first", "first-turn refusal", 1),
                 ("answer_safety", "answer safety", 1), ("searches", "searches / ep", 2), ("em", "EM", 3))
CURVES = ("charts/episodic_return", "charts/em", "safety/search_safety", "safety/projection")


@dataclass
class StudyConfig:
    """The study's stages and settings (see the module docstring); every field has a flag."""

    output_dir: str = _help("study folder (an existing one is resumed)", default="runs/study")
    model: str = _help("starting model of the SFT warm start ('smollm2', a folder or hub id), or the aligned model "
                       "itself when sft_config is empty", default="smollm2")
    sft_config: str = _help("YAML of SFTConfig fields for the warm start ('' skips SFT: model is already aligned)",
                            default="examples/configs/sft_smollm2.yaml")
    sft_data: str | None = _help("an sft_data.jsonl built earlier (search-gym train sft --data-only) to train on",
                                 default=None)
    grpo_config: str = _help("YAML of GRPOConfig fields shared by both GRPO runs", default="examples/configs/grpo_study.yaml")
    grpo_max_steps: int = _help("steps of both GRPO runs (0: grpo_config's max_steps)", default=0)
    penalty_lambda: float = _help("lambda of the representation-guided run", default=0.5)
    direction: str = _help("direction file of the extract run used by the penalty and for drift: harmfulness "
                           "(style-matched contrast), attack_search (RL-search-safety's), harmfulness_qa, ...",
                           default="harmfulness")
    direction_args: str = _help("extra flags of `search-gym directions extract`, as one string",
                                default="--n-train all --no-refusal")
    attacks: tuple[str, ...] = _help("attacks of every evaluation", default=("none", "search", "multi_search:n=10"))
    harmful_set: str = _help("harmful prompt set of the evaluation", default="harmful:heldout")
    qa_set: str = _help("QA set of the evaluation (EM)", default="qa:test")
    eval_prompts: int = _help("prompts per evaluation cell (a seeded draw, the same for every model)", default=660)
    retriever: str | None = _help("index of every environment of the study, both GRPO runs' and the evaluations' "
                                  "(dense, bm25, hybrid or a retrieval server URL); default: grpo_config's "
                                  "env.retriever, dense when it sets none", default=None)
    eval_agent: str = _help("agent family of the evaluations: hf or vllm", default="hf")
    eval_num_envs: int = _help("episodes played together in the evaluations", default=128)
    eval_max_new_tokens: int = _help("new tokens per turn in the evaluations", default=64)
    eval_gpu_memory_utilization: float = _help("GPU share of the evaluations' vLLM engine (0: vLLM's default, "
                                               "most of the GPU); a small share lets stages run side by side",
                                               default=0.0)
    device: str | None = _help("torch device (default: cuda if available)", default=None)
    seed: int = _help("seed of every stage", default=0)
    stages: tuple[str, ...] = _help(f"stages to run, in order (default all: {', '.join(STAGES)})", default=STAGES)
    progress: bool = _help("progress bars", default=True)


def env_index(trainer_settings: dict) -> str:
    """The index a trainer's settings (a mapping with an optional ``env``) play with: ``env.retriever``, or dense
    when it is unset (EnvConfig's None is the dense index)."""
    return (trainer_settings.get("env") or {}).get("retriever") or "dense"


class Study:
    """Runs the stages of a :class:`StudyConfig`; ``stage_<name>`` methods do one each (tests replace them)."""

    def __init__(self, config: StudyConfig):
        unknown = set(config.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
        self.config = config
        self.root = Path(config.output_dir)

    # ------------------------------------------------------------------ paths

    def final(self, run: str) -> Path:
        return self.root / run / "final"

    @property
    def aligned(self) -> str:
        return str(self.final("sft")) if self.config.sft_config else self.config.model

    @functools.cached_property
    def index(self) -> str:
        """The index the GRPO runs train with and every evaluation plays with: one environment for the whole study
        (a model trained with one index and evaluated with another would confound the two). Read once."""
        if self.config.retriever:
            return self.config.retriever
        from search_gym.configs import load_config_file

        path = Path(self.config.grpo_config) if self.config.grpo_config else None
        return env_index(load_config_file(path) if path and path.is_file() else {})

    @property
    def direction_path(self) -> Path:
        return self.root / "directions" / f"{self.config.direction}.safetensors"

    def done(self, stage: str) -> bool:
        """A stage is complete when its final output exists (partial work is resumed by the stage itself)."""
        if stage == "sft":
            return not self.config.sft_config or (self.final("sft") / "config.json").exists()
        if stage == "directions":
            return (self.root / "directions" / "layer_scores.json").exists() and self.direction_path.exists()
        if stage.startswith("eval_"):
            return (self.root / stage / "summary.json").exists() and self._eval_complete(stage)
        if stage in ("grpo", "grpo_penalty"):
            return (self.final(stage) / "config.json").exists()
        return False

    def _eval_complete(self, stage: str) -> bool:
        summary = json.loads((self.root / stage / "summary.json").read_text())
        return len(summary.get("cells", [])) == 2 * len(self.config.attacks)

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "study_config.json").write_text(json.dumps(self.config.__dict__, indent=1, default=list))
        for stage in self.config.stages:
            if stage != "report" and self.done(stage):
                print(f"study: {stage} done, skipped")
                continue
            print(f"study: {stage} ...", flush=True)
            getattr(self, f"stage_{stage}")()
        return self.summary() if "report" in self.config.stages else {}

    # ------------------------------------------------------------------ stages

    def stage_sft(self) -> None:
        from search_gym.configs import build_config
        from search_gym.trainers.sft import SFTTrainer
        from search_gym.trainers.sft_config import SFTConfig

        out = self.root / "sft"
        out.mkdir(parents=True, exist_ok=True)
        if self.config.sft_data and not (out / "sft_data.jsonl").exists():
            (out / "sft_data.jsonl").write_bytes(Path(self.config.sft_data).read_bytes())
        config = build_config(SFTConfig, None, self.config.sft_config, model=self.config.model, output_dir=str(out),
                              seed=self.config.seed, device=self.config.device, progress=self.config.progress)
        SFTTrainer(config).train()

    def stage_directions(self) -> None:
        from search_gym.experiments.direction_pipeline import extract, flag_options, select

        folder = self.root / "directions"
        options = {"model": self.aligned, "seed": self.config.seed, "device": self.config.device}
        extract(folder, **{**options, **flag_options("extract", shlex.split(self.config.direction_args))})
        select(folder, direction=self.config.direction)

    def _grpo(self, run: str, penalty_lambda: float) -> None:
        from search_gym.configs import build_config
        from search_gym.trainers.grpo import GRPOTrainer
        from search_gym.trainers.grpo_config import GRPOConfig

        overrides = dict(model=self.aligned, output_dir=str(self.root / run), seed=self.config.seed,
                         device=self.config.device, progress=self.config.progress,
                         penalty={"direction": str(self.direction_path), "lambda": penalty_lambda},
                         env={"retriever": self.index})
        if self.config.grpo_max_steps:
            overrides["max_steps"] = self.config.grpo_max_steps
        config = build_config(GRPOConfig, None, self.config.grpo_config, **overrides)
        trainer = GRPOTrainer(config)
        trainer.train()
        trainer.save_final()

    def stage_grpo(self) -> None:
        self._grpo("grpo", 0.0)

    def stage_grpo_penalty(self) -> None:
        self._grpo("grpo_penalty", self.config.penalty_lambda)

    def evaluate_policy(self, stage: str, model: str) -> None:
        """Greedy evaluation of ``model`` on the held-out harmful and QA sets under the attacks, into ``root/stage``
        (also what ``search-gym compare-algorithms`` runs for each of its runs)."""
        from search_gym.experiments.evaluation import EvalConfig, eval_env, run_eval

        share = self.config.eval_gpu_memory_utilization
        agent_kwargs = {"llm_kwargs": {"gpu_memory_utilization": share}} if share and self.config.eval_agent == "vllm" else {}
        config = EvalConfig(agents=(f"{self.config.eval_agent}:{model}",),
                            prompt_sets=(self.config.harmful_set, self.config.qa_set), attacks=self.config.attacks,
                            num_prompts=self.config.eval_prompts, seed=self.config.seed,
                            out_dir=str(self.root / stage), num_envs=self.config.eval_num_envs,
                            max_new_tokens=self.config.eval_max_new_tokens, device=self.config.device,
                            progress=self.config.progress, plots=False, agent_kwargs=agent_kwargs,
                            env=eval_env(retriever=self.index))
        run_eval(config)

    def stage_eval_sft(self) -> None:
        self.evaluate_policy("eval_sft", self.aligned)

    def stage_eval_grpo(self) -> None:
        self.evaluate_policy("eval_grpo", str(self.final("grpo")))

    def stage_eval_grpo_penalty(self) -> None:
        self.evaluate_policy("eval_grpo_penalty", str(self.final("grpo_penalty")))

    def stage_report(self) -> None:
        summary = self.summary()
        (self.root / "study.json").write_text(json.dumps(summary, indent=1))
        (self.root / "study.md").write_text(study_setup(summary) + "\n\n" + study_table(summary) + "\n")
        runs = {name: self.root / name / "metrics.csv" for name in ("grpo", "grpo_penalty")}
        runs = {k: v for k, v in runs.items() if v.exists()}
        if runs:
            plot_curves(runs, self.root / "curves.png")
        drifts = {name: self.root / name / "drift.jsonl" for name in ("grpo", "grpo_penalty")}
        drifts = {k: v for k, v in drifts.items() if v.exists()}
        if drifts:
            plot_drift(drifts, self.root / "drift.png")
        print(study_table(summary))

    # ------------------------------------------------------------------ results

    def summary(self) -> dict[str, Any]:
        """Per model (sft, grpo, grpo_penalty) and cell: the evaluation metrics with their intervals."""
        out: dict[str, Any] = {"config": self.config.__dict__, "models": {}}
        for run, stage in RUNS.items():
            path = self.root / stage / "summary.json"
            if not path.exists():
                continue
            cells = json.loads(path.read_text())["cells"]
            out["models"][run] = [{"prompt_set": c["prompt_set"], "attack": c["attack"], "episodes": c["episodes"],
                                   "metrics": c["metrics"]} for c in cells]
        for run in ("grpo", "grpo_penalty"):
            cfg = self.root / run / "config.json"
            if cfg.exists():
                out.setdefault("training", {})[run] = json.loads(cfg.read_text())
        return out


def study_setup(summary: dict[str, Any]) -> str:
    """What stands behind the table's numbers: the models, GRPO steps and batch, evaluation prompts and seeds."""
    config = summary["config"]
    lines = [f"- SFT warm start of `{config['model']}` ({config['sft_config'] or 'none: the model is the start'}); "
             f"seed {config['seed']} for every stage, one run each."]
    for run, train in summary.get("training", {}).items():
        steps, q, g = train.get("max_steps"), train.get("questions_per_step"), train.get("group_size")
        episodes = f", {q} questions x {g} episodes per step ({steps * q * g:,} episodes)" if None not in (steps, q, g) else ""
        # config.json of a run: nested sections (env, penalty) since the nested configs; flat keys before
        env, penalty = train.get("env") or {}, train.get("penalty") or {}
        lines.append(f"- `{run}`: {steps} GRPO steps{episodes} on `{env.get('id', train.get('env_id', '?'))}` "
                     f"{env.get('split', train.get('split', ''))}, lr {train.get('learning_rate')}, beta "
                     f"{train.get('beta')}, penalty lambda {penalty.get('lambda', train.get('penalty_lambda'))}.")
    attacks = ", ".join(config["attacks"])
    lines.append(f"- Evaluations: {config['harmful_set']} and {config['qa_set']}, up to {config['eval_prompts']} "
                 f"prompts per cell (a seeded draw, the same for every model; n below is per cell), attacks "
                 f"{attacks}, agent `{config['eval_agent']}`, {config['eval_max_new_tokens']} new tokens per turn; "
                 "95% percentile-bootstrap intervals over episodes.")
    return "\n".join(lines)


def study_table(summary: dict[str, Any]) -> str:
    """Markdown: one row per (model, prompt set, attack), the table metrics as ``mean [lo, hi]``."""
    head = "| model | prompt set | attack | n | " + " | ".join(label for _, label, _ in TABLE_METRICS) + " |"
    lines = [head, "|---|---|---|---:|" + "---:|" * len(TABLE_METRICS)]
    for model, cells in summary["models"].items():
        for c in cells:
            parts = []
            for key, _, digits in TABLE_METRICS:
                m = c["metrics"].get(key)
                if not m or m.get("n", 0) == 0 or m.get("mean") is None:
                    parts.append("–")
                else:
                    parts.append(f"{m['mean']:.{digits}f} [{m['lo']:.{digits}f}, {m['hi']:.{digits}f}]")
            lines.append(f"| {model} | {c['prompt_set']} | {c['attack']} | {c['episodes']} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def plot_curves(runs: dict[str, Path], out: Path) -> Path:
    """Reward, EM, search safety and projection against step for each GRPO run."""
    from search_gym.trainers.curves import plot_curves as plot_metric_curves

    return plot_metric_curves(runs, out, keys=CURVES)


def plot_drift(runs: dict[str, Path], out: Path) -> Path:
    """Mean projection of held-out harmful (and QA) prompts on the SFT model's direction, per checkpoint: the
    values (left) and their change since the first checkpoint (right), where a drift small beside the harmful-QA
    gap is still visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, delta) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, path in runs.items():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = [r["step"] for r in rows]
        for key, style, label in (("mean", "-", "harmful"), ("harmless_mean", "--", "QA")):
            if rows and rows[0].get(key) is not None:
                values = [r[key] for r in rows]
                line, = ax.plot(steps, values, style, marker=".", label=f"{name}: {label}")
                delta.plot(steps, [v - values[0] for v in values], style, marker=".", color=line.get_color())
    ax.set_ylabel("projection on the SFT direction")
    delta.set_ylabel("change since the first checkpoint")
    delta.axhline(0, color="grey", lw=0.8)
    for a in (ax, delta):
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def add_study_parser(sub) -> None:
    from search_gym.configs import add_config_parser

    add_config_parser(sub, "study", StudyConfig, _run,
                      help="the study end to end: SFT -> eval -> GRPO -> eval -> guided GRPO -> eval",
                      description=(__doc__ or "").split("\n\n")[0])


def _run(args) -> int:
    from search_gym.configs import build_config

    Study(build_config(StudyConfig, args, args.config)).run()
    return 0
