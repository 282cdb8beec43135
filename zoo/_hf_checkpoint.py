"""Hugging Face checkpoints on disk: where `hf:<dir-or-id>` points, what it holds, its task.

A checkpoint is a folder with `config.json`, `*.safetensors` weights and the tokenizer (or
image processor) files, given as a path or as a repo id already in the local Hugging Face
cache (nothing is downloaded: the lookup is `local_files_only`). What is refused, with the
reason named: pickled weights (`.bin`, `.pt`, ...) without safetensors, `auto_map` in the
config (custom code: `trust_remote_code` is never set), an architecture whose task this
product does not know.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import InvalidSpecError, MissingDependencyError

HF_PREFIX = "hf:"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")

# Task of each architecture-name ending, first match wins (`config.json` "architectures").
_TASK_SUFFIXES = (
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
    ("ForSequenceClassification", "sequence-classification"),
    ("ForImageClassification", "image-classification"),
    ("Model", "feature-extraction"),
    ("ForMaskedLM", "feature-extraction"),
)
TASKS = ("causal-lm", "feature-extraction", "sequence-classification", "image-classification")


@dataclass(frozen=True)
class Checkpoint:
    """A checked local checkpoint folder.

    Attributes:
        folder: The folder holding `config.json` and the weights.
        config: `config.json` as a dict.
        task: One of `TASKS`, from the config's architecture.
        architecture: The config's first architecture name.
    """

    folder: Path
    config: dict[str, Any]
    task: str
    architecture: str

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").split("/", 2)[-1] \
        or Path(ref).expanduser().exists()


def resolve_checkpoint(ref: str) -> Path:
    """The folder `hf:<ref>` names: an existing folder, else a repo id in the local cache.

    Raises:
        InvalidSpecError: Neither a folder nor a cached repo id (the message says nothing is
            downloaded).
    """
    target = ref.removeprefix(HF_PREFIX)
    if not target or "\x00" in target:
        raise InvalidSpecError(f"`model` {ref!r}: give hf:<checkpoint folder> or hf:<repo id>.")
    path = Path(target).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise InvalidSpecError(f"`model` {ref!r}: {target!r} is a file; give the checkpoint "
                               f"folder (config.json + *.safetensors + tokenizer files).")
    if not REPO_ID.match(target) or _looks_like_path(target) and target.count("/") > 1:
        raise InvalidSpecError(f"`model` {ref!r}: no folder {target!r} (and it is not a "
                               f"Hugging Face repo id such as org/name).")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise MissingDependencyError("hf: repo ids need `huggingface_hub` (the `models` "
                                     "extra).") from e
    try:
        return Path(snapshot_download(repo_id=target, local_files_only=True))
    except Exception:  # noqa: BLE001  (LocalEntryNotFoundError, a bad id, a broken cache)
        raise InvalidSpecError(
            f"`model` {ref!r}: no folder {target!r} and no repo {target!r} in the local "
            f"Hugging Face cache; nothing is downloaded, so copy the checkpoint here first "
            f"(or give its folder).") from None


def _read_config(folder: Path, ref: str) -> dict[str, Any]:
    from engine import load_json_file

    path = folder / "config.json"
    if not path.is_file():
        raise InvalidSpecError(f"`model` {ref!r}: {str(folder)!r} has no config.json; a "
                               f"checkpoint folder holds config.json, *.safetensors and the "
                               f"tokenizer files.")
    config = load_json_file(path, lambda data: data, what="checkpoint config")
    if not isinstance(config, dict):
        raise InvalidSpecError(f"`model` {ref!r}: config.json must hold a JSON object.")
    return config


def task_of(config: dict[str, Any], ref: str = "") -> tuple[str, str]:
    """(task, architecture) from `config.json`'s first architecture name.

    Raises:
        InvalidSpecError: No architecture named, or one whose task is unknown here.
    """
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise InvalidSpecError(f"`model` {ref!r}: config.json names no `architectures`, so "
                               f"its task (causal LM, encoder, classifier) is unknown.")
    arch = archs[0]
    for suffix, task in _TASK_SUFFIXES:
        if arch.endswith(suffix):
            return task, arch
    raise InvalidSpecError(
        f"`model` {ref!r}: architecture {arch!r} is not supported; supported are causal LMs "
        f"(*ForCausalLM), encoders (*Model), sequence and image classifiers.")


def check_checkpoint(folder: Path, ref: str) -> Checkpoint:
    """Checks a checkpoint folder before anything in it is loaded.

    Raises:
        InvalidSpecError: No config.json, `auto_map` (custom code), pickled weights only,
            no safetensors weights, an unknown architecture.
    """
    config = _read_config(folder, ref)
    if "auto_map" in config:
        raise InvalidSpecError(
            f"`model` {ref!r}: config.json has `auto_map` (the model needs its own Python "
            f"code); custom code is never run, use an architecture transformers ships.")
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if not any(n.endswith(".safetensors") for n in files):
        pickles = sorted(n for n in files if n.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise InvalidSpecError(
                f"`model` {ref!r}: weights {pickles[0]!r} are a pickle, which is never "
                f"loaded; convert them to safetensors (model.save_pretrained(folder, "
                f"safe_serialization=True)).")
        raise InvalidSpecError(f"`model` {ref!r}: {str(folder)!r} holds no *.safetensors "
                               f"weights.")
    task, arch = task_of(config, ref)
    return Checkpoint(folder, config, task, arch)


def load_model(checkpoint: Checkpoint) -> Any:
    """The float32 model of a checked checkpoint, in eval mode, from its safetensors only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        import transformers
    except ImportError as e:
        raise MissingDependencyError("hf: models need transformers (the `models` extra).") from e
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    classes = {"causal-lm": transformers.AutoModelForCausalLM,
               "feature-extraction": transformers.AutoModel,
               "sequence-classification": transformers.AutoModelForSequenceClassification,
               "image-classification": transformers.AutoModelForImageClassification}
    try:
        model = classes[checkpoint.task].from_pretrained(
            str(checkpoint.folder), use_safetensors=True, trust_remote_code=False,
            dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InvalidSpecError(f"`model` hf:{checkpoint.folder}: transformers cannot load "
                               f"it: {first}") from None
    model.config.use_cache = False
    return linear_from_conv1d(model).eval()


def linear_from_conv1d(model: Any) -> Any:
    """Replaces transformers' `Conv1D` (GPT-2's Linear with a transposed weight) with
    `nn.Linear` holding the same numbers, so the engine's Linear kernels take them."""
    from torch import nn

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return model
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                k, n = child.weight.shape
                linear = nn.Linear(k, n, bias=child.bias is not None)
                linear.weight.data.copy_(child.weight.data.t())
                if child.bias is not None:
                    linear.bias.data.copy_(child.bias.data)
                setattr(parent, child_name, linear)
    return model


def load_tokenizer(checkpoint: Checkpoint) -> Any:
    """The checkpoint's own tokenizer (fast or slow), offline, no custom code."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(checkpoint.folder), trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InvalidSpecError(f"`model` hf:{checkpoint.folder}: no usable tokenizer files "
                               f"({first}).") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok
