"""Property tests: ingest answers, route matching and retry decisions against their specifications.

Each property runs a bounded, derandomized number of examples with no example database, so CI sees
the same inputs every run. Ingest properties post through the real ASGI app (one app and store per
test, many examples through it); routing and retry properties compare the pure functions with small
reference models written here from the README, not from the implementation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import random
import re
from functools import cache
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.ids import new_id
from app.retry import Decision, RetryPolicy, decide
from app.routing import Route, condition_holds, handlers_for, lookup, route_matches
from app.worker import classify
from handlers import Retry
from handlers.forward import raise_for_outcome
from handlers.upstream import lookup_path
from schemas.alfred import BODIES

from conftest import STANDARD_SECRET, FakeClock, standard_headers

FAST = settings(max_examples=200, deadline=None, derandomize=True, database=None)
# The app fixture is built once per test and shared by its examples on purpose.
THROUGH_APP = settings(
    max_examples=60, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_ids = itertools.count()


def fresh_id() -> str:
    return f"msg_prop_{next(_ids)}"


# JSON values, and the error envelope every 4xx carries.

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


def assert_answer(response: httpx.Response, allowed: set[int]) -> None:
    """The status is one the contract allows here; 4xx bodies are exactly the error envelope."""
    assert response.status_code in allowed, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if response.status_code >= 400:
        assert set(body) == {"error"}
        error = body["error"]
        assert set(error) == {"code", "message", "details"}
        assert re.fullmatch(r"[a-z_]+", error["code"])
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["details"], list)
    elif response.status_code == 202:
        assert set(body) == {"id", "type", "duplicate"} and body["duplicate"] is False
    elif "challenge" in body:
        assert set(body) == {"challenge"}
    else:
        assert set(body) == {"id", "duplicate"} and body["duplicate"] is True


# (a) Unsigned (or wrongly signed) posts to a signed source: always 401.

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@THROUGH_APP
@given(
    source=st.sampled_from(["partner", "alfred", "filecheck", "signed"]),
    body=st.binary(max_size=300),
    guesses=st.dictionaries(
        st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature",
                         "x-hook-token", "x-filecheck-signature"]),
        printable, max_size=3),
    token=st.none() | printable,
)
async def test_unsigned_posts_to_a_signed_source_are_always_401(
    client: httpx.AsyncClient, source: str, body: bytes, guesses: dict[str, str],
    token: str | None,
) -> None:
    params = {} if token is None else {"token": token}
    response = await client.post(f"/webhooks/{source}", content=body, params=params,
                                 headers={"content-type": "application/json", **guesses})
    assert_answer(response, {401})
    assert response.json()["error"]["code"] == "unauthorized"


# (b) Correctly signed Standard Webhooks deliveries: the parser and schema decide, never auth.

timestamps = (
    st.sampled_from(["2026-11-01T10:00:00Z", "2026-11-01T10:00:00+05:30", "2026-11-01",
                     "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "yesterday", ""])
    | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | json_values
)
standard_envelopes = st.fixed_dictionaries(
    {"type": st.text(min_size=1, max_size=30) | json_values, "timestamp": timestamps,
     "data": json_objects | json_values},
    optional={"extra": json_values},
)
standard_texts = (
    standard_envelopes.map(json.dumps)
    | standard_envelopes.map(lambda e: json.dumps(e, ensure_ascii=False))
    | st.text(max_size=200)
    | json_values.map(json.dumps)
    | st.sampled_from(['{"type": "t", "timestamp": 1e400, "data": {}}', "NaN", "\ufeff{}",
                       '{"a": ' * 2000 + "1" + "}" * 2000, '{"n": ' + "9" * 5000 + "}"])
)


def sign_raw_bytes(body: bytes, now: float, msg_id: str) -> dict[str, str]:
    """Standard Webhooks headers over the raw body bytes, as the spec defines the signature
    (the reference library takes text, so it cannot sign bytes that are not UTF-8)."""
    key = base64.b64decode(STANDARD_SECRET.removeprefix("whsec_"))
    signed = f"{msg_id}.{int(now)}.".encode() + body
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {"content-type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(int(now)), "webhook-signature": f"v1,{digest}"}


@THROUGH_APP
@given(text=standard_texts)
async def test_signed_standard_text_is_parsed_never_refused_by_auth(
    client: httpx.AsyncClient, clock: FakeClock, text: str
) -> None:
    body = text.encode()
    headers = standard_headers(body, clock.now(), fresh_id())
    response = await client.post("/webhooks/partner", content=body, headers=headers)
    assert_answer(response, {200, 202, 400, 422})


@THROUGH_APP
@given(body=st.binary(max_size=300))
async def test_signed_standard_bytes_are_parsed_never_refused_by_auth(
    client: httpx.AsyncClient, clock: FakeClock, body: bytes
) -> None:
    response = await client.post("/webhooks/partner", content=body,
                                 headers=sign_raw_bytes(body, clock.now(), fresh_id()))
    assert_answer(response, {200, 202, 400, 422})
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"


# (c) The `open` source (no auth, Alfred platform, unknown events accepted).

alfred_names = st.sampled_from(
    [*BODIES, *(name.removeprefix("alfred.").replace(".", "_") + "_event" for name in BODIES),
     "JobFailedEvent", "alfred_event_job_retry", "url_verification", "nonsense"]
)
alfred_envelopes = st.fixed_dictionaries(
    {"event_id": st.text(max_size=12) | json_values,
     "event_type": st.text(max_size=12) | json_values,
     "event_time": st.floats() .map(repr) | st.floats(allow_nan=False) | json_values,
     "event": st.fixed_dictionaries(
         {"event_name": alfred_names | json_values},
         optional={key: json_values | st.text(max_size=12) for key in (
             "job_id", "file_id", "file_log_id", "company_id", "retries", "exceeded_retries",
             "error_messages", "creation_date", "confidence", "file_status")},
     ) | json_values},
    optional={"type": st.just("url_verification"), "challenge": json_values},
)


@THROUGH_APP
@given(payload=alfred_envelopes | json_objects)
async def test_open_source_json_objects(client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    response = await client.post("/webhooks/open", content=json.dumps(payload).encode(),
                                  headers={"content-type": "application/json"})
    assert_answer(response, {200, 202, 400, 422})


@THROUGH_APP
@given(body=st.binary(max_size=300))
async def test_open_source_arbitrary_bytes(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/webhooks/open", content=body,
                                 headers={"content-type": "application/json"})
    assert_answer(response, {200, 202, 400, 422})


# Route matching.
#
# Specification (README "Routing events to handlers", app/routing.py): `match` is a glob over
# the whole canonical type, case-sensitive: `*` matches any run of characters, dots included
# (so `*.failed` matches `alfred.job.failed`, and `alfred.*` matches `alfred.job.failed`), `?`
# exactly one character, `[abc]`/`[!abc]` one character of (or not of) a set; every other
# character is literal. `source`, when set, must equal the event's source. Every `where` entry
# must hold: the dotted path walks objects by key and arrays by a decimal index; a scalar or an
# object condition means equality, a list means "one of", and a table of operators
# (`eq`, `ne`, `in`, `exists`) means all of them. Equality is JSON equality: `1 == 1.0`, but
# `true` is not `1` and `false` is not `0`. A missing value equals nothing, is in nothing, and
# is `ne` everything.

MISSING = object()
GLOB_CHARS = "ab.+$(^"


def glob_tokens() -> st.SearchStrategy[list[tuple[str, str]]]:
    literal = st.sampled_from(GLOB_CHARS).map(lambda c: ("lit", c))
    wild = st.sampled_from([("star", "*"), ("one", "?")])
    klass = st.tuples(st.sampled_from(["", "!"]), st.text("ab.", min_size=1, max_size=2)).map(
        lambda t: ("not" if t[0] else "set", t[1]))
    return st.lists(literal | wild | klass, max_size=6)


def render(tokens: list[tuple[str, str]]) -> str:
    out = []
    for kind, value in tokens:
        out.append({"set": f"[{value}]", "not": f"[!{value}]"}.get(kind, value))
    return "".join(out)


def glob_reference(tokens: list[tuple[str, str]], text: str) -> bool:
    @cache
    def match(i: int, j: int) -> bool:
        if i == len(tokens):
            return j == len(text)
        kind, value = tokens[i]
        if kind == "star":
            return any(match(i + 1, k) for k in range(j, len(text) + 1))
        if j == len(text):
            return False
        fits = {"lit": text[j] == value, "one": True, "set": text[j] in value,
                "not": text[j] not in value}[kind]
        return fits and match(i + 1, j + 1)

    return match(0, 0)


@FAST
@given(tokens=glob_tokens(), text=st.text(GLOB_CHARS + "B", max_size=8))
def test_glob_matches_the_reference(tokens: list[tuple[str, str]], text: str) -> None:
    pattern = render(tokens)
    assert route_matches(Route(pattern, "h"), "s", text, {}) is glob_reference(tokens, text)


def test_glob_examples_from_the_readme() -> None:
    cases = [("alfred.job.*", "alfred.job.failed", True), ("*.failed", "alfred.job.failed", True),
             ("alfred.*", "alfred.job.failed", True), ("*", "", True),
             ("alfred.job.*", "alfred.jobs.failed", False), ("*.failed", "alfred.failed.x", False),
             ("Alfred.*", "alfred.job.failed", False), ("alfred.job.?", "alfred.job.", False)]
    for pattern, text, expected in cases:
        assert route_matches(Route(pattern, "h"), "s", text, {}) is expected, (pattern, text)


def json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def lookup_reference(payload: Any, path: str) -> Any:
    node = payload
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and re.fullmatch("[0-9]+", part) and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def holds_reference(value: Any, condition: Any) -> bool:
    def op(name: str, arg: Any) -> bool:
        present = value is not MISSING
        if name == "exists":
            return present is bool(arg)
        if name == "eq":
            return present and json_equal(value, arg)
        if name == "ne":
            return not present or not json_equal(value, arg)
        return present and isinstance(arg, list) and any(json_equal(value, x) for x in arg)

    if isinstance(condition, dict) and condition and set(condition) <= {"eq", "ne", "in",
                                                                        "exists"}:
        return all(op(name, arg) for name, arg in condition.items())
    if isinstance(condition, list):
        return op("in", condition)
    return op("eq", condition)


KEYS = ["a", "b", "0", "1", "01", "²", "٣", ""]
small_scalars = st.sampled_from([None, True, False, 0, 1, 2, 0.0, 1.0, "a", "1", ""])
small_values = st.recursive(
    small_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS[:4]),
                                                                inner, max_size=3),
    max_leaves=8,
)
paths = st.lists(st.sampled_from(KEYS), min_size=1, max_size=3).map(".".join)
conditions = (
    small_values
    | st.lists(small_values, max_size=3)
    | st.dictionaries(st.sampled_from(["eq", "ne", "in", "exists"]),
                      small_values | st.lists(small_scalars, max_size=3), min_size=1, max_size=3)
)


def existing_paths(node: Any, prefix: str = "") -> list[str]:
    """Every dotted path that leads somewhere in `node`."""
    children: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        children = list(node.items())
    elif isinstance(node, list):
        children = [(str(i), item) for i, item in enumerate(node)]
    found = []
    for key, child in children:
        path = f"{prefix}.{key}" if prefix else key
        found += [path, *existing_paths(child, path)]
    return found


def look_alikes(value: Any) -> list[Any]:
    """Values Python's `==` confuses with `value` although JSON does not."""
    if isinstance(value, bool):
        return [value, int(value), float(value)]
    if isinstance(value, int | float) and value in (0, 1):
        return [value, bool(value)]
    return [value]


@st.composite
def where_cases(draw: st.DrawFn) -> tuple[Any, str, Any]:
    """A payload, a path (usually one that exists) and a condition (often about its value)."""
    payload = draw(small_values)
    present = existing_paths(payload)
    path = draw(st.sampled_from(present) | paths) if present else draw(paths)
    value = lookup_reference(payload, path)
    near = look_alikes(value) if value is not MISSING else [None]
    near_values = st.sampled_from(near)
    condition = draw(
        conditions
        | near_values
        | st.lists(near_values | small_scalars, min_size=1, max_size=3)
        | st.dictionaries(st.sampled_from(["eq", "ne", "in"]),
                          near_values | st.lists(near_values, min_size=1, max_size=2),
                          min_size=1, max_size=2)
    )
    return payload, path, condition


@FAST
@given(case=where_cases())
def test_lookup_matches_the_reference(case: tuple[Any, str, Any]) -> None:
    payload, path, _ = case
    found = lookup(payload, path)
    expected = lookup_reference(payload, path)
    if expected is MISSING:
        assert found is lookup({}, "absent")
    else:
        assert found == expected and type(found) is type(expected)


@FAST
@given(case=where_cases())
def test_where_conditions_match_the_reference(case: tuple[Any, str, Any]) -> None:
    payload, path, condition = case
    expected = holds_reference(lookup_reference(payload, path), condition)
    assert condition_holds(lookup(payload, path), condition) is expected
    route = Route("*", "h", where=((path, condition),))
    assert route_matches(route, "s", "t", payload) is expected


routes_strategy = st.lists(
    st.builds(
        lambda tokens, handler, source, where: (tokens, Route(render(tokens), handler, source,
                                                              tuple(where))),
        glob_tokens(), st.sampled_from(["h1", "h2", "h3"]),
        st.none() | st.sampled_from(["partner", "alfred"]),
        st.lists(st.tuples(paths, conditions), max_size=2),
    ),
    max_size=5,
)


@settings(FAST, max_examples=100)
@given(routes=routes_strategy, source=st.sampled_from(["partner", "alfred", "open"]),
       event_type=st.text(GLOB_CHARS, max_size=6), payload=small_values)
def test_handlers_for_matches_the_reference(
    routes: list[tuple[list[tuple[str, str]], Route]], source: str, event_type: str,
    payload: Any,
) -> None:
    expected: list[str] = []
    for tokens, route in routes:
        fits = (
            (route.source is None or route.source == source)
            and glob_reference(tokens, event_type)
            and all(holds_reference(lookup_reference(payload, p), c) for p, c in route.where)
        )
        if fits and route.handler not in expected:
            expected.append(route.handler)
    got = handlers_for([route for _, route in routes], source, event_type, payload)
    assert got == tuple(expected)


# Retry decisions.
#
# Specification (app/retry.py, README "Routing events to handlers"): success ends a delivery;
# a permanent error makes it dead at once, whatever the attempt; a transient one (or a timeout)
# after `max_attempts` attempts makes it dead; otherwise it is pending again after a delay drawn
# in the upper half of the exponential step `min(backoff_max, base * 2**(attempts-1))` by the
# random number (full jitter over [step/2, step)). A requested delay (Retry(after=...) or the
# upstream's Retry-After) is a floor, itself capped at backoff_max, so no retry is ever later
# than backoff_max. The same inputs always give the same decision.

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 10_000),
    backoff_base=st.floats(0.01, 60),
    backoff_max=st.floats(1, 1e6),
)
NOW = 1_790_000_000.0


@FAST
@given(policy=policies, attempts=st.integers(1, 12_000),
       outcome=st.sampled_from(["transient", "timeout", "permanent", "succeeded"]),
       rand=st.floats(0, 1, exclude_max=True),
       retry_after=st.none() | st.floats(-10, 1e7, allow_nan=False))
def test_decide_follows_the_specification(
    policy: RetryPolicy, attempts: int, outcome: Any, rand: float, retry_after: float | None
) -> None:
    decision = decide(outcome, attempts, policy, NOW, rand, retry_after)
    assert decision == decide(outcome, attempts, policy, NOW, rand, retry_after)
    if outcome == "succeeded":
        assert decision == Decision("succeeded")
        return
    if outcome == "permanent" or attempts >= policy.max_attempts:
        assert decision.status == "dead" and decision.next_attempt_at is None
        assert decision.reason
        return
    assert decision.status == "pending" and decision.next_attempt_at is not None
    delay = decision.next_attempt_at - NOW
    step = policy.backoff_max if attempts > 64 else min(
        policy.backoff_max, policy.backoff_base * 2 ** (attempts - 1))
    floor = step / 2
    if retry_after is not None:
        floor = max(floor, min(retry_after, policy.backoff_max))
    tolerance = 1e-6 * max(1.0, step)
    assert floor - tolerance <= delay <= max(step, floor) + tolerance
    assert delay <= policy.backoff_max + tolerance
    if retry_after is None:
        assert abs(delay - (step / 2 + step / 2 * rand)) <= tolerance


@FAST
@given(policy=policies, attempts=st.integers(1, 11_999), rand=st.floats(0, 1, exclude_max=True))
def test_backoff_never_shrinks_as_attempts_grow(
    policy: RetryPolicy, attempts: int, rand: float
) -> None:
    roomy = RetryPolicy(12_001, policy.backoff_base, policy.backoff_max)
    first = decide("transient", attempts, roomy, NOW, rand).next_attempt_at
    second = decide("transient", attempts + 1, roomy, NOW, rand).next_attempt_at
    assert first is not None and second is not None and first <= second


@FAST
@given(value=st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=8)
       | st.integers(0, 10**6).map(str))
def test_any_retry_after_header_classifies_without_raising(value: str) -> None:
    request = httpx.Request("POST", "http://127.0.0.1/hook")
    response = httpx.Response(503, headers=[(b"retry-after", value.encode("latin-1"))],
                              request=request)
    result = classify(httpx.HTTPStatusError("503", request=request, response=response))
    assert result.outcome == "transient" and result.http_status == 503
    if re.fullmatch("[0-9]+", value):
        assert result.retry_after == float(value)
    else:
        assert result.retry_after is None


@FAST
@given(value=st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=8))
def test_forward_maps_any_retry_after_to_a_retry(value: str) -> None:
    request = httpx.Request("POST", "http://127.0.0.1/hook")
    response = httpx.Response(503, headers=[(b"retry-after", value.encode("latin-1"))],
                              request=request)
    with pytest.raises(Retry) as info:
        raise_for_outcome(response)
    assert info.value.after == (float(value) if re.fullmatch("[0-9]+", value) else None)


@FAST
@given(case=where_cases())
def test_handler_option_paths_agree_with_route_paths(case: tuple[Any, str, Any]) -> None:
    payload, path, _ = case
    expected = lookup_reference(payload, path)
    assert lookup_path(payload, path) == (None if expected is MISSING else expected)


def test_ids_do_not_repeat_when_the_global_random_is_reseeded() -> None:
    # Hypothesis (and any plugin) may reseed the module-level `random` between calls.
    random.seed(7)
    first = new_id("evt", NOW)
    random.seed(7)
    assert new_id("evt", NOW) != first
