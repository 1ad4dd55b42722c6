"""The model's JSON form: upstream's camelCase objects, UTC ``Z`` timestamps, read back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duraflows_pg_async import CommandResult, HistoryRecord, TimeoutRetry, WorkflowInstance
from duraflows_pg_async.errors import InvalidArgumentError
from duraflows_pg_async.stores import StoredWorkflowDefinition

INSTANCE_UUID = UUID("0F5C2D8E-4D0A-4B7E-9A51-2B0C7E1F9D10")
HISTORY_UUID = UUID("9b2e7c41-0d3f-4a8e-b1c6-5f7a9e2d4c83")
T1 = datetime(2026, 5, 1, 10, 1, 2, 118123, tzinfo=UTC)
T2 = datetime(2026, 5, 1, 10, 1, 40, 950000, tzinfo=UTC)
T3 = datetime(2026, 5, 1, 10, 2, 13, 512001, tzinfo=UTC)
T4 = datetime(2026, 5, 2, 0, 0, tzinfo=UTC)


def full_instance() -> WorkflowInstance:
    return WorkflowInstance(
        uuid=INSTANCE_UUID,
        workflow_name="order",
        current_state="awaiting_payment",
        version=3,
        context={"items": ["book", {"qty": 2}], "total": 12.5},
        metadata={"tenant": "acme"},
        expires_at=T4,
        last_transition_at=T2,
        created_at=T1,
        updated_at=T3,
        definition_version=2,
        timeout_retry=TimeoutRetry(attempts=2, last_error="mail down", retry_at=T3),
        claimed_until=T4 + timedelta(seconds=20),
    )


def minimal_instance() -> WorkflowInstance:
    return WorkflowInstance(
        uuid=INSTANCE_UUID,
        workflow_name="order",
        current_state="cart",
        version=0,
        context={},
        metadata={},
        expires_at=None,
        last_transition_at=T1,
        created_at=T1,
        updated_at=T1,
    )


def full_record() -> HistoryRecord:
    return HistoryRecord(
        workflow_instance_uuid=INSTANCE_UUID,
        from_state="awaiting_payment",
        event_name="pay",
        to_state="payment_failed",
        outcome="failure",
        command_results=[
            CommandResult(ok=True),
            CommandResult(ok=False, code="CARD_DECLINED", message="declined", metadata={"a": 1}),
        ],
        error_message="card declined by issuer",
        rejected_by="has_items",
        trigger_metadata={"actorUuid": "u-7"},
        definition_version=2,
        uuid=HISTORY_UUID,
        created_at=T3,
    )


def minimal_record() -> HistoryRecord:
    return HistoryRecord(
        workflow_instance_uuid=INSTANCE_UUID,
        from_state=None,
        event_name="checkout",
        to_state="awaiting_payment",
        outcome="success",
    )


# --- to_json ------------------------------------------------------------------------------------


def test_full_instance_json() -> None:
    assert full_instance().to_json() == {
        "uuid": "0f5c2d8e-4d0a-4b7e-9a51-2b0c7e1f9d10",
        "workflowName": "order",
        "currentState": "awaiting_payment",
        "version": 3,
        "definitionVersion": 2,
        "expiresAt": "2026-05-02T00:00:00.000000Z",
        "timeoutRetry": {
            "attempts": 2,
            "lastError": "mail down",
            "retryAt": "2026-05-01T10:02:13.512001Z",
            "parkedAt": None,
        },
        "lastTransitionAt": "2026-05-01T10:01:40.950000Z",
        "context": {"items": ["book", {"qty": 2}], "total": 12.5},
        "metadata": {"tenant": "acme"},
        "createdAt": "2026-05-01T10:01:02.118123Z",
        "updatedAt": "2026-05-01T10:02:13.512001Z",
        "claimedUntil": "2026-05-02T00:00:20.000000Z",
    }


def test_minimal_instance_json_has_every_key_unset_ones_null() -> None:
    assert minimal_instance().to_json() == {
        "uuid": "0f5c2d8e-4d0a-4b7e-9a51-2b0c7e1f9d10",
        "workflowName": "order",
        "currentState": "cart",
        "version": 0,
        "definitionVersion": None,
        "expiresAt": None,
        "timeoutRetry": None,
        "lastTransitionAt": "2026-05-01T10:01:02.118123Z",
        "context": {},
        "metadata": {},
        "createdAt": "2026-05-01T10:01:02.118123Z",
        "updatedAt": "2026-05-01T10:01:02.118123Z",
        "claimedUntil": None,
    }


def test_parked_retry_json() -> None:
    retry = TimeoutRetry(attempts=5, last_error="", parked_at=T2)
    assert retry.to_json() == {
        "attempts": 5,
        "lastError": "",
        "retryAt": None,
        "parkedAt": "2026-05-01T10:01:40.950000Z",
    }


def test_full_record_json_uses_upstreams_property_names() -> None:
    assert full_record().to_json() == {
        "workflowInstanceUuid": "0f5c2d8e-4d0a-4b7e-9a51-2b0c7e1f9d10",
        "fromState": "awaiting_payment",
        "eventName": "pay",
        "toState": "payment_failed",
        "outcome": "failure",
        "errorMessage": "card declined by issuer",
        "rejectedBy": "has_items",
        "commandResultsJson": [
            {"ok": True},
            {"ok": False, "code": "CARD_DECLINED", "message": "declined", "metadata": {"a": 1}},
        ],
        "triggerMetadata": {"actorUuid": "u-7"},
        "definitionVersion": 2,
        "createdAt": "2026-05-01T10:02:13.512001Z",
        "uuid": "9b2e7c41-0d3f-4a8e-b1c6-5f7a9e2d4c83",
    }


def test_minimal_record_json_leaves_out_unset_optional_fields() -> None:
    assert minimal_record().to_json() == {
        "workflowInstanceUuid": "0f5c2d8e-4d0a-4b7e-9a51-2b0c7e1f9d10",
        "fromState": None,
        "eventName": "checkout",
        "toState": "awaiting_payment",
        "outcome": "success",
        "commandResultsJson": [],
        "triggerMetadata": {},
    }


def test_stored_definition_json() -> None:
    stored = StoredWorkflowDefinition(
        workflow_name="order",
        version=2,
        content_hash="sha256:" + "0" * 64,
        definition_json={"name": "order", "initialState": "cart", "states": {"cart": {}}},
        registered_at=T1,
    )
    data = stored.to_json()
    assert data == {
        "workflowName": "order",
        "version": 2,
        "contentHash": "sha256:" + "0" * 64,
        "definitionJson": {"name": "order", "initialState": "cart", "states": {"cart": {}}},
        "registeredAt": "2026-05-01T10:01:02.118123Z",
    }
    data["definitionJson"]["states"]["cart"]["x"] = 1
    assert stored.definition_json["states"]["cart"] == {}


@pytest.mark.parametrize(
    "value",
    [
        full_instance(),
        minimal_instance(),
        full_record(),
        minimal_record(),
        TimeoutRetry(attempts=1, last_error="x", retry_at=T1),
    ],
    ids=["instance", "minimal instance", "record", "minimal record", "retry"],
)
def test_json_dumps_needs_no_encoder(value: Any) -> None:
    text = json.dumps(value.to_json())
    assert json.loads(text) == value.to_json()


def test_context_and_metadata_are_copies() -> None:
    instance = full_instance()
    data = instance.to_json()
    data["context"]["items"][1]["qty"] = 99
    data["metadata"]["tenant"] = "other"
    assert instance.context["items"][1] == {"qty": 2}
    assert instance.metadata == {"tenant": "acme"}
    record = full_record()
    record.to_json()["triggerMetadata"]["actorUuid"] = "x"
    assert record.trigger_metadata == {"actorUuid": "u-7"}


def test_microseconds_are_kept_and_always_six_digits() -> None:
    instance = minimal_instance()
    instance.updated_at = datetime(2026, 5, 1, 10, 0, 0, 1, tzinfo=UTC)
    instance.created_at = datetime(2026, 5, 1, 10, 0, 0, tzinfo=UTC)
    data = instance.to_json()
    assert data["updatedAt"] == "2026-05-01T10:00:00.000001Z"
    assert data["createdAt"] == "2026-05-01T10:00:00.000000Z"
    assert WorkflowInstance.from_json(data).updated_at.microsecond == 1


def test_non_utc_and_naive_datetimes_are_rendered_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    instance = minimal_instance()
    instance.created_at = datetime(2026, 1, 1, 1, 30, 0, 5, tzinfo=plus_two)
    instance.updated_at = datetime(2026, 1, 1, 12, 0)  # naive: taken as UTC
    instance.expires_at = datetime(2026, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=-5)))
    data = instance.to_json()
    assert data["createdAt"] == "2025-12-31T23:30:00.000005Z"
    assert data["updatedAt"] == "2026-01-01T12:00:00.000000Z"
    assert data["expiresAt"] == "2026-01-01T05:00:00.000000Z"


@given(
    moment=st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
    ),
    offset_minutes=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_any_aware_timestamp_round_trips_to_the_microsecond(
    moment: datetime, offset_minutes: int
) -> None:
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    retry = TimeoutRetry(attempts=1, last_error="", retry_at=local)
    data = retry.to_json()
    assert data["retryAt"] is not None
    assert data["retryAt"].endswith("Z")
    assert len(data["retryAt"]) == len("2026-05-01T10:01:02.118123Z")
    back = TimeoutRetry.from_json(data).retry_at
    assert back == moment
    assert back is not None
    assert back.tzinfo is UTC


def test_a_datetime_that_overflows_in_utc_is_named() -> None:
    instance = minimal_instance()
    instance.updated_at = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(InvalidArgumentError, match=r"WorkflowInstance\.updated_at"):
        instance.to_json()


# --- from_json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [full_instance(), minimal_instance()],
    ids=["full", "minimal"],
)
def test_instance_round_trips(value: WorkflowInstance) -> None:
    back = WorkflowInstance.from_json(json.loads(json.dumps(value.to_json())))
    assert back == value
    assert back.created_at.tzinfo is UTC


@pytest.mark.parametrize("value", [full_record(), minimal_record()], ids=["full", "minimal"])
def test_record_round_trips(value: HistoryRecord) -> None:
    assert HistoryRecord.from_json(json.loads(json.dumps(value.to_json()))) == value


def test_retry_round_trips() -> None:
    retry = TimeoutRetry(attempts=5, last_error="down", parked_at=T2)
    assert TimeoutRetry.from_json(retry.to_json()) == retry


def test_from_json_reads_javascript_dates_and_offsets() -> None:
    data = minimal_instance().to_json()
    data["createdAt"] = "2026-05-01T10:01:02.118Z"  # Date.prototype.toISOString()
    data["updatedAt"] = "2026-05-01T12:01:02.118123+02:00"
    back = WorkflowInstance.from_json(data)
    assert back.created_at == datetime(2026, 5, 1, 10, 1, 2, 118000, tzinfo=UTC)
    assert back.updated_at == T1
    assert back.updated_at.tzinfo is UTC


def test_from_json_copies_and_ignores_unknown_keys() -> None:
    data = full_instance().to_json()
    data["somethingNew"] = 1
    back = WorkflowInstance.from_json(data)
    data["context"]["items"].append("pen")
    assert back.context["items"] == ["book", {"qty": 2}]


def test_missing_nullable_keys_read_as_none() -> None:
    data = minimal_instance().to_json()
    for key in ("definitionVersion", "expiresAt", "timeoutRetry", "claimedUntil"):
        del data[key]
    assert WorkflowInstance.from_json(data) == minimal_instance()
    record = minimal_record().to_json()
    del record["triggerMetadata"]
    del record["fromState"]
    assert HistoryRecord.from_json(record) == minimal_record()


_MISSING = object()


def _instance_with(**changes: Any) -> dict[str, Any]:
    data = full_instance().to_json()
    for key, value in changes.items():
        if value is _MISSING:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "field", "why"),
    [
        (_instance_with(uuid="not-a-uuid"), "uuid", "must be a UUID"),
        (_instance_with(uuid=_MISSING), "uuid", "is missing"),
        (_instance_with(workflowName=""), "workflowName", "non-empty string"),
        (_instance_with(currentState=None), "currentState", "non-empty string"),
        (_instance_with(version="3"), "version", "integer"),
        (_instance_with(version=True), "version", "integer"),
        (_instance_with(version=-1), "version", "integer >= 0"),
        (_instance_with(definitionVersion=0), "definitionVersion", "positive integer"),
        (_instance_with(expiresAt="tomorrow"), "expiresAt", "ISO-8601 timestamp"),
        (_instance_with(expiresAt=1714557662118), "expiresAt", "timestamp string"),
        (_instance_with(createdAt="2026-05-01T10:01:02"), "createdAt", "time zone"),
        (_instance_with(updatedAt=_MISSING), "updatedAt", "is missing"),
        (_instance_with(lastTransitionAt=None), "lastTransitionAt", "timestamp string"),
        (_instance_with(claimedUntil="soon"), "claimedUntil", "ISO-8601"),
        (_instance_with(context=[1]), "context", "JSON object"),
        (_instance_with(metadata=None), "metadata", "JSON object"),
        (_instance_with(timeoutRetry="x"), "timeoutRetry", "JSON object"),
        (
            _instance_with(timeoutRetry={"attempts": 0, "lastError": ""}),
            "timeoutRetry.attempts",
            "positive integer",
        ),
        (
            _instance_with(timeoutRetry={"attempts": 1}),
            "timeoutRetry.lastError",
            "is missing",
        ),
        (
            _instance_with(timeoutRetry={"attempts": 1, "lastError": "", "retryAt": "x"}),
            "timeoutRetry.retryAt",
            "ISO-8601",
        ),
    ],
)
def test_bad_instance_json_names_the_field(data: Any, field: str, why: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        WorkflowInstance.from_json(data)
    assert f"WorkflowInstance.from_json: {field} " in str(caught.value)
    assert why in str(caught.value)


@pytest.mark.parametrize("data", [None, [], "{}", 5])
def test_from_json_of_a_non_object_is_refused(data: Any) -> None:
    for cls in (WorkflowInstance, HistoryRecord, TimeoutRetry):
        with pytest.raises(InvalidArgumentError, match=f"{cls.__name__}.from_json must be"):
            cls.from_json(data)


def _record_with(**changes: Any) -> dict[str, Any]:
    data = full_record().to_json()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "field", "why"),
    [
        (_record_with(workflowInstanceUuid=7), "workflowInstanceUuid", "UUID"),
        (_record_with(fromState=3), "fromState", "string"),
        (_record_with(eventName=""), "eventName", "non-empty string"),
        (_record_with(toState=None), "toState", "non-empty string"),
        (_record_with(outcome="maybe"), "outcome", "must be one of"),
        (_record_with(outcome=["success"]), "outcome", "must be one of"),
        (_record_with(commandResultsJson=None), "commandResultsJson", "array"),
        (_record_with(commandResultsJson=[{"ok": True}, "x"]), "commandResultsJson[1]", "object"),
        (_record_with(commandResultsJson=[{"code": "E"}]), "commandResultsJson[0]", "boolean ok"),
        (_record_with(errorMessage=1), "errorMessage", "string"),
        (_record_with(rejectedBy=False), "rejectedBy", "string"),
        (_record_with(triggerMetadata="x"), "triggerMetadata", "JSON object"),
        (_record_with(definitionVersion="2"), "definitionVersion", "positive integer"),
        (_record_with(createdAt="2026-13-01T00:00:00Z"), "createdAt", "ISO-8601"),
        (_record_with(uuid="x"), "uuid", "UUID"),
    ],
)
def test_bad_record_json_names_the_field(data: Any, field: str, why: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        HistoryRecord.from_json(data)
    assert f"HistoryRecord.from_json: {field} " in str(caught.value)
    assert why in str(caught.value)


def test_bad_retry_json_names_the_field() -> None:
    with pytest.raises(InvalidArgumentError, match=r"TimeoutRetry\.from_json: parkedAt must"):
        TimeoutRetry.from_json({"attempts": 1, "lastError": "", "parkedAt": 5})


def test_a_huge_bad_value_is_not_repeated_whole() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        WorkflowInstance.from_json(_instance_with(expiresAt="x" * 1_000_000))
    assert len(str(caught.value)) < 500
