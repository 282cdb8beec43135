"""A layer-parallel estimate in chunks: the plan, the merge equal to the single-process
table byte for byte, resuming after a stop, bad chunk files, and chunk messages."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import sensitivity
from engine import InvalidSpecError
from sensitivity import (
    ChunkedEstimate,
    InProcessChunkExecutor,
    SensitivityTable,
    chunked_estimate,
    plan_chunks,
    use_chunk_executor,
)
from tests.conftest import private_data_dir
from tests.zoo.conftest import need

BITS = [2, 4, 8]


def table_bytes(table: SensitivityTable) -> bytes:
    """The table's JSON, all but its wall time and creation time (which no two runs share)."""
    return dataclasses.replace(table, elapsed_s=0.0, created=0.0).to_json().encode()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = private_data_dir(tmp_path / "data")
    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread, as the workers run: float sums split over threads differ in their
    last bits, so tables compared byte for byte come from the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(one_thread: None) -> SensitivityTable:
    """digits-mlp's measured table from one process, in one piece (never cached)."""
    return sensitivity.estimate(need("digits-mlp"), "measured", bits=BITS, seed=3,
                                use_cache=False)


def test_plan_chunks_covers_the_layers_in_order() -> None:
    names = [f"l{i}" for i in range(10)]
    for count in (1, 3, 4, 10, 25):
        chunks = plan_chunks(names, count)
        assert [n for c in chunks for n in c] == names
        assert len(chunks) == min(count, 10)
        assert max(map(len, chunks)) - min(map(len, chunks)) <= 1
    assert plan_chunks(names, 0) == [names]
    assert plan_chunks([], 3) == []


def test_layers_in_pieces_equal_the_whole(reference: SensitivityTable) -> None:
    spec = need("digits-mlp")
    runner = sensitivity.estimator_for(sensitivity.MeasuredConfig())
    assert runner.layer_parallel
    parts: dict = {}
    for name in reversed([x.name for x in spec.layers()]):  # any order, one at a time
        parts |= runner.estimate_layers(spec, BITS, [name], seed=3)
    merged = runner.make_table(spec, BITS, 3, parts, 0.0)
    assert table_bytes(merged) == table_bytes(reference)
    with pytest.raises(InvalidSpecError, match="not layers"):
        runner.estimate_layers(spec, BITS, ["nope"], seed=3)
    with pytest.raises(InvalidSpecError, match="exactly the model's"):
        runner.make_table(spec, BITS, 3, {}, 0.0)


def test_whole_model_estimators_are_not_split() -> None:
    for name in ("hutchinson", "fisher", "fracbits"):
        runner = sensitivity.ESTIMATORS.get(name)(sensitivity.make_config(name))
        assert not runner.layer_parallel, name
    hutch = sensitivity.estimator_for(sensitivity.HutchinsonConfig())
    with pytest.raises(NotImplementedError, match="all layers together"):
        hutch.estimate_layers(need("digits-mlp"), BITS, ["fc1"], seed=0)


def test_chunked_estimate_equals_one_process_and_is_cached(data_dir: Path,
                                                           reference: SensitivityTable) -> None:
    spec = need("digits-mlp")
    executor = InProcessChunkExecutor(chunks=2)
    with use_chunk_executor(executor):
        table = sensitivity.estimate(spec, "measured", bits=BITS, seed=3)
    assert executor.computed == [0, 1]
    assert table_bytes(table) == table_bytes(reference)
    cached = list((data_dir / "sensitivity").glob("digits-mlp-measured-*.json"))
    assert len(cached) == 1
    assert table_bytes(SensitivityTable.load(cached[0])) == table_bytes(reference)
    assert not list((data_dir / "sensitivity-chunks").glob("*.json*"))  # chunks cleared
    # cached like a single-process table: read back, nothing computed
    again = InProcessChunkExecutor(chunks=3)
    with use_chunk_executor(again):
        assert table_bytes(sensitivity.estimate(spec, "measured", bits=BITS, seed=3)) == \
            table_bytes(reference)
    assert again.computed == []
    # the single-process path reads the same cache entry
    assert table_bytes(sensitivity.estimate(spec, "measured", bits=BITS, seed=3)) == \
        table_bytes(reference)


class _StopAfterFirst(InProcessChunkExecutor):
    """Computes chunk 0, then dies as a killed worker would."""

    def run(self, work: ChunkedEstimate) -> None:
        work.plan(self.chunks)
        work.compute(0)
        raise KeyboardInterrupt("killed")


def test_a_restarted_estimate_keeps_its_finished_chunks(data_dir: Path,
                                                        reference: SensitivityTable) -> None:
    spec = need("digits-mlp")
    with pytest.raises(KeyboardInterrupt), use_chunk_executor(_StopAfterFirst(chunks=3)):
        sensitivity.estimate(spec, "measured", bits=BITS, seed=3)
    assert not list((data_dir / "sensitivity").glob("*.json"))
    # the restart plans 2 chunks but joins the stored 3-chunk plan and skips chunk 0
    resumed = InProcessChunkExecutor(chunks=2)
    with use_chunk_executor(resumed):
        table = sensitivity.estimate(spec, "measured", bits=BITS, seed=3)
    assert resumed.computed == [1, 2]
    assert table_bytes(table) == table_bytes(reference)


def test_a_corrupt_chunk_is_quarantined_and_computed_again(data_dir: Path,
                                                          reference: SensitivityTable) -> None:
    spec = need("digits-mlp")
    with pytest.raises(KeyboardInterrupt), use_chunk_executor(_StopAfterFirst(chunks=3)):
        sensitivity.estimate(spec, "measured", bits=BITS, seed=3)
    [chunk] = (data_dir / "sensitivity-chunks").glob("*.chunk-0.json")
    doc = json.loads(chunk.read_text())
    first = next(iter(doc["layers"].values()))
    first["omega"]["2"] = first["omega"]["2"] * 10  # a wrong answer with a valid shape
    chunk.write_text(json.dumps(doc))
    resumed = InProcessChunkExecutor(chunks=3)
    with pytest.warns(UserWarning, match="corrupt or untrusted"), use_chunk_executor(resumed):
        table = sensitivity.estimate(spec, "measured", bits=BITS, seed=3)
    assert resumed.computed == [1, 2, 0]  # chunk 0 again, after the merge refused it
    assert table_bytes(table) == table_bytes(reference)
    assert list((data_dir / "quarantine").glob("*.chunk-0.json.*"))


class _Recording(InProcessChunkExecutor):
    def __init__(self) -> None:
        super().__init__(chunks=2)
        self.works: list[ChunkedEstimate] = []

    def run(self, work: ChunkedEstimate) -> None:
        self.works.append(work)
        super().run(work)


def test_whole_model_estimators_ignore_the_executor(data_dir: Path) -> None:
    executor = _Recording()
    with use_chunk_executor(executor):
        table = sensitivity.estimate(need("digits-mlp"), "hutchinson", bits=BITS, seed=0,
                                     options={"min_probes": 2, "max_probes": 4})
    assert executor.works == [] and set(table.layers) == {"fc1", "fc2", "fc3"}


def test_a_message_rebuilds_the_chunk_elsewhere(data_dir: Path,
                                                reference: SensitivityTable) -> None:
    """What a worker does with a chunk message: the same table digest, the stored plan,
    the chunk computed from the message alone; a message for other weights is refused."""
    spec = need("digits-mlp")

    class SendOnly(InProcessChunkExecutor):
        """Plans and 'sends' every chunk; a worker (below) computes them from messages."""

        def run(self, work: ChunkedEstimate) -> None:
            for i in range(work.plan(self.chunks)):
                message = json.loads(json.dumps(work.message(i)))  # through JSON, as sent
                elsewhere, index = chunked_estimate(spec, message)
                assert index == i and elsewhere.layers_of(i) == work.layers_of(i)
                assert elsewhere.compute(index) is True
                assert elsewhere.compute(index) is False  # redelivered: nothing to do
                self.computed.append(i)
            bad = dict(work.message(0), table="0" * 64)
            with pytest.raises(InvalidSpecError, match="same code and models"):
                chunked_estimate(spec, bad)
            moved = dict(work.message(0), layers=["fc3"])
            with pytest.raises(InvalidSpecError, match="differ from the stored plan"):
                chunked_estimate(spec, moved)

    executor = SendOnly(chunks=3)
    with use_chunk_executor(executor):
        table = sensitivity.estimate(spec, "measured", bits=BITS, seed=3)
    assert executor.computed == [0, 1, 2]
    assert table_bytes(table) == table_bytes(reference)
    with pytest.raises(InvalidSpecError, match="bad chunk message"):
        chunked_estimate(spec, {"estimator": "measured"})


def test_a_chunk_stops_when_told(data_dir: Path) -> None:
    spec = need("digits-mlp")
    runner = sensitivity.estimator_for(sensitivity.MeasuredConfig())
    work = ChunkedEstimate(runner, spec, BITS, 0, data_dir / "sensitivity" / "t.json", "d" * 64)
    work.plan(1)
    with pytest.raises(sensitivity.ChunkStopped):
        work.compute(0, should_stop=lambda: True)
    assert not work.done(0)
