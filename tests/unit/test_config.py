"""The experiment schema: shipped files validate, bad input is rejected naming the field."""

from pathlib import Path

import pytest
import yaml

from orpo.cli import main
from orpo.config import ConfigError, expand_cells, load_experiment, parse_experiment
from orpo.plan import plan_lines

pytestmark = pytest.mark.unit
EXPERIMENTS = sorted((Path(__file__).parents[2] / "experiments").glob("*.yaml"))
MINIMAL = {"name": "tiny", "models": ["opt-tiny"]}


def test_experiments_folder_is_not_empty():
    assert {p.stem for p in EXPERIMENTS} >= {"smoke", "paper-hh-rlhf", "paper-ultrafeedback"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_shipped_experiment_validates_and_plans(path):
    exp = load_experiment(path)
    assert exp.name == path.stem  # the deployment name is the file name
    lines = plan_lines(exp)
    assert len(lines) == len(expand_cells(exp)) + 3  # header + cells + total + GPU-hours
    assert lines[-1].startswith("GPU-hours <= ")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_shipped_experiment_has_a_deployment(path):
    prefect_yaml = yaml.safe_load((path.parents[1] / "prefect.yaml").read_text())
    names = {d["name"]: d["parameters"]["experiment_file"] for d in prefect_yaml["deployments"]}
    assert names.get(path.stem) == f"experiments/{path.name}"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({**MINIMAL, "orpo_lamda": [0.1]}, "orpo_lamda"),  # misspelt key
        ({**MINIMAL, "orpo_lambdas": [-0.5]}, "orpo_lambdas"),
        ({**MINIMAL, "dpo_betas": [0]}, "dpo_betas"),
        ({**MINIMAL, "methods": ["dpo"]}, "sft"),  # dpo starts from sft
        ({**MINIMAL, "sft": {"lr": 1e-5, "epochs": 1, "batch_sise": 8}}, "sft.batch_sise"),
        ({**MINIMAL, "resources": {"zero_stage": 4}}, "resources.zero_stage"),
        ({**MINIMAL, "data": {"source": "hh-rlhf"}}, "data.path"),
        ({**MINIMAL, "name": "Bad Name"}, "name"),
        ({"name": "x"}, "models"),
    ],
)
def test_bad_values_are_errors_naming_the_field(raw, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_experiment(raw, "test.yaml")


def test_paper_defaults_when_unset():
    exp = parse_experiment(MINIMAL)
    assert (exp.sft.lr, exp.sft.epochs) == (1e-5, 1)
    assert (exp.dpo.lr, exp.dpo.epochs, exp.dpo_betas) == (5e-6, 3, [0.1])
    assert (exp.orpo.lr, exp.orpo.epochs) == (8e-6, 10)
    assert exp.nll_scope == "response" and exp.resources.zero_stage == 3


def test_cells_follow_their_dependencies():
    exp = parse_experiment(
        {
            **MINIMAL,
            "orpo_lambdas": [0.1, 1.0],
            "seeds": [0, 1],
            "pretrain": {"lr": 1e-3, "epochs": 1},
            "eval": {"rm_model": "opt-small"},
        }
    )
    cells = expand_cells(exp)
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    for i, cell in enumerate(cells):
        assert all(ids.index(dep) < i for dep in cell.depends_on)
    by_id = {c.id: c for c in cells}
    assert by_id["dpo-opt-tiny-b0.1-s1"].depends_on == ["sft-opt-tiny-s1"]
    assert by_id["orpo-opt-tiny-l1-s0"].depends_on == ["pretrain-opt-tiny-s0"]
    # the judge is trained once per data set, on its own (pretrained) size
    assert [c.id for c in cells if c.stage == "rm"] == ["rm-opt-small-s0"]
    assert by_id["rm-opt-small-s0"].depends_on == ["pretrain-opt-small-s0"]


def test_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    exp = load_experiment(path, ["orpo_lambdas=[0.2, 0.3]", "eval.temperature=0.7"])
    assert exp.orpo_lambdas == [0.2, 0.3] and exp.eval.temperature == 0.7
    with pytest.raises(ConfigError, match="eval.temperature"):
        load_experiment(path, ["eval.temperature=-1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_experiment(path, ["orpo_lambdas"])


def test_plan_cli_exit_codes(tmp_path, capsys):
    assert main(["plan", str(EXPERIMENTS[0])]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodels: [opt-tiny]\norpo_lambdas: oops\n")
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "orpo_lambdas" in err and "bad.yaml" in err
    assert main(["plan", str(tmp_path / "missing.yaml")]) == 2
    assert not list(tmp_path.glob("runs")), "plan must write nothing"


@pytest.mark.parametrize(
    ("raw", "quoted"),
    [
        ({**MINIMAL, "methods": ["sft", "ppo-magic"]}, "methods.1: Input should be 'sft', 'dpo', "
         "'orpo', 'simpo', 'cpo' or 'ipo', got 'ppo-magic'"),
        ({**MINIMAL, "orpo_lambdas": [-0.5]}, "-0.5"),
        ({**MINIMAL, "resources": {"zero_stage": 4}}, "got 4"),
        ({**MINIMAL, "sft": {"lr": 1e-5, "epochs": 1, "batch_sise": 8}}, "got 8"),
    ],
)  # fmt: skip
def test_errors_quote_the_value_given(raw, quoted):
    with pytest.raises(ConfigError) as err:
        parse_experiment(raw, "test.yaml")
    assert quoted in str(err.value)


def test_a_bad_override_is_quoted_too(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    with pytest.raises(ConfigError, match=r"sft\.batch_size: .*, got 'eight'"):
        load_experiment(path, ["sft.batch_size=eight"])


def test_one_path_full_and_lora_is_one_experiment_sharing_the_pretrained_base():
    from orpo.pipeline import lora_for, make_job

    raw = {
        **MINIMAL,
        "models": ["opt-tiny", {"path": "opt-tiny", "finetuning": "lora"}],
        "pretrain": {"lr": 1e-3, "epochs": 1},
        "lora": {"r": 4},
    }
    exp = parse_experiment(raw, "test.yaml")
    assert exp.model_names == ["opt-tiny", "opt-tiny-lora"]
    cells = {c.id: c for c in expand_cells(exp)}
    assert "pretrain-opt-tiny-lora-s0" not in cells  # pretraining trains every weight, once
    assert cells["sft-opt-tiny-lora-s0"].depends_on == ["pretrain-opt-tiny-s0"]
    assert cells["orpo-opt-tiny-lora-l0.1-s0"].depends_on == ["pretrain-opt-tiny-s0"]
    assert lora_for(exp, cells["sft-opt-tiny-lora-s0"]).r == 4
    assert lora_for(exp, cells["sft-opt-tiny-s0"]) is None
    assert lora_for(exp, cells["pretrain-opt-tiny-s0"]) is None
    assert make_job(exp, cells["dpo-opt-tiny-lora-b0.1-s0"]).lora is not None


def test_the_same_path_twice_with_one_finetuning_is_an_error_naming_both():
    raw = {
        **MINIMAL,
        "models": [{"name": "a", "path": "opt-tiny"}, {"name": "b", "path": "opt-tiny"}],
    }
    with pytest.raises(ConfigError, match="models.0 and models.1 share the path 'opt-tiny'"):
        parse_experiment(raw, "test.yaml")
    with pytest.raises(ConfigError, match="finetuning"):
        parse_experiment({**MINIMAL, "models": [{"path": "opt-tiny", "finetuning": "qlora"}]})
    with pytest.raises(ConfigError, match="lora.r"):
        parse_experiment({**MINIMAL, "lora": {"r": 0}})


def test_a_judge_named_by_a_path_listed_full_and_lora_is_the_full_one():
    raw = {
        **MINIMAL,
        "models": [{"path": "opt-small", "finetuning": "lora"}, "opt-small"],
        "pretrain": {"lr": 1e-3, "epochs": 1},
        "eval": {"judge": "reward-model", "rm_model": "opt-small"},
    }
    exp = parse_experiment(raw, "test.yaml")
    assert exp.rm_model_name == "opt-small"
    ids = {c.id for c in expand_cells(exp)}
    assert "rm-opt-small-s0" in ids and "pretrain-opt-small-lora-s0" not in ids


def test_a_cell_takes_exactly_its_methods_loss_settings():
    from orpo.config import Cell

    Cell(id="simpo-m-s0", stage="simpo", model="m", seed=0, params={"beta": 2.0, "gamma": 1.0})
    with pytest.raises(ValueError, match=r"params \['beta'\] are not simpo's"):
        Cell(id="simpo-m-s0", stage="simpo", model="m", seed=0, params={"beta": 2.0})
    with pytest.raises(ValueError, match="are not sft's"):
        Cell(id="sft-m-s0", stage="sft", model="m", seed=0, params={"beta": 2.0})
