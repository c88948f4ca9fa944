"""Real senders' artefacts, posted through the app: each gets the answer its sender expects.

Every file of the shared corpus (`../shared/corpus/`, public material of Standard Webhooks, Svix,
Alfred, Filecheck and GitHub) and of `tests/corpus/` is enumerated; each is matched to a kind by
its path, and a file no kind matches fails the suite instead of being skipped. Standard Webhooks
vectors run case by case: a valid signature is accepted with the payload's type and the message
id as dedupe key, an invalid one is a 401, as the reference libraries decide.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FakeClock, base_config

SHARED_CORPUS = Path(__file__).parents[2] / "shared" / "corpus"
LOCAL_CORPUS = Path(__file__).parent / "corpus"
ROOTS = {"shared": SHARED_CORPUS, "local": LOCAL_CORPUS}
# The vectors' "now": cases signed at the time they were made carry this timestamp.
CORPUS_NOW = 1_796_153_840.0
# The reference libraries' "verify ignoring timestamp" tests, for vectors with fixed old stamps.
IGNORE_AGE = 2_000_000_000

REF_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # libraries/*/tests DEFAULT_SECRET
RUST_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"  # libraries/rust/src/lib.rs tests
# Public half of the Go asymmetric test key VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=.
REF_PUBLIC_KEY = "whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g="
FILECHECK_SDK_SECRET = "whsec_test_secret"  # packages/node/test/webhooks.test.ts
ALFRED_URL = "/webhooks/alfred?token=alfred-token"
JSON_HEADERS = {"content-type": "application/json"}


def _standard(*secrets: str, tolerance: int = 300) -> dict[str, Any]:
    return {"platform": "standard", "auth": {
        "scheme": "standard_webhooks", "secrets": list(secrets), "tolerance_seconds": tolerance}}


def _github_source() -> dict[str, Any]:
    vector = json.loads((SHARED_CORPUS / "github" / "vector.json").read_text())
    return {"platform": "standard", "type_path": "action", "auth": {
        "scheme": "hmac_sha256", "header": vector["header"].lower(), "secrets": [vector["secret"]]}}


# The vectors name their source; these are the sources their reference libraries test with.
VECTOR_SOURCES = {
    "sw_ref": _standard(REF_SECRET, REF_PUBLIC_KEY, tolerance=IGNORE_AGE),
    "sw_strict": _standard(REF_SECRET),
    "sw_rust": _standard(RUST_SECRET, tolerance=IGNORE_AGE),
    "sw_pad1": _standard("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS"),  # 23-byte key, one "=" short
    "sw_pad2": _standard("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr"),  # 25-byte key, two short
    "sw_rotate": _standard(RUST_SECRET, REF_SECRET),
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(CORPUS_NOW)


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    raw = base_config(tmp_path / "hookline.db")
    raw["sources"].update(VECTOR_SOURCES)
    raw["sources"]["github"] = _github_source()
    raw["sources"]["fc_sdk"] = {"platform": "filecheck", "auth": {
        "scheme": "hmac_sha256", "header": "x-filecheck-signature",
        "secrets": [FILECHECK_SDK_SECRET]}}
    return raw


# --- enumeration ---------------------------------------------------------------------------

KINDS = [
    ("README.md", "documentation"),
    ("standard-webhooks/*.json", "vectors"),
    ("svix/*.json", "vectors"),
    ("alfred/event_names.json", "alfred_names"),
    ("alfred/docs/*.json", "alfred"),
    ("alfred/python_sdk/*.json", "alfred"),
    ("alfred/node_sdk/*.json", "alfred"),
    ("filecheck/*.json", "filecheck"),
    ("github/*.json", "github"),
]


def kind_of(relative: str) -> str | None:
    """The kind of artefact a corpus path holds, or None when no test knows it."""
    parts = relative.split("/")
    for pattern, kind in KINDS:
        pattern_parts = pattern.split("/")
        if len(pattern_parts) == len(parts) and all(
            fnmatch.fnmatchcase(part, glob) for part, glob in zip(parts, pattern_parts, strict=False)
        ):
            return kind
    return None


def artefacts() -> Iterator[tuple[str, Path, str | None]]:
    """Every corpus file: (root name, path, kind)."""
    for root_name, root in ROOTS.items():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            yield root_name, path, kind_of(path.relative_to(root).as_posix())


def _read_vectors(path: Path) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(path.read_text())
    return cases


def corpus_params(kind: str) -> list[Any]:
    params = []
    for root_name, path, found in artefacts():
        name = f"{root_name}:{path.relative_to(ROOTS[root_name]).as_posix()}"
        if found != kind:
            continue
        if kind == "vectors":
            params += [pytest.param(path, case, id=f"{name}:{case['name']}")
                       for case in _read_vectors(path)]
        else:
            params.append(pytest.param(path, id=name))
    return params


@pytest.mark.parametrize(
    ("root_name", "path"),
    [pytest.param(r, p, id=f"{r}:{p.relative_to(ROOTS[r]).as_posix()}") for r, p, _ in artefacts()],
)
def test_every_corpus_file_has_a_test(root_name: str, path: Path) -> None:
    relative = path.relative_to(ROOTS[root_name]).as_posix()
    assert kind_of(relative) is not None, (
        f"no test knows corpus artefact {root_name}:{relative}: add its kind to KINDS")


def test_the_shared_corpus_is_there_and_enumerated() -> None:
    found = {(r, p.relative_to(ROOTS[r]).as_posix()) for r, p, _ in artefacts()}
    for expected in ("standard-webhooks/vectors.json", "alfred/docs/job_retry.json",
                     "alfred/event_names.json", "filecheck/webhook.job-completed.json",
                     "github/vector.json"):
        assert ("shared", expected) in found
    assert ("local", "svix/vectors.json") in found


def test_an_unknown_artefact_path_is_not_matched() -> None:
    assert kind_of("alfred/docs/nested/job_retry.json") is None
    assert kind_of("dcycle/readings.json") is None
    assert kind_of("filecheck/notes.txt") is None
    assert kind_of("github/vector.json") == "github"


# --- Standard Webhooks and Svix vectors ----------------------------------------------------

# Expectations whose wording the rules below do not read, with why hookline answers so.
EXPECT_OVERRIDES = {
    # The Go library's asymmetric test key verifies it; sw_ref lists that key's whpk_ half.
    "v1a KAT only (TestAsymmetricWebhookSign)": 202,
    # A standard source takes any JSON object; the spec allows payloads without data.
    "spec squashed payload (no data key)": 202,
}


def expected_status(case: dict[str, Any]) -> int:
    """The status a vector's sender expects, read from its `expect` wording."""
    if case["name"] in EXPECT_OVERRIDES:
        return EXPECT_OVERRIDES[case["name"]]
    expect: str = case["expect"]
    if expect.startswith("401"):
        return 401
    if expect.startswith("auth ok, then 400"):
        return 400
    # "auth ok (non-401)" on a body without an envelope: stored with type "unknown".
    if expect.startswith(("auth ok", "202")) or expect.endswith(("lib accepts", "accept")) \
            or "lib accepts;" in expect:
        return 202
    raise AssertionError(f"vector {case['name']!r}: no rule reads expect {expect!r}")


def _message_id(headers: dict[str, str]) -> str | None:
    if "webhook-signature" in headers or "svix-signature" not in headers:
        return headers.get("webhook-id")
    return headers.get("svix-id")


@pytest.mark.parametrize(("path", "case"), corpus_params("vectors"))
async def test_standard_webhooks_vector(
    client: httpx.AsyncClient, path: Path, case: dict[str, Any]
) -> None:
    assert case["source"] in VECTOR_SOURCES, f"vector names unknown source {case['source']!r}"
    status = expected_status(case)
    response = await client.post(
        f"/webhooks/{case['source']}", content=case["body"].encode(), headers=case["headers"])
    assert response.status_code == status, (case["expect"], response.text)
    if status == 401:
        assert response.json()["error"]["code"] == "unauthorized"
    if status == 400:
        assert response.json()["error"]["code"] == "invalid_json"
    if status != 202:
        return
    payload = json.loads(case["body"])
    expected_type = payload["type"] if isinstance(payload.get("type"), str) else "unknown"
    assert response.json()["type"] == expected_type
    stored = (await client.get(f"/api/events/{response.json()['id']}")).json()
    assert stored["payload"] == payload
    assert stored["upstream_id"] == _message_id(case["headers"])
    assert not {"webhook-signature", "svix-signature"} & set(stored["headers"])


async def test_v1a_needs_the_public_key(client: httpx.AsyncClient) -> None:
    # The same asymmetric vector on a source that holds only the HMAC secret is refused.
    cases = _read_vectors(SHARED_CORPUS / "standard-webhooks" / "vectors.json")
    [case] = [c for c in cases if c["name"].startswith("v1a KAT only")]
    response = await client.post("/webhooks/sw_rust", content=case["body"].encode(),
                                 headers=case["headers"])
    assert response.status_code == 401


async def test_svix_id_is_the_dedupe_key(client: httpx.AsyncClient) -> None:
    cases = _read_vectors(SHARED_CORPUS / "standard-webhooks" / "vectors.json")
    name = "signed by svix.webhooks.Webhook.sign, svix-* headers"
    [case] = [c for c in cases if c["name"] == name]
    first = await client.post("/webhooks/sw_strict", content=case["body"].encode(),
                              headers=case["headers"])
    again = await client.post("/webhooks/sw_strict", content=case["body"].encode(),
                              headers=case["headers"])
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == {"id": first.json()["id"], "duplicate": True}


# --- Alfred -------------------------------------------------------------------------------


def alfred_type(path: Path) -> str:
    """The canonical type an artefact's file name stands for: job_retry -> alfred.job.retry."""
    entity, _, action = path.stem.partition("_")
    return f"alfred.{entity}.{action}"


@pytest.mark.parametrize("path", corpus_params("alfred"))
async def test_alfred_artefact(client: httpx.AsyncClient, path: Path) -> None:
    raw = path.read_bytes()
    payload = json.loads(raw)
    response = await client.post(ALFRED_URL, content=raw, headers=JSON_HEADERS)
    if payload.get("type") == "url_verification":
        assert response.status_code == 200
        assert response.json() == {"challenge": payload["challenge"]}
        assert (await client.get("/api/events")).json()["items"] == []
        return
    assert response.status_code == 202, response.text
    assert response.json()["type"] == alfred_type(path)
    stored = (await client.get(f"/api/events/{response.json()['id']}")).json()
    event = payload["event"]
    assert stored["upstream_id"] == payload["event_id"]
    assert stored["occurred_at"] == float(payload["event_time"])
    for key in ("job_id", "file_id", "company_id"):
        assert stored[key] == event.get(key), key


def _alfred_stems(directory: str) -> set[str]:
    return {p.stem for p in (SHARED_CORPUS / "alfred" / directory).glob("*.json")}


async def test_alfred_spellings_normalise_to_one_type(client: httpx.AsyncClient) -> None:
    docs = _alfred_stems("docs") - {"url_verification"}
    assert len(docs) == 24
    assert _alfred_stems("python_sdk") == docs == _alfred_stems("node_sdk")
    for stem in sorted(docs):
        types = set()
        for directory in ("docs", "python_sdk", "node_sdk"):
            raw = (SHARED_CORPUS / "alfred" / directory / f"{stem}.json").read_bytes()
            response = await client.post(ALFRED_URL, content=raw, headers=JSON_HEADERS)
            assert response.status_code == 202, (directory, stem, response.text)
            types.add(response.json()["type"])
        assert types == {f"alfred.{stem.replace('_', '.', 1)}"}, stem


@pytest.mark.parametrize("path", corpus_params("alfred_names"))
async def test_alfred_event_names(client: httpx.AsyncClient, path: Path) -> None:
    names = json.loads(path.read_text())
    [docs_names] = [value for value in names.values() if isinstance(value, list)]
    assert len(docs_names) == 24
    node_names = {p.stem: json.loads(p.read_text())["event"]["event_name"]
                  for p in (SHARED_CORPUS / "alfred" / "node_sdk").glob("*.json")}
    for index, name in enumerate(docs_names):
        stem = name.removesuffix("_event")
        assert node_names[stem] == f"alfred_event_{stem}"  # "alfred_event_<entity>_<action>"
        template = json.loads((SHARED_CORPUS / "alfred" / "docs" / f"{stem}.json").read_text())
        for spelling in (name, node_names[stem]):
            template["event_id"] = f"names-{index}-{spelling}"
            template["event"]["event_name"] = spelling
            response = await client.post(ALFRED_URL, content=json.dumps(template),
                                         headers=JSON_HEADERS)
            assert response.status_code == 202, (spelling, response.text)
            assert response.json()["type"] == f"alfred.{stem.replace('_', '.', 1)}", spelling


# --- Filecheck ----------------------------------------------------------------------------


def filecheck_type(payload: dict[str, Any]) -> str:
    """The type the Filecheck SDK's constructEvent gives a body (src/webhooks.ts)."""
    if isinstance(payload.get("taskIds"), list) and payload.get("finalized") \
            and isinstance(payload.get("tasks"), list):
        return "filecheck.job.completed"
    if isinstance(payload.get("taskCount"), int):
        return "filecheck.job.created"
    return "filecheck.unrecognised"


def sdk_signature(raw: bytes) -> str:
    """computeSignature(secret, rawBody) of the Filecheck SDK: hex HMAC-SHA256."""
    return hmac.new(FILECHECK_SDK_SECRET.encode(), raw, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("path", corpus_params("filecheck"))
async def test_filecheck_artefact(client: httpx.AsyncClient, path: Path) -> None:
    raw = path.read_bytes()
    payload = json.loads(raw)
    expected = filecheck_type(payload)
    # As delivered today (unsigned, a header token the operator chose) and as the SDK signs.
    unsigned = await client.post("/webhooks/filecheck", content=raw,
                                 headers={**JSON_HEADERS, "x-hook-token": "fc-token"})
    assert unsigned.status_code == 202, unsigned.text
    assert unsigned.json()["type"] == expected
    signed = await client.post("/webhooks/fc_sdk", content=raw, headers={
        **JSON_HEADERS, "x-filecheck-signature": sdk_signature(raw)})
    assert signed.status_code == 202, signed.text
    stored = (await client.get(f"/api/events/{signed.json()['id']}")).json()
    assert stored["type"] == expected
    assert stored["payload"] == payload
    assert stored["job_id"] == payload.get("id")
    if expected != "filecheck.unrecognised":
        assert stored["company_id"] == payload.get("customerId")
    # The SDK's refusals: a tampered body, a wrong-length signature.
    for body, signature in ((raw + b" ", sdk_signature(raw)), (raw, "deadbeef")):
        refused = await client.post("/webhooks/fc_sdk", content=body, headers={
            **JSON_HEADERS, "x-filecheck-signature": signature})
        assert refused.status_code == 401


# --- GitHub (a plain HMAC-signed sender on a standard source) ------------------------------


@pytest.mark.parametrize("path", corpus_params("github"))
async def test_github_signature_vector(client: httpx.AsyncClient, path: Path) -> None:
    vector = json.loads(path.read_text())
    header = vector["header"].lower()
    body = vector["payload"].encode()
    # The signature is GitHub's own: authentication passes; the docs' example body is plain
    # text, so the answer is the not-JSON 400, never the 401.
    response = await client.post("/webhooks/github", content=body, headers={
        **JSON_HEADERS, header: vector["signature"]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    wrong = vector["signature"][:-1] + ("0" if vector["signature"][-1] != "0" else "1")
    refused = await client.post("/webhooks/github", content=body, headers={
        **JSON_HEADERS, header: wrong})
    assert refused.status_code == 401
    # A JSON delivery signed the same way lands as a first-class event, typed by type_path.
    delivery = json.dumps({"action": "opened", "number": 7, "job_id": "j-7"}).encode()
    digest = hmac.new(vector["secret"].encode(), delivery, hashlib.sha256).hexdigest()
    accepted = await client.post("/webhooks/github", content=delivery, headers={
        **JSON_HEADERS, header: f"sha256={digest}"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["type"] == "opened"
    stored = (await client.get(f"/api/events/{accepted.json()['id']}")).json()
    assert stored["job_id"] == "j-7"
    assert header not in stored["headers"]
