"""The experiment schema: one validated model per experiment file, and its expansion into cells.

An experiment is a grid: methods x model sizes x orpo_lambda (ORPO) / dpo_beta (DPO) x seeds.
`expand_cells` turns it into training cells with their dependencies (pretrain -> sft -> dpo,
pretrain -> orpo, pretrain -> rm). Unknown keys are errors (`extra="forbid"`), and every error
names its field, so a typo never silently falls back to a default.

Defaults are the ORPO paper's (Hong, Lee and Thorne 2024): SFT lr 1e-5 for 1 epoch, DPO
beta 0.1 with lr 5e-6 for 3 epochs, ORPO max lr 8e-6 for 10 epochs, AdamW with linear warmup then
cosine decay, best checkpoint by eval loss.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orpo.methods import METHOD_NAMES, METHODS, OTHER_METHODS, starts_from_sft

Method = Literal[METHOD_NAMES]  # the registry's names: sft, dpo, orpo, simpo, cpo, ipo
# Constraints as types, so that they also appear in JSON schemas (Prefect validates deployment
# parameters against the flow's schema on the server, before a flow run is created).
OrpoLambda = Annotated[float, Field(ge=0, allow_inf_nan=False)]
DpoBeta = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Stage = Literal[("pretrain", *METHOD_NAMES, "rm", "base")]
# "base" is never trained: it names the untrained starting model of a size, which is evaluated
# and judged like a policy (the positive control: what did training change?).
BASE = "base"
POLICY_STAGES = METHOD_NAMES
NllScope = Literal["response", "full"]  # tokens the NLL covers: the response, or prompt too
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"  # Prefect deployment names and artifact keys accept these


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimConfig(Strict):
    """Optimisation of one training stage (AdamW, linear warmup then cosine decay)."""

    lr: float = Field(gt=0, description="peak learning rate")
    epochs: float = Field(gt=0, description="passes over the training pairs")
    batch_size: int = Field(8, ge=1, description="pairs per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="fraction of steps warming up")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping threshold")
    eval_every: int = Field(50, ge=1, description="optimizer steps between eval-loss passes")
    checkpoint_every: int = Field(100, ge=1, description="optimizer steps between checkpoints")
    max_steps: int | None = Field(None, ge=1, description="cap on optimizer steps (smoke runs)")


class SyntheticDataConfig(Strict):
    """Size of the generated preference suite (see orpo/data/synthetic.py)."""

    n_train: int = Field(1024, ge=1)
    n_eval: int = Field(128, ge=1)
    n_test: int = Field(64, ge=1)
    families: list[str] | None = None
    seed: int = 0


# A long prompt is cut from the left to max_prompt_length; what remains of max_length is the
# response's room. Below this many tokens a response is mostly truncation.
MIN_RESPONSE_TOKENS = 8


class DataConfig(Strict):
    source: Literal["synthetic", "hh-rlhf", "ultrafeedback"] = "synthetic"
    path: str | None = Field(None, description="hub id or local json/jsonl/parquet (train pairs)")
    test_path: str | None = Field(None, description="hub id or local file for test prompts")
    train_split: str = "train"
    test_split: str = "test"
    limit: int | None = Field(None, ge=1, description="keep at most this many training pairs")
    eval_size: int = Field(128, ge=1, description="pairs held out from train for eval loss")
    test_size: int = Field(64, ge=1, description="test prompts used for generation")
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    max_length: int = Field(128, ge=8, description="prompt + response tokens")
    max_prompt_length: int = Field(64, ge=4, description="prompts are cut from the left")
    tokenizer_vocab_size: int = Field(512, ge=64, description="tokenizer trained for presets")

    @model_validator(mode="after")
    def _paths_match_source(self) -> DataConfig:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        if self.max_length - self.max_prompt_length < MIN_RESPONSE_TOKENS:
            raise ValueError(
                f"data.max_prompt_length={self.max_prompt_length} leaves "
                f"{self.max_length - self.max_prompt_length} of data.max_length="
                f"{self.max_length} tokens for the response; at least {MIN_RESPONSE_TOKENS} "
                "are needed (TRL's defaults keep 512 of 1024 tokens for the prompt)"
            )
        return self


class SimpoConfig(OptimConfig):
    """SimPO (Meng et al. 2024): optimiser settings and the loss's beta and margin gamma (in
    reward units, as the paper writes it; TRL's `simpo_gamma` is the same gamma)."""

    # defaults: the paper's Llama-3-8B-Instruct setting, with the learning rate below
    beta: float = Field(2.5, gt=0, allow_inf_nan=False, description="reward scale")
    gamma: float = Field(1.4, ge=0, allow_inf_nan=False, description="target reward margin")


class CpoConfig(OptimConfig):
    """CPO (Xu et al. 2024): optimiser settings and the preference term's beta (the NLL term on
    the chosen response has weight 1, as in the paper)."""

    beta: float = Field(0.1, gt=0, allow_inf_nan=False, description="preference term's scale")


class IpoConfig(OptimConfig):
    """IPO (Azar et al. 2023): optimiser settings and the regularisation tau (the squared loss
    pulls the log-ratio margin towards 1 / (2 tau))."""

    tau: float = Field(0.1, gt=0, allow_inf_nan=False, description="regularisation strength")


LOSS_SECTIONS = {"simpo": SimpoConfig, "cpo": CpoConfig, "ipo": IpoConfig}
"""Methods whose loss hyper-parameters live in their own YAML section (orpo_lambdas and
dpo_betas are grid axes at the top level)."""


class PretrainConfig(OptimConfig):
    """Optional first stage giving tiny random presets a base model trained on domain text
    (prompts with chosen AND rejected responses alike), so every method of a size starts from
    the same base, as the paper's methods start from one pretrained OPT.

    `lr` and `epochs` are required only when the stage is enabled: `{enabled: false}` alone
    switches it off."""

    enabled: bool = True
    lr: float | None = Field(None, gt=0, description="peak learning rate (required if enabled)")
    epochs: float | None = Field(None, gt=0, description="passes over the texts (if enabled)")

    @model_validator(mode="after")
    def _settings_when_enabled(self) -> PretrainConfig:
        if self.enabled:
            missing = [f for f in ("lr", "epochs") if getattr(self, f) is None]
            if missing:
                raise ValueError(
                    f"pretrain is enabled, so pretrain.{' and pretrain.'.join(missing)} "
                    "must be given (or set pretrain.enabled: false)"
                )
        return self


class EvalConfig(Strict):
    samples_per_prompt: int = Field(5, ge=1, description="K samples per prompt (rounds)")
    temperature: float = Field(1.0, gt=0, description="the paper samples at 1.0")
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1, description="prompts per generation batch")
    judge: str = Field(
        "reward-model",
        description="'oracle' (synthetic only), 'reward-model' (an rm cell), or a hub id/path",
    )
    rm_model: str = Field("opt-medium", description="size of the Bradley-Terry judge (rm cell)")
    n_bootstrap: int = Field(1000, ge=100)
    base_row: bool = Field(
        True,
        description="also generate from the untrained base (for a preset: the pretrain cell's "
        "model, or its random init) and compare every method with it; SFT vs base is the "
        "report's positive control",
    )
    resample_control: bool = Field(
        True,
        description="sample the first seed's SFT policy again with another sampling seed and "
        "compare it with itself: the report's negative control",
    )
    embedder: str = Field("all-MiniLM-L6-v2", description="sentence embedder for diversity")


class ResourcesConfig(Strict):
    procs_per_cell: int = Field(1, ge=1, description="DeepSpeed processes per training cell")
    max_parallel_cells: int = Field(1, ge=1, description="cells training at the same time")
    slot_timeout_s: float = Field(
        86_400.0,  # a float, as it reads back from job.json: the cell key hashes it
        gt=0,
        description="a cell waiting longer than this for a training slot fails, naming the limit",
    )
    zero_stage: Literal[0, 1, 2, 3] = 3
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 on GPUs, fp32 on CPU (bf16 is ~8x slower there)"
    )
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node cells")
    retries: int = Field(1, ge=0, description="retries of a failed cell (resumes from checkpoint)")
    threads_per_proc: int | None = Field(None, ge=1, description="OMP threads per process")


MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


def short_model_name(source: str) -> str:
    """The display name of a model given by preset, alias, hub id or path: its last path
    component ("facebook/opt-125m" -> "opt-125m", "/data/SmolLM2-135M/" -> "smollm2-135m",
    "x/model.gguf" -> "model"), lowercased, other characters as "-"."""
    last = source.rstrip("/").replace("\\", "/").split("/")[-1]
    last = last.removesuffix(".gguf") or "model"
    name = re.sub(r"[^a-z0-9._-]+", "-", last.lower()).strip("-._")
    return name or "model"


Finetuning = Literal["full", "lora"]


class LoraConfig(Strict):
    """LoRA adapters (Hu et al. 2021) for the models whose entry says `finetuning: lora`: the
    policy cells train only the adapters (peft), and each cell's exported model has them merged
    in, so DPO's reference, generation and judging read a plain checkpoint."""

    r: int = Field(8, ge=1, description="rank of the adapters")
    alpha: float = Field(16.0, gt=0, description="scale: the update is (alpha / r) B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="module names to adapt; None: peft's default for the architecture",
    )


class ModelEntry(Strict):
    """One model of the grid: a short name (cell ids, MLflow, the report, plots), where its
    weights come from, and how its policies are fine-tuned. In YAML either a plain string (the
    name is derived from it) or `{name: smol, path: ..., finetuning: lora}`; the same path may
    appear twice, once per finetuning, which is how one experiment asks "does ORPO still win
    with LoRA?" (a LoRA entry without a name is called `<name>-lora`)."""

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="display name, in cell ids")
    path: str = Field(
        min_length=1,
        description="preset (opt-tiny...), paper alias (opt-125m), hub id, local folder, "
        ".gguf file or packaged GGUF alias (smollm2-135m-instruct)",
    )
    finetuning: Finetuning = Field(
        "full", description="policy cells train every weight, or LoRA adapters (see `lora`)"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value):
        if isinstance(value, str):
            return {"name": short_model_name(value), "path": value}
        if isinstance(value, dict) and "path" in value and "name" not in value:
            suffix = "-lora" if value.get("finetuning") == "lora" else ""
            return {**value, "name": short_model_name(str(value["path"])) + suffix}
        return value


def _paper_optim(lr: float, epochs: float) -> OptimConfig:
    return OptimConfig(lr=lr, epochs=epochs)


class Experiment(Strict):
    """One experiment file."""

    name: str = Field(pattern=NAME_PATTERN, description="also the Prefect deployment name")
    description: str = ""
    data: DataConfig = DataConfig()
    models: list[ModelEntry] = Field(
        min_length=1,
        description="presets (opt-tiny...), hub ids, paths, GGUF files, or {name, path}",
    )
    methods: list[Method] = Field(["sft", "dpo", "orpo"], min_length=1)
    orpo_lambdas: list[OrpoLambda] = Field([0.1], min_length=1)
    dpo_betas: list[DpoBeta] = Field([0.1], min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    nll_scope: NllScope = Field(
        "response", description="tokens in ORPO/SFT NLL: response only, or prompt too (TRL)"
    )
    pretrain: PretrainConfig | None = None
    sft: OptimConfig = _paper_optim(1e-5, 1)
    dpo: OptimConfig = _paper_optim(5e-6, 3)
    orpo: OptimConfig = _paper_optim(8e-6, 10)
    # Not in the ORPO paper; one epoch each. SimPO: its Llama-3-8B-Instruct setting (1e-6). CPO:
    # its paper used 1e-4 with LoRA; full fine-tuning here takes SimPO's rate. IPO: its paper
    # gives no LLM recipe; 5e-7, the order of DPO's rates for 7B models.
    simpo: SimpoConfig = SimpoConfig(lr=1e-6, epochs=1)
    cpo: CpoConfig = CpoConfig(lr=1e-6, epochs=1)
    ipo: IpoConfig = IpoConfig(lr=5e-7, epochs=1)
    rm: OptimConfig = _paper_optim(1e-5, 1)
    eval: EvalConfig = EvalConfig()
    resources: ResourcesConfig = ResourcesConfig()
    trust_remote_code: bool = False

    keep_dropout: bool = Field(
        False, description="keep the checkpoints' dropout (off by default in policy and reference)"
    )
    lora: LoraConfig = LoraConfig()

    @field_validator("methods", "seeds", "orpo_lambdas", "dpo_betas")
    @classmethod
    def _unique(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate entries in {values}")
        return values

    @field_validator("models")
    @classmethod
    def _distinct_models(cls, entries: list[ModelEntry]) -> list[ModelEntry]:
        for field in ("name", "path"):
            seen: dict[object, int] = {}
            for i, entry in enumerate(entries):
                # one path may appear once per finetuning (full and LoRA from the same weights)
                value = entry.name if field == "name" else (entry.path, entry.finetuning)
                if value in seen:
                    what = (
                        f"name {value!r} (give one of them another `name:`)"
                        if field == "name"
                        else f"path {entry.path!r} with finetuning {entry.finetuning!r}"
                    )
                    raise ValueError(f"models.{seen[value]} and models.{i} share the {what}")
                seen[value] = i
        return entries

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def rm_model_name(self) -> str:
        """The Bradley-Terry judge's model as a display name: a `models` entry it names (by
        name or path), else derived from `eval.rm_model` like any model."""
        named = [e for e in self.models if self.eval.rm_model in (e.name, e.path)]
        # a path listed for full and LoRA: the judge trains every weight, like the full entry
        for entry in sorted(named, key=lambda e: e.finetuning != "full"):
            return self.pretrain_model(entry.name)
        return short_model_name(self.eval.rm_model)

    def finetuning(self, name: str) -> Finetuning:
        """How the policies of model `name` train ("full" for the reward model's own model)."""
        return next((e.finetuning for e in self.models if e.name == name), "full")

    def pretrain_model(self, name: str) -> str:
        """The model whose pretraining cell `name` starts from: a LoRA entry shares the cell of
        the full-finetuning entry of the same path (pretraining always trains every weight),
        so full and LoRA policies start from one base."""
        entry = next((e for e in self.models if e.name == name), None)
        if entry is None or entry.finetuning == "full":
            return name
        twin = next(
            (e for e in self.models if e.path == entry.path and e.finetuning == "full"), None
        )
        return twin.name if twin else name

    @property
    def rm_seed(self) -> int:
        """The reward-model judge trains once, with the first seed (the paper trains its judge
        once per data set)."""
        return self.seeds[0]

    def model_path(self, name: str) -> str:
        """Where the weights of the model called `name` come from (preset, hub id, path...)."""
        for entry in self.models:
            if entry.name == name:
                return entry.path
        if name == self.rm_model_name:
            return self.eval.rm_model
        raise KeyError(f"no model named {name!r} in experiment {self.name}")

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        from_sft = [m for m in self.methods if starts_from_sft(m)]
        if from_sft and "sft" not in self.methods:
            raise ValueError(
                f"methods: {', '.join(map(repr, from_sft))} start from the SFT checkpoint, so "
                f"'sft' is required (methods={self.methods!r})"
            )
        if self.eval.judge == "oracle" and self.data.source != "synthetic":
            raise ValueError("eval.judge 'oracle' exists only for data.source 'synthetic'")
        return self


class Cell(Strict):
    """One training job: a stage on one model with one lambda/beta and one seed."""

    id: str
    stage: Stage
    model: str
    seed: int
    orpo_lambda: float | None = None
    dpo_beta: float | None = None
    params: dict[str, float] = {}
    """The method's loss hyper-parameters from its YAML section (SimPO's beta and gamma...)."""
    depends_on: list[str] = []
    resample_of: str | None = None
    """Set on a negative-control cell: the trained cell whose model it samples again."""

    @model_validator(mode="after")
    def _params_are_the_methods_knobs(self) -> Cell:
        expected = set(METHODS[self.stage].knobs) if self.stage in OTHER_METHODS else set()
        if set(self.params) != expected:
            raise ValueError(
                f"cell {self.id}: params {sorted(self.params)} are not {self.stage}'s loss "
                f"settings {sorted(expected)}"
            )
        return self


def _fmt(x: float) -> str:
    return f"{x:g}"


def cell_id(stage: Stage, model: str, seed: int, orpo_lambda=None, dpo_beta=None) -> str:
    model_part = model.replace("/", "--").replace(".", "_")
    knob = f"-l{_fmt(orpo_lambda)}" if orpo_lambda is not None else ""
    knob += f"-b{_fmt(dpo_beta)}" if dpo_beta is not None else ""
    return f"{stage}-{model_part}{knob}-s{seed}"


def expand_cells(exp: Experiment) -> list[Cell]:
    """Cells in dependency order (every cell after the cells it depends on)."""
    cells: list[Cell] = []
    pretrained = exp.pretrain is not None and exp.pretrain.enabled

    def add(stage: Stage, model: str, seed: int, depends_on: list[str], params=None, **knob):
        cid = cell_id(stage, model, seed, **knob)
        cells.append(Cell(id=cid, stage=stage, model=model, seed=seed, depends_on=depends_on,
                          params=params or {}, **knob))  # fmt: skip
        return cid

    def base(model: str, seed: int) -> list[str]:
        return [cell_id("pretrain", exp.pretrain_model(model), seed)] if pretrained else []

    judge_models = [exp.rm_model_name] if exp.eval.judge == "reward-model" else []
    if pretrained:
        for model in dict.fromkeys([*map(exp.pretrain_model, exp.model_names), *judge_models]):
            for seed in exp.seeds if model in exp.model_names else [exp.rm_seed]:
                add("pretrain", model, seed, [])
    for model in judge_models:
        add("rm", model, exp.rm_seed, base(model, exp.rm_seed))
    for model in exp.model_names:
        for seed in exp.seeds:
            if "sft" in exp.methods:
                sft = add("sft", model, seed, base(model, seed))
            for beta in exp.dpo_betas if "dpo" in exp.methods else []:
                add("dpo", model, seed, [sft], dpo_beta=beta)  # validated: dpo needs sft
            for lam in exp.orpo_lambdas if "orpo" in exp.methods else []:
                add("orpo", model, seed, base(model, seed), orpo_lambda=lam)
            for name in (m for m in OTHER_METHODS if m in exp.methods):
                start = [sft] if starts_from_sft(name) else base(model, seed)
                add(name, model, seed, start, params=method_params(exp, name))
    return cells


def rm_cell_id(exp: Experiment) -> str:
    """The Bradley-Terry judge's cell: one per experiment (`Experiment.rm_seed`)."""
    return cell_id("rm", exp.rm_model_name, exp.rm_seed)


def has_base_row(exp: Experiment, model: str) -> bool:
    return exp.eval.base_row


def base_cells(exp: Experiment) -> list[Cell]:
    """The untrained base of every model that has a base row, once per seed (sampling seeds
    differ; the weights are those every method of that model and seed starts from)."""
    pretrained = exp.pretrain is not None and exp.pretrain.enabled
    return [
        Cell(
            id=cell_id(BASE, model, seed),
            stage=BASE,
            model=model,
            seed=seed,
            depends_on=[cell_id("pretrain", exp.pretrain_model(model), seed)] if pretrained else [],
        )  # fmt: skip
        for model in exp.model_names
        if has_base_row(exp, model)
        for seed in exp.seeds
    ]


RESAMPLED_SUFFIX = "-resampled"
# Added to a cell's seed for its negative-control samples: another sampling stream, same weights.
RESAMPLE_SEED_OFFSET = 10_007


def control_cells(exp: Experiment) -> list[Cell]:
    """The negative controls: the first seed's SFT policy of every model, sampled again with
    another sampling seed (`RESAMPLE_SEED_OFFSET`). Judged against the original samples, a sound
    pipeline finds no winner. Not trained: they read the SFT cell's model."""
    if not exp.eval.resample_control or "sft" not in exp.methods:
        return []
    seed = exp.seeds[0]
    controls = []
    for model in exp.model_names:
        sft = cell_id("sft", model, seed)
        controls.append(
            Cell(
                id=sft + RESAMPLED_SUFFIX,
                stage="sft",
                model=model,
                seed=seed,
                depends_on=[sft],
                resample_of=sft,
            )  # fmt: skip
        )
    return controls


def evaluated_cells(exp: Experiment) -> list[Cell]:
    """Everything that generates and is judged: the trained policies, the base rows, then the
    negative controls."""
    policies = [c for c in expand_cells(exp) if c.stage in POLICY_STAGES]
    return policies + base_cells(exp) + control_cells(exp)


def optim_for(exp: Experiment, stage: Stage) -> OptimConfig:
    if stage == "pretrain":
        assert exp.pretrain is not None
        return OptimConfig(**exp.pretrain.model_dump(exclude={"enabled"}))  # validated: set
    if stage in LOSS_SECTIONS:  # the optimiser part; the loss's knobs travel in Cell.params
        return OptimConfig(**getattr(exp, stage).model_dump(include=set(OptimConfig.model_fields)))
    return getattr(exp, stage)


def method_params(exp: Experiment, stage: str) -> dict[str, float]:
    """The loss hyper-parameters of a method with its own section ({} for the others)."""
    if stage not in LOSS_SECTIONS:
        return {}
    section = getattr(exp, stage)
    return {knob: float(getattr(section, knob)) for knob in METHODS[stage].knobs}


class ConfigError(ValueError):
    """An experiment file that cannot be used; the message names the file and the fields."""


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid experiment ({err.error_count()} problem(s))"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; unknown keys are errors)"
        lines.append(f"  - {where}: {msg}{_given(e)}")
    return "\n".join(lines)


def _given(error: dict) -> str:
    """', got <value>' for a field's offending value; nothing for whole-section checks, whose
    input is the section itself (their message names the values)."""
    if not error["loc"] or "input" not in error or isinstance(error["input"], dict):
        return ""
    text = repr(error["input"])
    return f", got {text if len(text) <= 80 else text[:77] + '...'}"


def parse_experiment(raw: dict, source: str = "<experiment>") -> Experiment:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        return Experiment.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None


def set_override(raw: dict, dotted_key: str, value) -> dict:
    """Apply `--set a.b=value` to the raw mapping (validated afterwards like the file)."""
    node = raw
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted_key}: {part!r} is not a section")
        node = child
    node[leaf] = value
    return raw


def parse_overrides(pairs: list[str]) -> list[tuple[str, object]]:
    out = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        out.append((key.strip(), yaml.safe_load(text)))  # YAML typing: 0.5 -> float, [..] -> list
    return out


def load_raw(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return raw if raw is not None else {}


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    raw = load_raw(path)
    for key, value in parse_overrides(overrides or []):
        set_override(raw, key, value)
    return parse_experiment(raw, str(path))
