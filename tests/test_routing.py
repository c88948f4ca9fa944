"""Pure route matching: globs, source filters and `where` conditions."""

from __future__ import annotations

from app.routing import Route, condition_holds, handlers_for, lookup, route_matches

PAYLOAD = {
    "type": "file.processing_failed",
    "data": {"platform": "dcycle", "file_id": "f1", "tags": ["a", "b"], "n": 0},
}


def test_globs_over_the_canonical_type() -> None:
    assert route_matches(Route("alfred.job.*", "h"), "s", "alfred.job.failed", {})
    assert route_matches(Route("*.failed", "h"), "s", "alfred.file.failed", {})
    assert route_matches(Route("*", "h"), "s", "anything", {})
    assert not route_matches(Route("alfred.job.*", "h"), "s", "alfred.file.failed", {})
    assert not route_matches(Route("alfred.job.failed", "h"), "s", "alfred.job.failed.x", {})


def test_source_filter() -> None:
    route = Route("*", "h", source="partner")
    assert route_matches(route, "partner", "t", {})
    assert not route_matches(route, "other", "t", {})


def test_lookup_dotted_paths() -> None:
    assert lookup(PAYLOAD, "data.platform") == "dcycle"
    assert lookup(PAYLOAD, "data.tags.1") == "b"
    assert lookup(PAYLOAD, "data.missing") is lookup(PAYLOAD, "nope.deeper")
    assert lookup(PAYLOAD, "data.tags.9") is lookup(PAYLOAD, "nope")


def test_where_equality_in_exists_ne() -> None:
    value = lookup(PAYLOAD, "data.platform")
    missing = lookup(PAYLOAD, "data.absent")
    assert condition_holds(value, "dcycle")
    assert not condition_holds(value, "aitronos")
    assert condition_holds(value, ["aitronos", "dcycle"])
    assert condition_holds(value, {"in": ["dcycle"]})
    assert condition_holds(value, {"exists": True})
    assert condition_holds(missing, {"exists": False})
    assert not condition_holds(missing, {"exists": True})
    assert not condition_holds(missing, "dcycle")
    assert condition_holds(missing, {"ne": "dcycle"})
    assert condition_holds(lookup(PAYLOAD, "data.n"), 0)
    assert not condition_holds(lookup(PAYLOAD, "data.n"), False) is None


def test_handlers_in_route_order_each_once() -> None:
    routes = [
        Route("*.failed", "ops"),
        Route("file.*", "dcycle", where=(("data.platform", "dcycle"),)),
        Route("*", "ops"),
        Route("file.*", "aitronos", where=(("data.platform", "aitronos"),)),
        Route("*", "log"),
    ]
    assert handlers_for(routes, "s", "file.processing_failed", PAYLOAD) == ("dcycle", "ops", "log")
    assert handlers_for(routes, "s", "file.failed", PAYLOAD) == ("ops", "dcycle", "log")
    assert handlers_for(routes, "s", "job.done", PAYLOAD) == ("ops", "log")
    assert handlers_for([], "s", "job.done", PAYLOAD) == ()
