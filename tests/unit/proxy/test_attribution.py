"""attribute(): key pin > X-Spendgate-* header > body metadata; spendgate's metadata keys are taken out."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from policies.attribution import Attribution
from proxy.attribution import MAX_TAG_CHARS, attribute
from proxy.auth import Principal
from proxy.errors import InvalidRequest

PLAIN = Principal("ci", "acme", "agent")
PINNED = Principal("planner-key", "acme", "agent", project="web", agent="planner")
CLAUDE_USER_ID = "user_" + "a" * 64 + "_account_" + "b" * 36 + "_session_" + "c" * 36  # ~170 chars


def test_no_tags_gives_org_and_key_from_the_principal() -> None:
    body: dict[str, Any] = {"model": "m"}
    assert attribute(PLAIN, {}, body) == (Attribution(org="acme", key="ci"), False)
    assert body == {"model": "m"}
    assert attribute(PLAIN, {}, None) == (Attribution(org="acme", key="ci"), False)


def test_every_dimension_is_read_from_its_header() -> None:
    headers = {"x-spendgate-project": "p", "x-spendgate-agent": "qa", "x-spendgate-station": "security",
               "x-spendgate-run": "run-1", "x-spendgate-issue": "ISS-7", "x-spendgate-actor": "human",
               "x-spendgate-retry-of": "req_1", "x-spendgate-org": "evil"}
    found, changed = attribute(PLAIN, headers, {"model": "m"})
    assert found == Attribution(org="acme", key="ci", project="p", agent="qa", station="security", run="run-1",
                                issue="ISS-7", actor="human", retry_of="req_1")
    assert not changed  # and the org never comes from a header


def test_pin_beats_header_beats_metadata() -> None:
    headers = {"x-spendgate-project": "from-header", "x-spendgate-run": "run-h"}
    body = {"model": "m", "metadata": {"project": "from-meta", "agent": "meta-agent", "run": "run-m", "issue": "i-m"}}
    found, changed = attribute(PINNED, headers, body)
    assert (found.project, found.agent) == ("web", "planner")  # key pins win over both
    assert found.run == "run-h"  # header wins over metadata
    assert found.issue == "i-m"  # metadata when nothing else says
    assert changed and "metadata" not in body  # all four were spendgate's keys: the emptied object is dropped
    unpinned, _ = attribute(PLAIN, headers, {"metadata": {"project": "from-meta", "agent": "meta-agent"}})
    assert (unpinned.project, unpinned.agent) == ("from-header", "meta-agent")


def test_metadata_tag_keys_are_removed_and_the_others_kept() -> None:
    body = {"model": "m", "metadata": {"user_id": CLAUDE_USER_ID, "run": "r1", "retry_of": "req_0", "trace": "t"}}
    found, changed = attribute(PLAIN, {}, body)
    assert (found.run, found.retry_of) == ("r1", "req_0")
    assert changed
    assert body == {"model": "m", "metadata": {"user_id": CLAUDE_USER_ID, "trace": "t"}}


@pytest.mark.parametrize("metadata", [{"user_id": "u"}, {}])
def test_metadata_without_tags_is_left_untouched(metadata: dict[str, Any]) -> None:
    body = {"model": "m", "metadata": metadata}
    before = copy.deepcopy(body)
    assert attribute(PLAIN, {}, body)[1] is False
    assert body == before  # a client's own empty metadata is not ours to drop


def test_metadata_tags_are_removed_even_when_a_header_wins() -> None:
    body = {"metadata": {"run": "meta-run"}}
    found, changed = attribute(PLAIN, {"x-spendgate-run": "header-run"}, body)
    assert found.run == "header-run" and changed and body == {}


def test_values_are_stripped() -> None:
    found, _ = attribute(PLAIN, {"x-spendgate-run": "  run-1 "}, {"metadata": {"issue": "\tISS-1 "}})
    assert (found.run, found.issue) == ("run-1", "ISS-1")


@pytest.mark.parametrize("value", [5, None, True, ["r"], {"r": 1}])
def test_a_non_string_metadata_tag_is_invalid(value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        attribute(PLAIN, {}, {"metadata": {"run": value}})
    assert info.value.param == "run" and "metadata.run must be a string" in info.value.message


@pytest.mark.parametrize("value", ["", "   ", "x" * (MAX_TAG_CHARS + 1), "line\nbreak", "nul\x00", "bell\x07"])
def test_an_empty_long_or_non_printable_tag_is_invalid(value: str) -> None:
    with pytest.raises(InvalidRequest) as header_error:
        attribute(PLAIN, {"x-spendgate-issue": value}, None)
    assert header_error.value.param == "issue" and header_error.value.status == 400
    assert "header x-spendgate-issue must be 1-128 printable characters" in header_error.value.message
    with pytest.raises(InvalidRequest) as meta_error:
        attribute(PLAIN, {}, {"metadata": {"issue": value}})
    assert meta_error.value.message.startswith("metadata.issue must be 1-128 printable characters")


def test_the_longest_tag_and_unicode_are_accepted() -> None:
    found, _ = attribute(PLAIN, {"x-spendgate-run": "r" * MAX_TAG_CHARS}, {"metadata": {"station": "qualité"}})
    assert found.run == "r" * MAX_TAG_CHARS and found.station == "qualité"


@pytest.mark.parametrize("actor", ["robot", "Human", "agents"])
def test_actor_must_be_agent_or_human(actor: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        attribute(PLAIN, {"x-spendgate-actor": actor}, None)
    assert info.value.param == "actor" and "agent, human" in info.value.message
    with pytest.raises(InvalidRequest):
        attribute(PLAIN, {}, {"metadata": {"actor": actor}})


def test_actor_defaults_to_agent_and_human_is_read_from_metadata() -> None:
    assert attribute(PLAIN, {}, None)[0].actor == "agent"
    assert attribute(PLAIN, {}, {"metadata": {"actor": "human"}})[0].actor == "human"


def test_metadata_must_be_an_object() -> None:
    with pytest.raises(InvalidRequest) as info:
        attribute(PLAIN, {}, {"metadata": "run=1"})
    assert info.value.param == "metadata"
