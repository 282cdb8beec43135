"""Registered models: the models file (TOML) and uploaded checkpoint archives, checked whole
before anything is written; every refusal names the entry (or file, model, field) and the
rule, and leaves nothing behind."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from allocator._registered import (
    BUILTIN_MODELS,
    MODELS_FILE_ENV,
    UPLOADS_FOLDER,
    ModelExistsError,
    RegisteredModel,
    delete_upload,
    find_registered,
    read_models_file,
    register_upload,
    registered_models,
    uploaded_models,
    uploads_dir,
)
from engine import InvalidSpecError, UnknownComponentError

MAX_BYTES = 64 * 2**20
REPO = Path(__file__).resolve().parents[1]


# -- archive builders (also used by tests/api/test_models_upload.py) ---------------------------


def checkpoint_files(config: dict | None = None, **extra: bytes) -> dict[str, bytes]:
    """A tiny checkpoint folder's files: config, tokenizer, one safetensors file."""
    weights = {"layer.weight": np.arange(16, dtype=np.float32).reshape(4, 4),
               "layer.bias": np.zeros(4, dtype=np.float32)}
    files = {
        "config.json": json.dumps(config or {"model_type": "bert", "hidden_size": 4}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "WordLevel"}}).encode(),
        "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
        "model.safetensors": save_safetensors(weights),
    }
    return files | extra


def zip_bytes(files: dict[str, bytes], *, folder: str = "",
              links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(folder + name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(folder + name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def tar_bytes(files: dict[str, bytes], *, folder: str = "", mode: str = "w:gz",
              special: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(folder + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in special or []:
            tf.addfile(info)
    return buf.getvalue()


def tar_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def bomb_files(unpacked_bytes: int = 40 * 2**20) -> dict[str, bytes]:
    """A checkpoint whose weights are mostly zeros: a valid safetensors file that deflates
    about 1000:1."""
    zeros = np.zeros(unpacked_bytes // 4, dtype=np.float32)
    return checkpoint_files() | {"model.safetensors": save_safetensors({"w": zeros})}


def leftovers(data_dir: Path) -> list[str]:
    """Everything under the uploads folder (complete uploads and temporary folders)."""
    folder = data_dir.joinpath(*UPLOADS_FOLDER)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- the models file --------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_models_file_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "bert").mkdir()
    path = _write(tmp_path / "models.toml", """
[models.bert-small]
source = "hf:./bert"
data = "calib.jsonl"
metric = "kl"
estimator = "fisher"
description = "BERT for tickets"

[models."tiny.llm"]
source = "hf:HuggingFaceTB/SmolLM2-135M"

[models.local]
source = "hf:bert"
""")
    models = read_models_file(path)
    assert [m.name for m in models] == ["bert-small", "tiny.llm", "local"]
    bert = models[0]
    assert bert == RegisteredModel(
        name="bert-small", source=f"hf:{tmp_path / 'bert'}", data=str(tmp_path / "calib.jsonl"),
        metric="kl", estimator="fisher", description="BERT for tickets", origin="models-file")
    assert models[1].source == "hf:HuggingFaceTB/SmolLM2-135M"  # a repo id stays one
    assert models[2].source == f"hf:{tmp_path / 'bert'}"  # an existing folder is a folder


@pytest.mark.parametrize(("text", "expected"), [
    ("[models.a\nsource = 1", "line 1"),
    ("[models.bert]\nsource = \"hf:x/y\"\nweights = \"w\"\n", "model `bert`: unknown key "
                                                             "`weights`"),
    ("[models.bert]\nsource = \"/srv/bert\"\n", "model `bert`: `source` must start with 'hf:'"),
    ("[models.bert]\ndata = \"d.txt\"\n", "model `bert`: `source` is missing"),
    ("[models.Bert]\nsource = \"hf:x/y\"\n", "model `Bert`: the name must be"),
    ("[models.digits-cnn]\nsource = \"hf:x/y\"\n", "'digits-cnn' is a built-in model"),
    ("[models.bert]\nsource = \"hf:not a repo\"\n", "model `bert`: `source` 'hf:not a repo' is "
                                                  "neither a folder"),
    ("[models.bert]\nsource = \"hf:x/y\"\nmetric = 3\n", "model `bert`: `metric` must be a "
                                                        "non-empty string"),
    ("[models.bert]\nsource = \"hf:x/y\"\nestimator = \"Fisher Info\"\n",
     "model `bert`: `estimator` must be an estimator name"),
    ("[settings]\nx = 1\n", "unknown key `settings`"),
    ("models = 3\n", "`models` must be a table"),
])
def test_models_file_errors_name_the_file_model_and_field(tmp_path: Path, text: str,
                                                          expected: str) -> None:
    path = _write(tmp_path / "models.toml", text)
    with pytest.raises(InvalidSpecError) as info:
        read_models_file(path)
    message = str(info.value)
    assert str(path) in message and expected in message, message
    assert "\n" not in message


def test_missing_models_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError, match="cannot read it"):
        read_models_file(tmp_path / "nope.toml")


def test_builtin_names_cover_the_zoo() -> None:
    """The registry's list of built-ins (kept torch-free) holds every zoo model."""
    import zoo

    assert set(zoo.MODELS.names()) <= set(BUILTIN_MODELS)


def test_registry_imports_without_torch() -> None:
    code = ("import sys, allocator._registered; "
            "print([m for m in ('torch', 'zoo', 'numpy') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"


# -- uploads -----------------------------------------------------------------------------------


def _archive(tmp_path: Path, data: bytes, name: str = "ckpt.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_upload_zip_registers_and_lists(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(MODELS_FILE_ENV, raising=False)
    data_dir = tmp_path / "data"
    archive = _archive(tmp_path, zip_bytes(checkpoint_files(), folder="bert/"))
    calib = _archive(tmp_path, b'{"text": "hello"}\n{"text": "world"}\n', "calib.jsonl")
    model = register_upload(archive, data=calib, data_dir=data_dir, max_bytes=MAX_BYTES,
                            description="tiny")
    import hashlib

    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert model.name == f"upload-{sha[:12]}" and model.sha256 == sha
    folder = data_dir / "uploads" / model.name
    assert model.source == f"hf:{folder.resolve() / 'checkpoint'}"
    assert sorted(p.name for p in (folder / "checkpoint").iterdir()) == sorted(checkpoint_files())
    assert (folder / "checkpoint" / "model.safetensors").read_bytes() == \
        checkpoint_files()["model.safetensors"]
    assert model.data == str(folder.resolve() / "data.jsonl")
    assert model.origin == "upload" and model.description == "tiny"
    assert model.size_bytes == sum(map(len, checkpoint_files().values())) + calib.stat().st_size
    assert model.created is not None
    # Listed, found, and the same upload again answers the same registration.
    assert uploaded_models(data_dir) == [model]
    assert registered_models(data_dir=data_dir) == {model.name: model}
    assert find_registered(model.name, data_dir=data_dir) == model
    assert register_upload(archive, data_dir=data_dir, max_bytes=MAX_BYTES) == model
    assert leftovers(data_dir) == [model.name]
    delete_upload(model.name, data_dir)
    assert leftovers(data_dir) == [] and find_registered(model.name, data_dir=data_dir) is None
    with pytest.raises(UnknownComponentError):
        delete_upload(model.name, data_dir)


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_upload_tar_at_the_top_with_a_name(tmp_path: Path, mode: str) -> None:
    data_dir = tmp_path / "data"
    archive = _archive(tmp_path, tar_bytes(checkpoint_files(), mode=mode, folder="./"), "c.tar")
    model = register_upload(archive, data_dir=data_dir, max_bytes=MAX_BYTES, name="my-bert",
                            models_file=None)
    assert model.name == "my-bert" and model.data is None
    assert (Path(model.source[3:]) / "config.json").is_file()
    # The name is taken: another archive may not have it.
    other = _archive(tmp_path, zip_bytes(checkpoint_files({"model_type": "gpt2"})))
    with pytest.raises(ModelExistsError, match="'my-bert' is already registered"):
        register_upload(other, data_dir=data_dir, max_bytes=MAX_BYTES, name="my-bert")
    with pytest.raises(InvalidSpecError, match="built-in"):
        register_upload(other, data_dir=data_dir, max_bytes=MAX_BYTES, name="minilm")
    with pytest.raises(InvalidSpecError, match="must be 1-64 characters"):
        register_upload(other, data_dir=data_dir, max_bytes=MAX_BYTES, name="../x")
    assert leftovers(data_dir) == ["my-bert"]


def test_models_file_names_are_taken_and_win(tmp_path: Path, monkeypatch) -> None:
    data_dir = tmp_path / "data"
    path = _write(tmp_path / "models.toml", '[models.bert]\nsource = "hf:org/bert"\n')
    monkeypatch.setenv(MODELS_FILE_ENV, str(path))
    archive = _archive(tmp_path, zip_bytes(checkpoint_files()))
    with pytest.raises(ModelExistsError, match="models file"):
        register_upload(archive, data_dir=data_dir, max_bytes=MAX_BYTES, name="bert")
    up = register_upload(archive, data_dir=data_dir, max_bytes=MAX_BYTES, name="bert2")
    models = registered_models(data_dir=data_dir)
    assert list(models) == ["bert", "bert2"]
    assert models["bert"].origin == "models-file" and models["bert2"] == up
    assert find_registered("bert", data_dir=data_dir).source == "hf:org/bert"
    assert find_registered("digits-cnn", data_dir=data_dir) is None


ARCHIVE_CASES = {
    "pickle": (lambda: zip_bytes(checkpoint_files(**{"pytorch_model.bin": b"\x80\x04."})),
               "'pytorch_model.bin': a pickle file"),
    "code": (lambda: zip_bytes(checkpoint_files(**{"modeling_evil.py": b"import os\n"})),
             "'modeling_evil.py': code (.py"),
    "auto_map": (lambda: zip_bytes(checkpoint_files({"model_type": "x", "auto_map": {
        "AutoModel": "modeling_evil.Evil"}})), "'config.json': `auto_map` is refused"),
    "auto_map in tokenizer config": (lambda: zip_bytes(checkpoint_files(**{
        "tokenizer_config.json": b'{"auto_map": {"AutoTokenizer": ["t.T", null]}}'})),
        "'tokenizer_config.json': `auto_map` is refused"),
    "parent": (lambda: zip_bytes(checkpoint_files(**{"../config.json": b"{}"})),
               "'../config.json': a path through `..`"),
    "absolute": (lambda: tar_bytes(checkpoint_files(**{"/etc/vocab.json": b"{}"})),
                 "'/etc/vocab.json': an absolute path"),
    "zip symlink": (lambda: zip_bytes(checkpoint_files(), links={"vocab.json": "/etc/passwd"}),
                    "'vocab.json': a link (symlink)"),
    "tar symlink": (lambda: tar_bytes(checkpoint_files(), special=[
        tar_link("merges.txt", "/etc/passwd")]), "'merges.txt': a link (symlink)"),
    "tar hardlink": (lambda: tar_bytes(checkpoint_files(), special=[
        tar_link("merges.txt", "config.json", tarfile.LNKTYPE)]), "a link (hardlink)"),
    "tar device": (lambda: tar_bytes(checkpoint_files(), special=[
        tar_link("vocab.json", "", tarfile.CHRTYPE)]), "'vocab.json': a device"),
    "other file": (lambda: zip_bytes(checkpoint_files(**{"README.md": b"hi"})),
                   "'README.md': not a checkpoint file"),
    "no config": (lambda: zip_bytes({k: v for k, v in checkpoint_files().items()
                                     if k != "config.json"}), "config.json is missing"),
    "config not an object": (lambda: zip_bytes(checkpoint_files() | {"config.json": b"[1]"}),
                             "config.json must be a JSON object"),
    "no weights": (lambda: zip_bytes({k: v for k, v in checkpoint_files().items()
                                      if k != "model.safetensors"}), "no *.safetensors"),
    "bad safetensors": (lambda: zip_bytes(checkpoint_files(**{"model.safetensors": b"\xff" * 64})),
                        "'model.safetensors': not a safetensors file"),
    "safetensors outside": (lambda: zip_bytes(checkpoint_files(**{
        "model.safetensors": (lambda h: len(h).to_bytes(8, "little") + h)(json.dumps(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode())})),
        "tensor 'w' is malformed or points outside the file"),
    "two folders": (lambda: zip_bytes({"a/config.json": b"{}", "b/model.safetensors": b""}),
                    "'b/model.safetensors': files go at the top or in one common folder"),
    "nested": (lambda: zip_bytes(checkpoint_files(), folder="a/b/"), "not deeper"),
    "not an archive": (lambda: b"just some bytes, neither zip nor tar" * 20,
                       "not a readable zip or tar"),
    "index names a missing shard": (lambda: zip_bytes(checkpoint_files(**{
        "model.safetensors.index.json": b'{"weight_map": {"w": "model-2.safetensors"}}'})),
        "names 'model-2.safetensors', which the archive does not hold"),
}


@pytest.mark.parametrize("case", list(ARCHIVE_CASES))
def test_bad_archive_is_refused_naming_entry_and_rule(tmp_path: Path, case: str) -> None:
    make, expected = ARCHIVE_CASES[case]
    data_dir = tmp_path / "data"
    archive = _archive(tmp_path, make())
    with pytest.raises(InvalidSpecError) as info:
        register_upload(archive, data_dir=data_dir, max_bytes=MAX_BYTES)
    assert expected in str(info.value), str(info.value)
    assert leftovers(data_dir) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.zip", "data"]
    assert not Path("/etc/vocab.json").exists()


def test_size_ratio_and_entry_limits(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    bomb = _archive(tmp_path, zip_bytes(bomb_files()))
    assert bomb.stat().st_size < 200_000  # 40 MB of weights inside
    with pytest.raises(InvalidSpecError, match=r"'model.safetensors': compression ratio \d+:1 "
                                               r"passes the limit of 100:1"):
        register_upload(bomb, data_dir=data_dir, max_bytes=MAX_BYTES)
    # The same weights in a tar.gz: the archive's own ratio.
    tgz = _archive(tmp_path, tar_bytes(bomb_files()), "bomb.tgz")
    with pytest.raises(InvalidSpecError, match=r"archive: compression ratio \d+:1"):
        register_upload(tgz, data_dir=data_dir, max_bytes=MAX_BYTES)
    # Past the unpacked limit, from the headers.
    with pytest.raises(InvalidSpecError, match="passes the limit of 1000000 bytes"):
        register_upload(tgz, data_dir=data_dir, max_bytes=1_000_000)
    many = _archive(tmp_path, zip_bytes(checkpoint_files() | {
        f"model-{i:05d}.safetensors": save_safetensors({"w": np.zeros(1, np.float32)})
        for i in range(20)}))
    with pytest.raises(InvalidSpecError, match="entries, more than the limit of 10"):
        register_upload(many, data_dir=data_dir, max_bytes=MAX_BYTES, max_entries=10)
    # Very many entries: refused from the zip's end record, before its directory is read.
    crowd = _archive(tmp_path, zip_bytes({f"{i}.safetensors": b"" for i in range(500)}),
                     "crowd.zip")
    with pytest.raises(InvalidSpecError, match=r"a central directory of \d+ bytes, more than "
                                               r"10 entries \(the limit\) can need"):
        register_upload(crowd, data_dir=data_dir, max_bytes=MAX_BYTES, max_entries=10)
    many_tar = _archive(tmp_path, tar_bytes({f"{i}.safetensors": b"" for i in range(30)}),
                        "many.tgz")
    with pytest.raises(InvalidSpecError, match="more entries than the limit of 10"):
        register_upload(many_tar, data_dir=data_dir, max_bytes=MAX_BYTES, max_entries=10)
    small = _archive(tmp_path, zip_bytes(checkpoint_files()), "small.zip")
    with pytest.raises(InvalidSpecError, match="more than the limit of 100"):
        register_upload(small, data_dir=data_dir, max_bytes=100)
    assert leftovers(data_dir) == []


@pytest.mark.parametrize(("filename", "content", "expected"), [
    ("calib.pt", b"\x80\x04.", "a pickle file is refused"),
    ("calib.csv", b"a,b\n", "calibration data must be .txt, .jsonl, .npy"),
    ("calib.jsonl", b'{"text": "a"}\nnot json\n', "line 2 is not JSON"),
    ("calib.txt", b"\xff\xfe bad", "not UTF-8 text"),
    ("calib.npy", b"\x93NUMPY junk", "not a NumPy .npy file"),
    ("calib.txt", b"", "empty"),
])
def test_bad_data_file_is_refused(tmp_path: Path, filename: str, content: bytes,
                                  expected: str) -> None:
    data_dir = tmp_path / "data"
    archive = _archive(tmp_path, zip_bytes(checkpoint_files()))
    data = _archive(tmp_path, content, "upload.part")
    with pytest.raises(InvalidSpecError, match=expected) as info:
        register_upload(archive, data=data, data_filename=filename, data_dir=data_dir,
                        max_bytes=MAX_BYTES)
    assert filename in str(info.value)
    assert leftovers(data_dir) == []


def test_npy_data_is_checked_without_pickle(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    archive = _archive(tmp_path, zip_bytes(checkpoint_files()))
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidSpecError, match="an object array is refused"):
        register_upload(archive, data=objects, data_dir=data_dir, max_bytes=MAX_BYTES)
    good = tmp_path / "inputs.npy"
    np.save(good, np.ones((3, 4), np.float32))
    model = register_upload(archive, data=good, data_dir=data_dir, max_bytes=MAX_BYTES)
    assert np.array_equal(np.load(model.data), np.ones((3, 4), np.float32))


def test_damaged_record_is_skipped_not_fatal(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    archive = _archive(tmp_path, zip_bytes(checkpoint_files()))
    model = register_upload(archive, data_dir=data_dir, max_bytes=MAX_BYTES, name="good")
    broken = uploads_dir(data_dir) / "broken"
    broken.mkdir()
    (broken / "record.json").write_text("{not json")
    odd = uploads_dir(data_dir) / "odd"
    odd.mkdir()
    (odd / "record.json").write_text(json.dumps({"format": "allocator.model/1", "name": "odd",
                                                 "size_bytes": "big"}))
    (uploads_dir(data_dir) / ".tmp-half-1234").mkdir()  # an upload under way
    assert uploaded_models(data_dir) == [model]


def test_stale_temporary_folders_are_swept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    stale = uploads_dir(data_dir) / ".tmp-x-0000"
    fresh = uploads_dir(data_dir) / ".tmp-y-0000"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (0, 0))
    archive = _archive(tmp_path, zip_bytes(checkpoint_files()))
    register_upload(archive, data_dir=data_dir, max_bytes=MAX_BYTES, name="m")
    assert leftovers(data_dir) == [".tmp-y-0000", "m"]


@pytest.mark.slow
def test_uploaded_checkpoint_loads_through_the_zoo(tmp_path: Path, monkeypatch) -> None:
    """An uploaded tiny GPT-2 (safetensors + a fast tokenizer) with JSON-lines data is a
    model the zoo resolves by its registered name."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    import zoo

    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(MODELS_FILE_ENV, raising=False)
    words = "the a cat dog sat on mat ran fast slow big small red blue green".split()
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "ckpt"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=32, n_layer=2,
                               n_head=2, bos_token_id=2, eos_token_id=2)).save_pretrained(
        folder, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                            eos_token="[EOS]").save_pretrained(folder)
    archive = _archive(tmp_path, zip_bytes({p.name: p.read_bytes() for p in folder.iterdir()},
                                           folder="tiny-gpt2/"))
    rng = random.Random(0)
    data = _archive(tmp_path, "\n".join(json.dumps({"text": " ".join(
        rng.choice(words) for _ in range(300))}) for _ in range(30)).encode(), "calib.jsonl")
    register_upload(archive, data=data, max_bytes=MAX_BYTES, name="tiny-gpt2")
    spec = zoo.get_model("tiny-gpt2")
    assert spec.primary_metric == "kl" and len(spec.layers()) == 8  # 4 Linear per block
    assert spec.evaluate(spec.build())["top1_agreement"] > 0.99
