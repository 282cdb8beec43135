"""Bad HTTP inputs for `benchmarks.robustness`: generated per route and field, sent over
loopback to `allocator serve`, each answer judged.

A case passes when the service answers (no timeout, no dropped connection), with no 5xx,
a JSON error body with `detail` on a 4xx, and a refusal (4xx) where the input must be
refused (surrogates, non-finite or overflowing numbers, non-integer bits, non-ASCII digits,
duplicate layer names, depth, size, auth). Jobs the service accepted are followed to their
end and then read back (`/result`, `/pareto`, a re-solve): a stored input must never turn
into a 5xx later.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks._robust_common import TOKEN, Service, Tally, log, short, wait_jobs

MIB = 2**20


class Raw(str):
    """JSON text inserted verbatim (NaN, 1e309, deep nesting, duplicate keys)."""


def encode(obj: Any) -> str:
    """JSON text of `obj` with `Raw` parts verbatim; strings ASCII-escaped, so a lone
    surrogate goes out as the JSON escape `\\ud800` (what a careless client sends)."""
    if isinstance(obj, Raw):
        return str(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + encode(v) for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(encode(v) for v in obj) + "]"
    return json.dumps(obj)


def deep(levels: int, kind: str = "object") -> Raw:
    return Raw('{"a":' * levels + "1" + "}" * levels if kind == "object"
               else "[" * levels + "]" * levels)


@dataclass
class Case:
    """One request. `expect`: "any" (no 5xx), "4xx" (must be refused), "2xx", or a status."""

    where: str
    label: str
    method: str
    path: str
    body: Any = None  # encoded with `encode` unless `content` is given
    content: bytes | None = None
    files: Any = None
    data: Any = None
    params: Any = None
    headers: dict[str, Any] = field(default_factory=dict)
    auth: bool = True
    expect: Any = "any"
    content_type: str | None = "application/json"


# -- the bad values, by the kind of field they go into -------------------------------------

BAD_STRINGS: list[tuple[str, Any, str]] = [
    ("lone surrogate", "\ud800", "4xx"), ("low surrogate", "a\udfffb", "4xx"),
    ("empty", "", "4xx"), ("NUL", "x\x00y", "any"), ("10k chars", "x" * 10_000, "4xx"),
    ("RTL override", "\u202eabc", "any"), ("emoji x100", "\U0001f642" * 100, "any"),
    ("path", "../../etc/passwd", "any"), ("null", None, "any"), ("int", 4, "4xx"),
    ("float", 4.5, "4xx"), ("bool", True, "4xx"), ("list", ["a"], "4xx"),
    ("object", {"a": 1}, "4xx"),
]
BAD_BUDGETS: list[tuple[str, str]] = [
    ("1e309bits", "4xx"), ("1e99999999999bits", "4xx"), ("1e-320bits", "any"),
    ("-4bits", "4xx"), ("0bits", "4xx"), ("nanbits", "4xx"), ("infbits", "4xx"),
    ("NaNMB", "4xx"), ("\u0664bits", "4xx"), ("\uff14bits", "4xx"), ("4\u00a0bits", "any"),
    ("0x4bits", "4xx"), ("4_0bits", "4xx"), ("4.5.5bits", "4xx"), ("bits", "4xx"),
    ("4", "4xx"), ("4parsecs", "4xx"), ("\ud800bits", "4xx"), ("4bits\x00", "4xx"),
    ("99999999999999999999999MB", "any"), ("1e308GBOPs", "any"), ("1e-308ms", "any"),
    ("1e-15bits", "any"), ("\u0664.\u0665bits", "4xx"), ("x" * 65, "4xx"),
]
BAD_BUDGET_LISTS: list[tuple[str, Any, str]] = [
    ("empty list", [], "4xx"), ("int item", [4], "4xx"), ("null item", [None], "4xx"),
    ("a string", "4bits", "4xx"), ("nested", [["4bits"]], "4xx"),
    ("5 budgets", ["4bits", "1MB", "1GBOPs", "2ms", "5bits"], "4xx"),
    ("same kind twice", ["4bits", "5bits"], "4xx"), ("null", None, "4xx"),
    ("deep", deep(900, "array"), "4xx"), ("object", {"bits": 4}, "4xx"),
]
BAD_INTS: list[tuple[str, Any, str]] = [
    ("-1", -1, "4xx"), ("2**31", 2**31, "4xx"), ("2**63", 2**63, "4xx"),
    ("2**64", 2**64, "4xx"), ("10**400", Raw("1" + "0" * 400), "4xx"), ("1.5", 1.5, "4xx"),
    ('"0"', "0", "any"), ('"\u0664"', "\u0664", "4xx"), ("null", None, "4xx"),
    ("true", True, "any"), ("1e309", Raw("1e309"), "4xx"), ("NaN", Raw("NaN"), "4xx"),
    ("-Infinity", Raw("-Infinity"), "4xx"),
]
BAD_BITS: list[tuple[str, Any, str]] = [
    ("[4.7, 2.2]", [4.7, 2.2], "4xx"), ("[]", [], "4xx"), ("[1]", [1], "4xx"),
    ("[9]", [9], "4xx"), ("[0]", [0], "4xx"), ("[-4]", [-4], "4xx"), ("[true]", [True], "any"),
    ('["4"]', ["4"], "any"), ("[4]*1000", [4] * 1000, "4xx"), ("[2**64]", [2**64], "4xx"),
    ("[NaN]", [Raw("NaN")], "4xx"), ("4", 4, "4xx"), ('"4,8"', "4,8", "4xx"),
    ("[null]", [None], "4xx"), ("[1e309]", [Raw("1e309")], "4xx"), ("[4.0]", [4.0], "any"),
]
BAD_SOLVERS: list[tuple[str, Any, str]] = [
    ("unknown", "nope", "4xx"), ("surrogate", "\ud800", "4xx"), ("fracbits (needs a model)",
                                                                  "fracbits", "4xx"),
    ("upper case", "ILP", "any"), ("int", 1, "4xx"), ("33 chars", "x" * 33, "4xx"),
]
BAD_MODELS: list[tuple[str, Any, str]] = [
    ("unknown", "nope", "4xx"), ("surrogate", "digits\ud800", "4xx"),
    ("user factory", "os:system", "4xx"), ("user model", "allocator.testing:TinyMLP", "4xx"),
    ("path", "../digits-mlp", "4xx"), ("129 chars", "x" * 129, "4xx"),
    ("NUL", "digits-mlp\x00", "4xx"), ("int", 7, "4xx"),
]


def _problem(n_layers: int, seed: int = 0) -> dict[str, Any]:
    from allocator.testing_problems import random_problem

    return random_problem(n_layers, seed=seed).to_dict()


def _with_layer(doc: dict, **changes: Any) -> dict:
    out = json.loads(json.dumps(doc))
    out["layers"][0].update(changes)
    return out


def _with(doc: dict, **changes: Any) -> dict:
    out = json.loads(json.dumps(doc))
    out.update(changes)
    return out


def _without(doc: dict, key: str) -> dict:
    return {k: v for k, v in doc.items() if k != key}


def bad_problems(base: dict) -> Iterator[tuple[str, Any, str]]:
    """(label, problem document or Raw text, expectation) for one base problem."""
    layer0 = base["layers"][0]
    first_bit = str(base["bits"][0])
    yield "format v2", _with(base, format="allocator.problem/2"), "4xx"
    yield "no format", _without(base, "format"), "4xx"
    yield "format surrogate", _with(base, format="\ud800"), "4xx"
    yield "model surrogate", _with(base, model="\ud800"), "4xx"
    yield "bits []", _with(base, bits=[]), "4xx"
    yield "bits [4.7]", _with(base, bits=[4.7]), "4xx"
    yield "bits [9]", _with(base, bits=[9]), "4xx"
    yield "bits [2**70]", _with(base, bits=[2**70]), "4xx"
    yield "activation_bits 99", _with(base, activation_bits=99), "4xx"
    yield "activation_bits 8.5", _with(base, activation_bits=8.5), "4xx"
    yield "layers []", _with(base, layers=[]), "4xx"
    yield "layers {}", _with(base, layers={}), "4xx"
    yield "layers [null]", _with(base, layers=[None]), "4xx"
    yield "layer name ''", _with_layer(base, name=""), "4xx"
    yield "layer name surrogate", _with_layer(base, name="\ud800"), "4xx"
    yield "layer name 100k chars", _with_layer(base, name="n" * 100_000), "any"
    yield "layer name int", _with_layer(base, name=1), "4xx"
    yield "layer name control chars", _with_layer(base, name="a\r\nb\x1b[31m"), "any"
    dup = json.loads(json.dumps(base))
    dup["layers"][1]["name"] = dup["layers"][0]["name"]
    yield "duplicate layer names", dup, "4xx"
    yield "params -1", _with_layer(base, params=-1), "4xx"
    yield "params 1.5", _with_layer(base, params=1.5), "4xx"
    yield "params 2**64", _with_layer(base, params=2**64), "4xx"
    yield "params 1e309", _with_layer(base, params=Raw("1e309")), "4xx"
    yield "params NaN", _with_layer(base, params=Raw("NaN")), "4xx"
    yield "macs -5", _with_layer(base, macs=-5), "4xx"
    yield "omega {}", _with_layer(base, omega={}), "4xx"
    yield "omega negative", _with_layer(base, omega={**layer0["omega"], first_bit: -1.0}), "4xx"
    yield "omega NaN", _with_layer(base, omega={**layer0["omega"], first_bit: Raw("NaN")}), "4xx"
    yield "omega Infinity", _with_layer(base, omega={**layer0["omega"],
                                                     first_bit: Raw("Infinity")}), "4xx"
    yield "omega 1e308", _with_layer(base, omega={k: 1e308 for k in layer0["omega"]}), "4xx"
    yield "omega 1e309", _with_layer(base, omega={**layer0["omega"],
                                                  first_bit: Raw("1e309")}), "4xx"
    yield "omega key 'four'", _with_layer(base, omega={"four": 0.1}), "4xx"
    yield "omega key '9'", _with_layer(base, omega={**layer0["omega"], "9": 0.1}), "4xx"
    yield "omega key arabic digit", _with_layer(base, omega={"\u0664": 0.1}), "4xx"
    yield "omega null", _with_layer(base, omega={**layer0["omega"], first_bit: None}), "4xx"
    yield "omega string", _with_layer(base, omega={**layer0["omega"], first_bit: "0.1"}), "any"
    yield "omega deep", _with_layer(base, omega=deep(900)), "4xx"
    yield "latency_us -1", _with_layer(base, latency_us={first_bit: -1.0}), "4xx"
    yield "size_bytes NaN", _with_layer(base, size_bytes={first_bit: Raw("NaN")}), "4xx"
    yield "allowed_bits [9]", _with_layer(base, allowed_bits=[9]), "4xx"
    yield "allowed_bits []", _with_layer(base, allowed_bits=[]), "4xx"
    yield "fixed_bits 4.5", _with_layer(base, fixed_bits=4.5), "4xx"
    yield "fixed_bits 9", _with_layer(base, fixed_bits=9), "4xx"
    yield "ties unknown layer", _with(base, ties=[["nonexistent", layer0["name"]]]), "4xx"
    yield "ties [[]]", _with(base, ties=[[]]), "any"
    yield "ties [[1]]", _with(base, ties=[[1]]), "4xx"
    yield "ties surrogate", _with(base, ties=[["\ud800", layer0["name"]]]), "4xx"
    yield "latency_offset_us NaN", _with(base, latency_offset_us=Raw("NaN")), "4xx"
    yield "latency_offset_us -1", _with(base, latency_offset_us=-1), "4xx"
    for levels in (50, 500, 900, 2000):
        yield f"meta nested {levels}", _with(base, meta=deep(levels)), "4xx"
    yield "meta surrogate key", Raw(encode(base)[:-1] + ',"meta":{"\\ud800":1}}'), "4xx"
    yield "meta 1e309", _with(base, meta=Raw("1e309")), "any"
    yield "unknown top-level key", _with(base, evil=1), "any"
    yield "duplicate format key", Raw('{"format":"allocator.problem/1",' + encode(base)[1:]
                                      .replace('"format":"allocator.problem/1"',
                                               '"format":"x"', 1)), "any"
    yield "a list", [base], "4xx"
    yield "a string", "allocator.problem/1", "4xx"


def bad_bodies() -> Iterator[tuple[str, bytes, str]]:
    """(label, raw body, expectation) for any JSON route."""
    yield "not JSON", b"{", "4xx"
    yield "empty body", b"", "4xx"
    yield "invalid UTF-8", b'{"budgets": ["\xff4bits"]}', "4xx"
    yield "null", b"null", "4xx"
    yield "array", b"[]", "4xx"
    yield "number 1e309", b"1e309", "4xx"
    yield "NaN", b"NaN", "4xx"
    yield "arrays nested 1000", b"[" * 1000 + b"]" * 1000, "4xx"
    yield "arrays nested 100000", b"[" * 100_000 + b"]" * 100_000, "4xx"
    yield "objects nested 950", (encode(deep(950))).encode(), "4xx"
    yield "8 MiB + 1 of spaces", b" " * (8 * MIB + 1), "4xx"
    yield "UTF-8 BOM", b"\xef\xbb\xbf{}", "4xx"
    yield "UTF-16", '{"budgets": ["4bits"]}'.encode("utf-16"), "any"  # RFC 7159 allowed it


def _auth_variants() -> list[tuple[str, dict[str, Any], str]]:
    return [
        ("no token", {}, "401"), ("wrong token", {"Authorization": "Bearer wrong"}, "401"),
        ("empty bearer", {"Authorization": "Bearer "}, "401"),
        ("basic", {"Authorization": "Basic cm9idXN0bmVzcy10b2tlbg=="}, "401"),
        ("lower-case scheme", {"Authorization": f"bearer {TOKEN}"}, "any"),
        ("trailing spaces", {"Authorization": f"Bearer {TOKEN}  "}, "any"),
        ("latin-1 bytes", {"Authorization": b"Bearer \xff\xfe"}, "401"),
        ("16 KiB token", {"Authorization": "Bearer " + "t" * 16_384}, "401"),
        ("token prefix", {"Authorization": f"Bearer {TOKEN[:-1]}"}, "401"),
    ]


BAD_IDS = ["0" * 32, "zz", "g" * 32, "0" * 31, "0" * 33, "%00", "..%2F..%2Fetc%2Fpasswd",
           "\u0660" * 32, "A" * 32, "0" * 5000, "%ED%A0%80"]


class HttpFuzz:
    """Generates the cases against one running service and judges the answers."""

    def __init__(self, service: Service, tally: Tally, rng: random.Random):
        self.svc = service
        self.tally = tally
        self.rng = rng
        self.accepted: list[str] = []

    # -- generation ----------------------------------------------------------------------

    def cases(self, queued_id: str, done_id: str) -> list[Case]:
        """Every case; `queued_id` is a job that never ran (cancelled before it started),
        `done_id` one that has succeeded (for the job routes' state checks)."""
        base = _problem(6, seed=self.rng.randrange(1000))
        good = {"problem": base, "budgets": ["4bits"], "solver": "greedy"}
        out: list[Case] = []
        add = out.append
        for label, doc, expect in bad_problems(base):
            add(Case("POST /solve", f"problem {label}", "POST", "/solve",
                     {"problem": doc, "budgets": ["4bits"], "solver": "greedy"}, expect=expect))
            add(Case("POST /jobs", f"problem {label}", "POST", "/jobs",
                     {"problem": doc, "budgets": ["4bits"], "solver": "greedy"}, expect=expect))
            add(Case("POST /jobs/upload", f"file: problem {label}", "POST", "/jobs/upload",
                     files={"file": ("p.json", encode(doc).encode(), "application/json")},
                     data={"budgets": "4bits", "solver": "greedy"}, content_type=None,
                     expect=expect))
        for text, expect in BAD_BUDGETS:
            for where, path, body in (
                    ("POST /solve", "/solve", dict(good, budgets=[text])),
                    ("POST /jobs", "/jobs", dict(good, budgets=[text])),
                    ("POST /jobs (model)", "/jobs", {"model": "digits-mlp", "budgets": [text],
                                                     "measure": False}),
                    ("POST /jobs/{id}/solve", f"/jobs/{done_id}/solve", {"budgets": [text]}),
                    ("POST /budgets/validate", "/budgets/validate", {"budgets": [text]})):
                add(Case(where, f"budget {text!r}", "POST", path, body, expect=expect))
            add(Case("POST /jobs/upload", f"form budgets {text!r}", "POST", "/jobs/upload",
                     files={"file": ("p.json", encode(base).encode(), "application/json")},
                     data={"budgets": text}, content_type=None, expect=expect))
        for label, value, expect in BAD_BUDGET_LISTS:
            for where, path, body in (("POST /solve", "/solve", dict(good, budgets=value)),
                                      ("POST /jobs", "/jobs", dict(good, budgets=value)),
                                      ("POST /budgets/validate", "/budgets/validate",
                                       {"budgets": value})):
                add(Case(where, f"budgets {label}", "POST", path, body,
                         expect="any" if where.endswith("validate") and label in (
                             "5 budgets", "same kind twice", "empty list") else expect))
        for key, values in (("bits", BAD_BITS), ("seed", BAD_INTS), ("solver", BAD_SOLVERS)):
            for label, value, expect in values:
                for where, path, body in (
                        ("POST /solve", "/solve", dict(good, **{key: value})),
                        ("POST /jobs", "/jobs", dict(good, **{key: value})),
                        ("POST /jobs/{id}/solve", f"/jobs/{done_id}/solve",
                         {"budgets": ["4bits"], key: value})):
                    add(Case(where, f"{key} {label}", "POST", path, body, expect=expect))
        for label, value, expect in BAD_MODELS:
            add(Case("POST /jobs (model)", f"model {label}", "POST", "/jobs",
                     {"model": value, "budgets": ["4bits"], "measure": False}, expect=expect))
        for label, value, expect in BAD_STRINGS:
            add(Case("POST /jobs", f"estimator {label}", "POST", "/jobs",
                     {"model": "digits-mlp", "budgets": ["4bits"], "estimator": value,
                      "measure": False}, expect="4xx" if expect == "4xx" or value is None
                     else "any"))
            add(Case("POST /jobs", f"extra key {label}", "POST", "/jobs",
                     Raw(encode(good)[:-1] + "," + encode({"extra": value})[1:]),
                     expect="4xx"))
            add(Case("POST /budgets/validate", f"budget string {label}", "POST",
                     "/budgets/validate", {"budgets": [value]},
                     expect="4xx" if expect == "4xx" or label in ("NUL", "10k chars",
                                                                    "path", "null")
                     else "any"))
        for route, path in (("POST /solve", "/solve"), ("POST /jobs", "/jobs"),
                            ("POST /jobs/{id}/solve", f"/jobs/{done_id}/solve"),
                            ("POST /budgets/validate", "/budgets/validate")):
            for label, raw, expect in bad_bodies():
                add(Case(route, f"body {label}", "POST", path, content=raw, expect=expect))
            add(Case(route, "body as text/plain", "POST", path, encode(good),
                     content_type="text/plain", expect="any"))
            add(Case(route, "form body", "POST", path, content_type=None,
                     data={"budgets": "4bits"}, expect="4xx"))
        writes: list[tuple[str, str, Any]] = [
            ("POST /jobs", "/jobs", good), ("POST /solve", "/solve", good),
            ("POST /jobs/{id}/cancel", f"/jobs/{queued_id}/cancel", None),
            ("POST /jobs/{id}/solve", f"/jobs/{done_id}/solve", {"budgets": ["4bits"]})]
        for label, headers, expect in _auth_variants():
            for where, path, body in writes:
                add(Case(where, f"auth {label}", "POST", path, body, headers=headers,
                         auth=False, expect=401 if expect == "401" else "any"))
            add(Case("POST /jobs/upload", f"auth {label}", "POST", "/jobs/upload",
                     files={"file": ("p.json", encode(base).encode(), "application/json")},
                     data={"budgets": "4bits"}, content_type=None, headers=headers, auth=False,
                     expect=401 if expect == "401" else "any"))
        job_routes: list[tuple[str, str, Any]] = [
            ("", "GET", None), ("/result", "GET", None), ("/pareto", "GET", None),
            ("/cancel", "POST", None), ("/solve", "POST", {"budgets": ["4bits"]})]
        for job_id in BAD_IDS:
            for suffix, method, body in job_routes:
                add(Case(f"{method} /jobs/{{id}}{suffix}", f"id {short(job_id, 40)}", method,
                         f"/jobs/{job_id}{suffix}", body, expect="4xx"))
        out += self._state_cases(queued_id, done_id, base)
        out += self._query_cases()
        out += self._upload_cases(base)
        out += self._route_cases()
        return out

    def _state_cases(self, queued_id: str, done_id: str, base: dict) -> list[Case]:
        return [
            Case("GET /jobs/{id}/result", "job never ran", "GET",
                 f"/jobs/{queued_id}/result", expect=409),
            Case("GET /jobs/{id}/pareto", "job never ran", "GET",
                 f"/jobs/{queued_id}/pareto", expect=409),
            Case("POST /jobs/{id}/cancel", "job already cancelled", "POST",
                 f"/jobs/{queued_id}/cancel", expect=409),
            Case("POST /jobs/{id}/solve", "job never ran", "POST",
                 f"/jobs/{queued_id}/solve", {"budgets": ["4bits"]}, expect="4xx"),
            Case("POST /jobs/{id}/cancel", "job already succeeded", "POST",
                 f"/jobs/{done_id}/cancel", expect=409),
            Case("POST /jobs/{id}/solve", "problem key (not allowed)", "POST",
                 f"/jobs/{done_id}/solve", {"budgets": ["4bits"], "problem": base},
                 expect="4xx"),
            Case("POST /jobs/{id}/solve", "bits outside the job's", "POST",
                 f"/jobs/{done_id}/solve", {"budgets": ["4bits"], "bits": [7]}, expect="any"),
        ]

    def _query_cases(self) -> list[Case]:
        out = []
        for params, expect in (
                ({"status": "bogus"}, "4xx"), ({"status": "\ud800"}, "4xx"),
                ({"limit": 0}, "4xx"), ({"limit": -1}, "4xx"), ({"limit": 501}, "4xx"),
                ({"limit": "1e309"}, "4xx"), ({"limit": "abc"}, "4xx"),
                ({"limit": str(10**30)}, "4xx"), ({"limit": "\u0665"}, "4xx"),
                ({"offset": -1}, "4xx"), ({"offset": 10**10}, "4xx"), ({"offset": "1e3"}, "4xx"),
                ({"model": "a b"}, "4xx"), ({"model": "x" * 1000}, "4xx"),
                ({"model": "\x00"}, "4xx"), ({"limit": ["1", "2"]}, "any"),
                ({"model": "digits\ud800"}, "4xx")):
            out.append(Case("GET /jobs", f"query {short(params, 50)}", "GET", "/jobs",
                            params=params, expect=expect))
        out.append(Case("GET /jobs", "query invalid UTF-8", "GET", "/jobs?model=%ff%fe",
                        expect="4xx"))
        return out

    def _upload_cases(self, base: dict) -> list[Case]:
        good_file = ("p.json", encode(base).encode(), "application/json")
        out = []
        for label, data, expect in (
                ("no budgets", {}, "4xx"), ("seed -1", {"budgets": "4bits", "seed": "-1"}, "4xx"),
                ("seed abc", {"budgets": "4bits", "seed": "abc"}, "4xx"),
                ("seed 1e309", {"budgets": "4bits", "seed": "1e309"}, "4xx"),
                ("seed arabic", {"budgets": "4bits", "seed": "\u0664"}, "4xx"),
                ("solver surrogate", {"budgets": "4bits", "solver": "\ud800"}, "4xx"),
                ("solver unknown", {"budgets": "4bits", "solver": "nope"}, "4xx"),
                ("5 budgets", {"budgets": ["4bits", "1MB", "1GBOPs", "2ms", "5bits"]}, "4xx"),
                ("extra field", {"budgets": "4bits", "evil": "1"}, "any")):
            out.append(Case("POST /jobs/upload", f"form {label}", "POST", "/jobs/upload",
                            files={"file": good_file}, data=data, content_type=None,
                            expect=expect))
        files: list[tuple[str, bytes, Any]] = [
                ("not JSON", b"{", "4xx"), ("invalid UTF-8", b'{"format": "\xff"}', "4xx"),
                ("empty", b"", "4xx"), ("a JSON array", b"[]", "4xx"),
                ("arrays nested 900", b"[" * 900 + b"]" * 900, "4xx"),
                ("arrays nested 100000", b"[" * 100_000 + b"]" * 100_000, "4xx"),
                ("8 MiB + 1", b" " * (8 * MIB + 1), 413), ("NUL bytes", b"\x00" * 100, "4xx"),
                ("UTF-16", encode(base).encode("utf-16"), "any")]
        for label, payload, expect in files:
            out.append(Case("POST /jobs/upload", f"file {label}", "POST", "/jobs/upload",
                            files={"file": ("p.json", payload, "application/json")},
                            data={"budgets": "4bits"}, content_type=None, expect=expect))
        out += [
            Case("POST /jobs/upload", "no file field", "POST", "/jobs/upload",
                 data={"budgets": "4bits"}, content_type=None, expect="4xx"),
            Case("POST /jobs/upload", "JSON body instead of multipart", "POST", "/jobs/upload",
                 {"budgets": ["4bits"], "problem": base}, expect="4xx"),
            Case("POST /jobs/upload", "multipart content-type, junk body", "POST",
                 "/jobs/upload", content=b"--x\r\njunk", expect="4xx",
                 content_type="multipart/form-data; boundary=x"),
            Case("POST /jobs/upload", "multipart without boundary", "POST", "/jobs/upload",
                 content=b"abc", expect="4xx", content_type="multipart/form-data"),
            Case("POST /jobs/upload", "file name surrogate-escaped", "POST", "/jobs/upload",
                 files={"file": ("\udcff.json", encode(base).encode(), "application/json")},
                 data={"budgets": "4bits"}, content_type=None, expect="any"),
            Case("POST /jobs/upload", "form budgets invalid UTF-8", "POST", "/jobs/upload",
                 content=(b"--b\r\nContent-Disposition: form-data; name=\"budgets\"\r\n\r\n"
                          b"\xff\xfebits\r\n--b\r\nContent-Disposition: form-data; "
                          b"name=\"file\"; filename=\"p.json\"\r\n\r\n"
                          + encode(base).encode() + b"\r\n--b--\r\n"),
                 content_type="multipart/form-data; boundary=b", expect="4xx"),
        ]
        return out

    def _route_cases(self) -> list[Case]:
        out = []
        for method, path, expect in (
                ("PUT", "/jobs", "4xx"), ("DELETE", "/jobs", "4xx"), ("PATCH", "/solve", "4xx"),
                ("GET", "/solve", "4xx"), ("POST", "/health", "4xx"), ("GET", "/nope", 404),
                ("GET", "/jobs/../../etc/passwd", "4xx"), ("GET", "/" + "a" * 10_000, "4xx"),
                ("GET", "/%ff%fe", "4xx"), ("DELETE", "/models/digits-mlp", "any"),
                ("POST", "/models", "4xx"), ("GET", "/jobs/" + "0" * 32 + "/export?format=x",
                                            "4xx"),
                ("GET", "/models", "2xx"), ("GET", "/solvers", "2xx"),
                ("GET", "/estimators", "2xx"), ("GET", "/hwprofiles", "2xx"),
                ("GET", "/settings", "2xx"), ("GET", "/metrics", "2xx"),
                ("GET", "/openapi.json", "2xx"), ("GET", "/docs", "2xx"),
                ("GET", "/ui/jobs/" + "0" * 32, "any"), ("GET", "/ui/jobs/%ff", "any"),
                ("OPTIONS", "/jobs", "any"), ("HEAD", "/health", "any")):
            out.append(Case(f"{method} {path[:40]}", "route/method", method, path,
                            expect=expect, content_type=None))
        return out

    # -- running -------------------------------------------------------------------------

    def send(self, client: httpx.Client, case: Case) -> httpx.Response | str:
        """The answer, or why there was none (one line)."""
        headers = dict(self.svc.headers) if case.auth else {}
        headers.update(case.headers)
        if case.content_type and case.files is None and case.data is None:
            headers.setdefault("Content-Type", case.content_type)
        content = case.content
        if content is None and case.body is not None:
            content = encode(case.body).encode()
        try:
            return client.request(case.method, case.path, content=content, files=case.files,
                                  data=case.data, params=case.params, headers=headers)
        except httpx.LocalProtocolError as e:  # h11 refuses to send it (a header value)
            return f"client could not send: {type(e).__name__}"
        except httpx.HTTPError as e:
            return f"no answer: {type(e).__name__}: {short(str(e), 120)}"
        except (UnicodeEncodeError, ValueError) as e:  # the client could not even send it
            return f"client could not send: {type(e).__name__}"

    def judge(self, case: Case, answer: httpx.Response | str, elapsed_s: float) -> None:
        t = self.tally
        where, sent = case.where, case.label
        if isinstance(answer, str):
            if answer.startswith("client could not send"):
                return  # not sent: not tried
            t.fail("server_errors", where, sent, answer)
            if not self.svc.alive():
                t.fail("server_errors", where, sent, "the service died; restarting it")
                self.svc.start()
            return
        status = answer.status_code
        if status >= 500:
            t.fail("server_errors", where, sent,
                   f"HTTP {status}: {short(answer.text, 200)} ({elapsed_s:.1f} s)")
            return
        if 400 <= status < 500:
            try:
                body = answer.json()
                has_detail = isinstance(body, dict) and "detail" in body
            except ValueError:
                has_detail = False
            if not has_detail and case.method != "HEAD":
                t.fail("errors_without_detail", where, sent,
                       f"HTTP {status} without a JSON detail: {short(answer.text, 120)}")
        expect = case.expect
        ok = (expect == "any" or (expect == "4xx" and 400 <= status < 500)
              or (expect == "2xx" and 200 <= status < 300) or expect == status)
        if not ok:
            t.fail("accepted_bad_inputs", where, sent,
                   f"HTTP {status}, expected {expect}: {short(answer.text, 160)}")
        if status == 202 and case.path in ("/jobs", "/jobs/upload"):
            try:
                job_id = answer.json().get("id")
            except (ValueError, AttributeError):
                job_id = None
            if isinstance(job_id, str):
                self.accepted.append(job_id)

    def run(self, cases: list[Case]) -> None:
        with httpx.Client(base_url=self.svc.base, timeout=30.0) as client:
            for case in cases:
                t0 = time.perf_counter()
                answer = self.send(client, case)
                elapsed = time.perf_counter() - t0
                if not (isinstance(answer, str) and answer.startswith("client could not")):
                    self.tally.add("http_inputs_tried")
                    self.tally.add("bad_inputs_tried")
                self.judge(case, answer, elapsed)

    def follow_up(self, timeout_s: float) -> None:
        """Waits for the jobs the fuzz got accepted, then reads each back: a stored input
        must not turn into a 5xx (`/result`, `/pareto`, a re-solve)."""
        if not self.accepted:
            return
        log(f"  following {len(self.accepted)} accepted jobs to their end...")
        with self.svc.client() as client:
            states = wait_jobs(client, self.accepted, timeout_s)
            for job_id in self.accepted:
                status = states.get(job_id, {}).get("status")
                for method, suffix, body in (("GET", "", None), ("GET", "/result", None),
                                             ("GET", "/pareto", None),
                                             ("POST", "/solve", {"budgets": ["4bits"]})):
                    case = Case(f"{method} /jobs/{{id}}{suffix}",
                                f"read back accepted job ({status})", method,
                                f"/jobs/{job_id}{suffix}", body)
                    t0 = time.perf_counter()
                    answer = self.send(client, case)
                    self.tally.add("http_inputs_tried")
                    self.judge(case, answer, time.perf_counter() - t0)
