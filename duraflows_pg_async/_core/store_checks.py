"""The argument checks of the store methods, shared by every provider.

Each runs before any write, so a bad argument raises InvalidArgumentError on every provider
alike instead of failing in a driver or halfway through a statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async.errors import InvalidArgumentError

from .executions import EXECUTION_STATUSES
from .model import (
    HISTORY_OUTCOMES,
    INSTANCE_STATUSES,
    CommandResult,
    HistoryRecord,
    TimeoutRetry,
    WorkflowInstance,
)
from .validate import (
    INT4_MAX,
    check_json,
    coerce_uuid,
    optional_aware,
    optional_int,
    optional_str,
    require_aware,
    require_int,
    require_str,
)

__all__ = [
    "check_ensure_arguments",
    "checked_built_instance",
    "checked_built_record",
    "checked_count_arguments",
    "checked_execution_listing",
    "checked_instance",
    "checked_instance_query",
    "checked_listing_arguments",
    "checked_listing_page",
    "checked_record",
    "checked_stats_arguments",
    "checked_transition",
    "checked_update",
    "checked_workflow_names",
]


def checked_instance(
    instance: object, method: str, *, create: bool = True, js_safe_integers: bool = False
) -> WorkflowInstance:
    """Validate every field a write sends, so a bad one fails before any SQL.

    ``update`` (``create=False``) never writes metadata, workflow_name or created_at, so those
    are not checked again on the hot path. ``js_safe_integers`` refuses integers a TypeScript
    runtime would round, in the context and the metadata.
    """
    if not isinstance(instance, WorkflowInstance):
        raise InvalidArgumentError(
            f"{method}: instance must be a WorkflowInstance, got {type(instance).__name__}"
        )
    # The uuid is checked before it is formatted into the label: a hostile value (an int too long
    # to print, an object whose __str__ raises) must raise InvalidArgumentError, not its own error.
    key = coerce_uuid(instance.uuid, f"{method}: instance.uuid")
    # The fields are checked first under names without the uuid, which costs more to format than
    # the checks themselves; a failure is checked again under the names its message gives.
    try:
        _check_instance_fields(instance, method, create, js_safe_integers)
    except InvalidArgumentError:
        _check_instance_fields(instance, f"{method}: instance {key}", create, js_safe_integers)
        raise
    return instance


def _check_instance_fields(
    instance: WorkflowInstance, label: str, create: bool, js_safe_integers: bool
) -> None:
    if create:
        require_str(instance.workflow_name, f"{label}: workflow_name")
    require_str(instance.current_state, f"{label}: current_state")
    # Integer columns: a larger value cannot be bound (see INT4_MAX).
    require_int(instance.version, f"{label}: version", minimum=0, maximum=INT4_MAX)
    _check_context(instance.context, f"{label}: context", js_safe_integers)
    if create:
        if not isinstance(instance.metadata, dict):
            raise InvalidArgumentError(f"{label}: metadata must be a dict (a JSON object)")
        check_json(instance.metadata, f"{label}: metadata", js_safe_integers=js_safe_integers)
        require_aware(instance.created_at, f"{label}: created_at")
    optional_aware(instance.expires_at, f"{label}: expires_at")
    require_aware(instance.last_transition_at, f"{label}: last_transition_at")
    require_aware(instance.updated_at, f"{label}: updated_at")
    optional_int(
        instance.definition_version, f"{label}: definition_version", minimum=1, maximum=INT4_MAX
    )
    retry = instance.timeout_retry
    if retry is not None:
        if not isinstance(retry, TimeoutRetry):
            raise InvalidArgumentError(f"{label}: timeout_retry must be a TimeoutRetry or None")
        require_int(retry.attempts, f"{label}: timeout_retry.attempts", minimum=1, maximum=INT4_MAX)
        require_str(retry.last_error, f"{label}: timeout_retry.last_error", non_empty=False)
        optional_aware(retry.retry_at, f"{label}: timeout_retry.retry_at")
        optional_aware(retry.parked_at, f"{label}: timeout_retry.parked_at")


def checked_built_instance(
    instance: WorkflowInstance, method: str, *, js_safe_integers: bool
) -> tuple[UUID, int]:
    """The checks of an instance write the runtime built itself; returns (uuid, the expected
    stored version).

    The runtime sets the state (one of its checked definition's), the times (from its checked
    clock) and the version; what commands hand it is the context, so that is what is checked
    here, with the same errors as ``update``. Stores offer the lighter path to the runtime only
    (``persist_built_transition``, ``built_update_row``): a caller's own instance takes the
    full checks.
    """
    version = instance.version
    if type(version) is not int or not 1 <= version <= INT4_MAX:
        # The label, with the uuid formatted, only for the error.
        require_int(
            version, f"{method}: instance {instance.uuid}: version", minimum=1, maximum=INT4_MAX
        )
    context = instance.context
    try:
        _check_context(context, f"{method}: context", js_safe_integers)
    except InvalidArgumentError:
        _check_context(context, f"{method}: instance {instance.uuid}: context", js_safe_integers)
        raise
    return instance.uuid, version - 1


def _check_context(context: object, label: str, js_safe_integers: bool) -> None:
    if not isinstance(context, dict):
        raise InvalidArgumentError(f"{label} must be a dict (a JSON object)")
    check_json(context, label, js_safe_integers=js_safe_integers)


def checked_built_record(
    record: HistoryRecord, method: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The checks of a history record the runtime built itself; returns (results JSON, trigger
    metadata).

    Its names come from a checked definition and its trigger metadata was checked (and copied)
    when the call came in; the command results are what commands returned, so they are checked
    here, with the same errors as ``append``.
    """
    try:
        results = _command_results_json(record, method)
    except InvalidArgumentError:
        _command_results_json(
            record, f"{method}: history of instance {record.workflow_instance_uuid}"
        )
        raise
    return results, record.trigger_metadata


def checked_count_arguments(
    workflow_name: object, definition_version: object, exclude_states: object
) -> list[str]:
    """Validate ``count_instances``'s arguments; returns the excluded states as a list."""
    require_str(workflow_name, "workflow_name")
    require_int(definition_version, "definition_version", minimum=1, maximum=INT4_MAX)
    if isinstance(exclude_states, str) or not isinstance(
        exclude_states, Sequence | set | frozenset
    ):
        raise InvalidArgumentError(
            f"exclude_states must be a sequence of state names, got {echo(exclude_states)}"
        )
    return [require_str(s, "exclude_states[]") for s in exclude_states]


def checked_listing_arguments(
    workflow_name: object,
    definition_version: object,
    limit: object,
    after_uuid: object,
    states: object,
    exclude_states: object,
) -> tuple[UUID | None, list[str] | None, list[str] | None]:
    """Validate ``find_instance_uuids``'s arguments; returns (after_uuid, states, exclude_states).

    ``None`` stays ``None`` (no filter); an empty ``states`` is kept, as it matches nothing.
    """
    require_str(workflow_name, "workflow_name")
    require_int(definition_version, "definition_version", minimum=1, maximum=INT4_MAX)
    require_int(limit, "limit", minimum=1)
    after = None if after_uuid is None else coerce_uuid(after_uuid, "after_uuid")
    return (
        after,
        _optional_states(states, "states"),
        _optional_states(exclude_states, "exclude_states"),
    )


def checked_instance_query(
    workflow_name: object, state: object, definition_version: object, status: object
) -> None:
    """Validate the filters of ``list_instances`` (and of its cursor).

    ``state`` and ``definition_version`` need ``workflow_name``: both are named per workflow, and
    the indexes that serve them lead with it. ``status`` is None or one of ``INSTANCE_STATUSES``.
    """
    if workflow_name is not None:
        require_str(workflow_name, "workflow_name")
    if state is not None:
        require_str(state, "state")
    optional_int(definition_version, "definition_version", minimum=1, maximum=INT4_MAX)
    if workflow_name is None:
        for name, value in (("state", state), ("definition_version", definition_version)):
            if value is not None:
                raise InvalidArgumentError(f"{name} needs workflow_name")
    if status is not None and (not isinstance(status, str) or status not in INSTANCE_STATUSES):
        raise InvalidArgumentError(
            f"status must be None or one of {list(INSTANCE_STATUSES)}, got {echo(status)}"
        )


def checked_listing_page(limit: object, now: object, after_uuid: object) -> UUID | None:
    """Validate the page arguments of the store's ``list_instances``; returns ``after_uuid``."""
    require_int(limit, "limit", minimum=1, maximum=INT4_MAX)
    require_aware(now, "now")
    return None if after_uuid is None else coerce_uuid(after_uuid, "after_uuid")


def checked_execution_listing(
    limit: object, status: object, workflow_name: object, after_uuid: object
) -> UUID | None:
    """Validate the arguments of the execution store's ``list_executions``; returns
    ``after_uuid``."""
    require_int(limit, "limit", minimum=1, maximum=INT4_MAX)
    if status is not None and (not isinstance(status, str) or status not in EXECUTION_STATUSES):
        raise InvalidArgumentError(
            f"status must be None or one of {list(EXECUTION_STATUSES)}, got {echo(status)}"
        )
    if workflow_name is not None:
        require_str(workflow_name, "workflow_name")
    return None if after_uuid is None else coerce_uuid(after_uuid, "after_uuid")


def checked_stats_arguments(workflow_name: object, now: object) -> None:
    """Validate the arguments of the store's ``stats``."""
    if workflow_name is not None:
        require_str(workflow_name, "workflow_name")
    require_aware(now, "now")


def _optional_states(states: object, name: str) -> list[str] | None:
    if states is None:
        return None
    # A str is a sequence too, of one-letter "states": refused rather than split.
    if isinstance(states, str) or not isinstance(states, Sequence | set | frozenset):
        raise InvalidArgumentError(
            f"{name} must be a sequence of state names or None, got {echo(states)}"
        )
    return [require_str(s, f"{name}[]") for s in states]


def checked_workflow_names(workflow_names: object) -> list[str]:
    """Validate a ``workflow_names`` argument; returns the distinct names as a list."""
    if isinstance(workflow_names, str) or not isinstance(
        workflow_names, Sequence | set | frozenset
    ):
        raise InvalidArgumentError(
            "workflow_names must be a sequence of workflow names, got "
            f"{type(workflow_names).__name__}"
        )
    return list(dict.fromkeys(require_str(n, "workflow_names[]") for n in workflow_names))


def checked_update(
    instance: object, method: str, *, js_safe_integers: bool
) -> tuple[WorkflowInstance, UUID, int]:
    """Validate an instance write of ``update``; returns (instance, uuid, the expected stored
    version: ``instance.version - 1``)."""
    inst = checked_instance(instance, method, create=False, js_safe_integers=js_safe_integers)
    require_int(
        inst.version, f"{method}: instance {inst.uuid}: version", minimum=1, maximum=INT4_MAX
    )
    return inst, coerce_uuid(inst.uuid, "instance.uuid"), inst.version - 1


def checked_transition(
    instance: object, record: object, *, js_safe_integers: bool
) -> tuple[WorkflowInstance, UUID, int, list[dict[str, Any]], dict[str, Any]]:
    """Validate ``persist_transition``'s instance write and history record before any write;
    returns (instance, uuid, expected version, results JSON, trigger metadata)."""
    method = "persist_transition"
    inst, key, expected = checked_update(instance, method, js_safe_integers=js_safe_integers)
    record_uuid, results, trigger_metadata = checked_record(record, method)
    if record_uuid != key:
        raise InvalidArgumentError(
            f"{method}: the record is of instance {record_uuid}, not of instance {key}"
        )
    return inst, key, expected, results, trigger_metadata


def checked_record(
    record: object, method: str = "append"
) -> tuple[UUID, list[dict[str, Any]], dict[str, Any]]:
    """Validate a history record before any write; returns (instance uuid, results JSON,
    trigger metadata)."""
    if not isinstance(record, HistoryRecord):
        raise InvalidArgumentError(
            f"{method}: record must be a HistoryRecord, got {type(record).__name__}"
        )
    instance_uuid = coerce_uuid(record.workflow_instance_uuid, "record.workflow_instance_uuid")
    # As in checked_instance: names without the uuid first, a failure checked again with it.
    try:
        results, trigger_metadata = _check_record_fields(record, method)
    except InvalidArgumentError:
        _check_record_fields(record, f"{method}: history of instance {instance_uuid}")
        raise
    return instance_uuid, results, trigger_metadata


def _check_record_fields(
    record: HistoryRecord, label: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    optional_str(record.from_state, f"{label}: from_state")
    require_str(record.event_name, f"{label}: event_name")
    require_str(record.to_state, f"{label}: to_state")
    # isinstance before the set lookup, and echo in the message: an unhashable or hostile
    # outcome must raise InvalidArgumentError like any other bad value.
    outcome: object = record.outcome
    if not isinstance(outcome, str) or outcome not in HISTORY_OUTCOMES:
        raise InvalidArgumentError(
            f"{label}: outcome must be one of {sorted(HISTORY_OUTCOMES)}, got {echo(outcome)}"
        )
    optional_str(record.error_message, f"{label}: error_message")
    optional_str(record.rejected_by, f"{label}: rejected_by")
    results = _command_results_json(record, label)
    trigger_metadata = record.trigger_metadata
    if trigger_metadata is None:
        trigger_metadata = {}
    if not isinstance(trigger_metadata, dict):
        raise InvalidArgumentError(f"{label}: trigger_metadata must be a dict")
    check_json(trigger_metadata, f"{label}: trigger_metadata")
    optional_int(
        record.definition_version, f"{label}: definition_version", minimum=1, maximum=INT4_MAX
    )
    return results, trigger_metadata


def _command_results_json(record: HistoryRecord, label: str) -> list[dict[str, Any]]:
    results = record.command_results
    if not isinstance(results, list | tuple):
        raise InvalidArgumentError(f"{label}: command_results must be a list of CommandResult")
    out = []
    for index, result in enumerate(results):
        if not isinstance(result, CommandResult):
            raise InvalidArgumentError(
                f"{label}: command_results[{index}] must be a CommandResult, "
                f"got {type(result).__name__}"
            )
        as_json = result.to_json()
        # Each result on its own: a flat one (the usual shape) takes check_json's shortcut.
        check_json(as_json, f"{label}: command_results[{index}]")
        out.append(as_json)
    return out


def check_ensure_arguments(
    workflow_name: object, version: object, content_hash: object, definition_json: object
) -> None:
    """Validate a definition store's ``ensure`` arguments before any write."""
    require_str(workflow_name, "workflow_name")
    # workflow_definitions.version is an integer column: a larger value cannot be bound.
    require_int(version, "version", minimum=1, maximum=INT4_MAX)
    require_str(content_hash, "content_hash")
    if not isinstance(definition_json, dict):
        raise InvalidArgumentError("definition_json must be a dict (a JSON object)")
    check_json(definition_json, "definition_json")
