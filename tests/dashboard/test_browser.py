"""The dashboard in Debian's Chromium against the real job service.

Load the job list, submit a job through the form, watch it finish, open its front, hover and
click a point, check the bit map against the service's JSON; compare two jobs; errors as
messages. The Pareto-front page and the job list are saved under `artifacts/`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.dashboard.conftest import ARTIFACTS, TOKEN, Service, run_service

JOB_TIMEOUT_S = 300.0
FRONT_POINTS = "#front-plot .subplot.xy .scatterlayer .trace"


QUICK_JOB = {"model": "digits-cnn", "solver": "ilp", "estimator": "hutchinson",
             "bits": [2, 4, 8], "seed": 0, "measure": False}


def _save_token(page: Any) -> None:
    page.fill("#token-input", TOKEN)
    page.click("#token-form button")
    assert page.inner_text("#token-state") == "writes enabled"


def _wait_front(page: Any) -> None:
    page.wait_for_selector("#front-plot .main-svg", timeout=30_000)
    page.wait_for_function(
        "Number(document.getElementById('front-plot').dataset.ready || 0) >= 1")


def _traces(page: Any) -> list[dict[str, Any]]:
    """The plotted traces as data: meta (group, kind, jobId), axes and point keys."""
    return page.evaluate("""() => document.getElementById('front-plot').data.map((t) => ({
        meta: t.meta, xaxis: t.xaxis || 'x', yaxis: t.yaxis || 'y',
        keys: t.customdata || [], x: Array.from(t.x || [])}))""")


def _predicted_front_keys(traces: list[dict[str, Any]], job_id: str) -> list[str]:
    (front,) = [t for t in traces if t["meta"] == {"group": "front", "kind": "predicted",
                                                   "jobId": job_id}]
    return front["keys"]


def _center(locator: Any) -> tuple[float, float]:
    box = locator.bounding_box()
    assert box is not None
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _bitmap_cells(page: Any) -> list[tuple[str, str]]:
    """(layer, bits) of the bit map's cells, left to right."""
    cells = page.eval_on_selector_all(
        ".bitmap .bit-cell", "cells => cells.map(c => [c.dataset.layer, c.dataset.bits])")
    return [tuple(c) for c in cells]


def _submit_through_form(page: Any, service: Service) -> str:
    page.goto(service.base + "/")
    page.wait_for_selector("#jobs-table tbody tr")
    page.wait_for_selector("#model-select option[value='digits-cnn']", state="attached")
    assert page.inner_text("#token-state") == "read-only"
    assert page.is_visible(".read-only-hint")  # this service needs a token to write

    # Read-only: reads work, a write is refused with a visible message, not a blank page.
    page.select_option("#model-select", "digits-cnn")
    page.fill("#budget-input", "4bits")
    page.click("#submit-job")
    page.wait_for_function("document.getElementById('form-error').textContent.length > 0")
    assert "token" in page.inner_text("#form-error").lower()

    _save_token(page)
    assert page.is_hidden(".read-only-hint")

    # The budget text is checked with the service's grammar, the error shown inline.
    page.fill("#budget-input", "4bitz")
    page.wait_for_function("document.getElementById('budget-error').textContent.length > 0")
    assert "4bitz" in page.inner_text("#budget-error")

    page.fill("#budget-input", "4bits")
    for bits in ("3", "5", "6"):
        page.uncheck(f"input[name=bits][value='{bits}']")
    page.click("#submit-job")
    page.wait_for_function("document.getElementById('job-form').dataset.lastJob")
    assert page.inner_text("#budget-error") == ""
    assert page.inner_text("#form-error") == ""
    return str(page.get_attribute("#job-form", "data-last-job"))


def _watch_until_finished(page: Any, job_id: str) -> tuple[set[str], set[str]]:
    """Statuses and progress labels the list showed, without reloading, until the job ended."""
    row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    row.wait_for()
    statuses, labels = set(), set()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = row.get_attribute("data-status")
        statuses.add(status)
        labels.add(row.locator(".progress-label").inner_text())
        if status not in ("queued", "running"):
            break
        page.wait_for_timeout(300)
    return statuses, labels


def test_submit_watch_open_front_click_point(page: Any, service: Service) -> None:
    job_id = _submit_through_form(page, service)
    job = service.get(f"/jobs/{job_id}")
    assert (job["model"], job["budgets"], job["bits"]) == ("digits-cnn", ["4bits"], [2, 4, 8])

    statuses, labels = _watch_until_finished(page, job_id)
    final = service.get(f"/jobs/{job_id}")
    assert final["status"] == "succeeded", (final, service.log_tail())
    assert statuses & {"queued", "running"} and "succeeded" in statuses
    assert len(labels) >= 2 and any("100%" in x for x in labels), labels  # live progress
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-jobs.png"), full_page=True)

    # Filtering by another model hides the job; the filter is the service's (?model=).
    page.select_option("#model-filter", "digits-mlp")
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']", state="detached")
    page.select_option("#model-filter", "")
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']")

    page.click(f"#jobs-table tr[data-job-id='{job_id}'] a")
    page.wait_for_url(f"**/ui/jobs/{job_id}")
    _wait_front(page)
    pareto = service.get(f"/jobs/{job_id}/pareto")
    result = service.get(f"/jobs/{job_id}/result")
    layers = [x["name"] for x in result["problem"]["layers"]]

    traces = _traces(page)
    groups = {(t["meta"]["group"], t["meta"]["kind"]) for t in traces}
    assert {("front", "predicted"), ("chosen", "predicted"), ("uniform", "predicted")} <= groups
    assert ("front", "measured") in groups  # measured points drawn apart from predicted ones
    keys = _predicted_front_keys(traces, job_id)
    assert len(keys) == sum(p["objective"] > 0 for p in pareto["points"]) >= 2
    # The chosen point is shown first (highlighted star) and its bit map is open.
    assert page.get_attribute(".bitmap", "data-point-key") == f"{job_id}:chosen:0"

    # Hover shows the point's per-layer bits; a click opens its bit map.
    target = 1
    point = pareto["points"][int(keys[target].rsplit(":", 1)[1])]
    marker = page.locator(FRONT_POINTS).first.locator("path.point").nth(target)
    x, y = _center(marker)
    page.mouse.move(x, y)
    page.wait_for_selector("#front-plot .hoverlayer .hovertext")
    hover = page.locator("#front-plot .hoverlayer").text_content()
    for name in layers:
        assert f"{name}: {point['bits'][name]}" in hover, hover
    page.mouse.click(x, y)
    page.wait_for_selector(f".bitmap[data-point-key='{keys[target]}']")
    assert _bitmap_cells(page) == [(name, str(point["bits"][name])) for name in layers]
    assert page.locator(".bitmap-table tbody tr").count() == len(layers)
    assert page.locator(".bitmap-table td.chosen-cell").count() == len(layers)
    page.screenshot(path=str(ARTIFACTS / "dashboard-front.png"), full_page=True)

    # Another cost axis redraws the same points.
    page.select_option("#axis-select", "size_bytes")
    page.wait_for_function(
        "document.getElementById('front-plot').layout.xaxis.title.text.startsWith('size')")
    sized = _predicted_front_keys(_traces(page), job_id)
    assert sized == keys

    with page.expect_download() as download:
        page.click("#download-config")
    assert json.loads(Path(download.value.path()).read_text()) == result["config"]
    with page.expect_download() as download:
        page.click("#download-point")
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved["format"] == "allocator.bitconfig/1" and saved["bits"] == point["bits"]


def test_job_page_follows_the_job_then_compares_fronts(page: Any, service: Service) -> None:
    first = service.submit(budgets=["3bits"], **QUICK_JOB)
    second = service.submit(budgets=["5bits"], **QUICK_JOB)

    # Opened while queued: the page follows the job and shows its front when it ends.
    page.goto(f"{service.base}/ui/jobs/{second}")
    page.wait_for_selector("#job-meta")
    assert page.locator("#job-meta .badge").inner_text() in ("queued", "running")
    page.wait_for_selector("#front-plot .main-svg", timeout=JOB_TIMEOUT_S * 1000)
    _wait_front(page)
    assert page.locator("#job-meta .badge").inner_text() == "succeeded"
    assert service.get(f"/jobs/{first}")["status"] == "succeeded"

    page.wait_for_selector(f"#compare-select option[value='{first}']", state="attached")
    page.select_option("#compare-select", first)
    page.wait_for_function(
        f"document.getElementById('front-plot').data.some(t => t.meta.jobId === '{first}')")
    assert page.url.endswith(f"?compare={first}")
    traces = _traces(page)
    assert {t["meta"]["jobId"] for t in traces if "jobId" in t["meta"]} == {first, second}
    assert {(t["xaxis"], t["yaxis"]) for t in traces} == {("x", "y")}  # one set of axes
    assert _predicted_front_keys(traces, first) and _predicted_front_keys(traces, second)

    # Reloading the URL keeps the comparison; a row of the points table opens the other
    # job's bit map.
    page.goto(page.url)
    _wait_front(page)
    page.wait_for_function(
        f"document.getElementById('front-plot').data.some(t => t.meta.jobId === '{first}')")
    page.click(f"#points-table tr[data-point-key='{first}:chosen:0']")
    page.wait_for_selector(f".bitmap[data-point-key='{first}:chosen:0']")
    chosen = service.get(f"/jobs/{first}/result")["config"]["bits"]
    assert dict(_bitmap_cells(page)) == {k: str(v) for k, v in chosen.items()}


def test_cancel_from_the_list(page: Any, service: Service) -> None:
    # A measured job takes tens of seconds: the click lands while it is queued or running.
    victim = service.submit(budgets=["6bits"], **(QUICK_JOB | {"measure": True}))
    page.goto(service.base + "/")
    _save_token(page)
    row = page.locator(f"#jobs-table tr[data-job-id='{victim}']")
    row.locator("button", has_text="Cancel").click()
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{victim}'][data-status='cancelled']")
    assert service.get(f"/jobs/{victim}")["status"] == "cancelled"

    page.click(f"#jobs-table tr[data-job-id='{victim}'] a")
    page.wait_for_selector("#job-meta .note")
    assert "cancelled" in page.inner_text("#job-meta .note")
    assert page.locator("#front").count() == 0


def test_errors_are_messages_not_blank_pages(page: Any, service: Service) -> None:
    missing = "0" * 32
    page.goto(f"{service.base}/ui/jobs/{missing}")
    page.wait_for_selector("#job-error")
    assert missing in page.inner_text("#job-error")
    assert page.is_visible("#banner")

    page.goto(f"{service.base}/ui/jobs/not-a-job")
    page.wait_for_selector("#job-error")
    assert "not-a-job" in page.inner_text("#job-error")


def test_reads_behind_the_token_load_once_it_is_saved(page: Any, tmp_path: Path) -> None:
    with run_service(tmp_path, workers="0", read_requires_token="1") as locked:
        page.goto(locked.base + "/")
        page.wait_for_selector("#banner:not([hidden])")
        assert "token" in page.inner_text("#banner-text").lower()
        assert page.locator("#jobs-table.table").count() == 1
        assert page.locator("#jobs-table tbody tr").count() == 0

        _save_token(page)
        page.wait_for_selector("#jobs-table tbody tr")
        assert "No jobs yet" in page.inner_text("#jobs-table tbody")
        assert page.is_hidden("#banner")
        assert page.locator("#model-select option").count() >= 1


def test_form_follows_the_service_settings_and_asks_no_token_it_does_not_need(
        page: Any, tmp_path: Path) -> None:
    with run_service(tmp_path, workers="0", api_token="") as tokenless:
        settings = tokenless.get("/settings")
        assert settings["write_requires_token"] is False
        page.goto(tokenless.base + "/")
        page.wait_for_selector("#model-select option[value='digits-cnn']", state="attached")
        # No token to enter, no read-only hint.
        assert page.is_hidden("#token-form")
        assert page.locator(".read-only-hint").count() == 0
        # Bit-widths, their defaults and the statuses are the service's.
        values = "xs => xs.map(x => x.value)"
        offered = page.eval_on_selector_all("input[name=bits]", values)
        assert offered == [str(b) for b in range(settings["min_bits"], settings["max_bits"] + 1)]
        checked = page.eval_on_selector_all("input[name=bits]:checked", values)
        assert checked == [str(b) for b in settings["default_bits"]]
        statuses = page.eval_on_selector_all("#status-filter option", values)
        assert statuses == ["", *settings["statuses"]]
        assert page.input_value("#solver-select") == settings["job_defaults"]["solver"]
        assert page.input_value("#estimator-select") == (settings["job_defaults"]["estimator"]
                                                         or "")  # "": the model's own
        targets = page.eval_on_selector_all("#target-select option", values)
        assert targets == [t["name"] for t in settings["targets"]] and "onnx" in targets
        assert page.input_value("#target-select") == "engine"

        page.click("#submit-job")
        page.wait_for_function("document.getElementById('job-form').dataset.lastJob")
        assert page.inner_text("#form-error") == ""
        job = tokenless.get(f"/jobs/{page.get_attribute('#job-form', 'data-last-job')}")
        assert job["bits"] == settings["default_bits"] and job["model"] == "digits-cnn"
        assert job.get("target") is None  # the engine: stored as it always was

        page.select_option("#target-select", "onnx")
        page.evaluate("document.getElementById('job-form').dataset.lastJob = ''")
        page.click("#submit-job")
        page.wait_for_function("document.getElementById('job-form').dataset.lastJob")
        job = tokenless.get(f"/jobs/{page.get_attribute('#job-form', 'data-last-job')}")
        assert job["target"] == "onnx"


def test_problem_job_front_on_the_latency_axis(page: Any, service: Service) -> None:
    from allocator.testing_problems import random_problem

    problem = random_problem(6, seed=3).to_dict()
    job_id = service.submit(problem=problem, budgets=["4bits"], solver="ilp", seed=0)
    assert service.wait(job_id, JOB_TIMEOUT_S)["status"] == "succeeded", service.log_tail()

    page.goto(f"{service.base}/ui/jobs/{job_id}")
    _wait_front(page)
    assert "(problem file)" in page.inner_text("#job-meta")
    # Predicted only: no measured panel, measured latency offered but disabled.
    traces = _traces(page)
    assert {t["meta"]["kind"] for t in traces if "kind" in t["meta"]} <= {"predicted", "ring"}
    assert page.locator("#axis-select option[value='measured_latency_us']").is_disabled()

    page.select_option("#axis-select", "latency_us")
    page.wait_for_function(
        "document.getElementById('front-plot').layout.xaxis.title.text.includes('latency')")
    pareto = service.get(f"/jobs/{job_id}/pareto")
    xs = next(t["x"] for t in _traces(page) if t["meta"] == {
        "group": "front", "kind": "predicted", "jobId": job_id})
    assert xs == [p["cost"]["latency_us"] for p in pareto["points"] if p["objective"] > 0]
    # The bit map now shows each layer's latency per bit-width, from the problem's table.
    assert page.input_value("#cost-select") == "latency_us"
    names = [x["name"] for x in problem["layers"]]
    assert [c[0] for c in _bitmap_cells(page)] == names
    first = problem["layers"][0]["latency_us"]
    row = page.inner_text(f".bitmap-table tr[data-layer='{names[0]}']")
    assert f"{first['2']:.3g} µs" in row, row
