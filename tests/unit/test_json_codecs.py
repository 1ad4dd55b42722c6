"""The codec functions: integers beyond 64 bits stay exact with orjson, and a number no Python
type holds is refused with its key path instead of coming back as inf."""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import orjson
import pytest

from duraflows_pg_async._pg.codecs import _binary_codecs, _check_functions
from duraflows_pg_async._pg.json_numbers import is_exact_loads
from duraflows_pg_async.errors import DatabaseError, InvalidArgumentError

ORJSON_DUMPS, ORJSON_LOADS = _check_functions(orjson.dumps, orjson.loads)
STDLIB_DUMPS, STDLIB_LOADS = _check_functions(json.dumps, json.loads)


def _exact(text: str) -> Any:
    return json.loads(text)  # the standard library keeps integer literals exact


@pytest.mark.parametrize(
    "text",
    [
        "[9223372036854775807, 9223372036854775808, 18446744073709551615]",
        "[18446744073709551616, -9223372036854775808, -9223372036854775809]",
        '{"n": 123456789012345678901234567890}',
        "-" + "9" * 40,
        "[" + "1" + "0" * 400 + "]",  # orjson refuses it as beyond a float
        '{"s": "id 123456789012345678901234567890", "n": 1}',  # digits inside a string
        "0.12345678901234567890123",
        "[12345678901234567890.5, -12345678901234567890.5]",
        '[1e22, 1.5e-7, -0.0, 5e-324, {"a": [100000000000000000000000]}]',
    ],
)
@pytest.mark.parametrize("loads", [ORJSON_LOADS, STDLIB_LOADS], ids=["orjson", "stdlib"])
def test_loads_reads_what_the_standard_library_reads_exactly(loads: Any, text: str) -> None:
    assert repr(loads(text)) == repr(_exact(text))
    assert repr(loads(text.encode())) == repr(_exact(text))


@pytest.mark.parametrize("loads", [ORJSON_LOADS, STDLIB_LOADS], ids=["orjson", "stdlib"])
def test_loads_refuses_a_number_beyond_a_float_naming_its_key_path(loads: Any) -> None:
    text = '{"a": {"b": [1, ' + "1" + "0" * 400 + '.5]}, "c": 1e400}'
    with pytest.raises(DatabaseError, match=r"value\['a'\]\['b'\]\[1\]: the number 1000"):
        loads(text)
    with pytest.raises(DatabaseError, match=r"value\[0\]: the number -1e400 .*beyond the range"):
        loads("[-1e400]")


@pytest.mark.parametrize("loads", [ORJSON_LOADS, STDLIB_LOADS], ids=["orjson", "stdlib"])
def test_loads_refuses_an_integer_beyond_the_int_to_str_limit(loads: Any) -> None:
    with pytest.raises(DatabaseError, match=r"value\['n'\]: .*\(5000 digits\) .*int-to-str limit"):
        loads('{"n": ' + "7" * 5000 + "}")


@pytest.mark.parametrize("loads", [ORJSON_LOADS, STDLIB_LOADS], ids=["orjson", "stdlib"])
def test_loads_still_reports_malformed_json(loads: Any) -> None:
    with pytest.raises(json.JSONDecodeError):
        loads('{"n": 12345678901234567890123')


@pytest.mark.parametrize(
    "value",
    [
        {"n": 2**64, "m": -(2**63) - 1, "list": [10**30, -(10**400)]},
        {"f": type("Seconds", (float,), {})(1.5)},  # orjson refuses float subclasses
        [2**64 - 1, -(2**63), 1e22, -0.0],
    ],
)
def test_orjson_dumps_writes_exactly_what_orjson_refuses(value: Any) -> None:
    out = ORJSON_DUMPS(value)
    text = out.decode() if isinstance(out, bytes) else out
    assert repr(json.loads(text)) == repr(json.loads(json.dumps(value)))


def test_orjson_dumps_names_the_key_path_of_a_value_that_is_not_json() -> None:
    with pytest.raises(InvalidArgumentError, match=r"value\['a'\]\[1\]: set value"):
        ORJSON_DUMPS({"a": [2**70, {1, 2}]})


def test_orjson_functions_are_recognised_also_as_partials() -> None:
    dumps, loads = _check_functions(
        functools.partial(orjson.dumps, option=orjson.OPT_SORT_KEYS), orjson.loads
    )
    assert dumps({"b": 2**64, "a": 1}) == '{"b":18446744073709551616,"a":1}'
    assert dumps({"b": 1, "a": 1}) == b'{"a":1,"b":1}'
    assert loads("[18446744073709551616]") == [2**64]


def test_the_standard_library_loads_passed_explicitly_is_made_exact() -> None:
    _, loads = _check_functions(None, json.loads)
    with pytest.raises(DatabaseError, match="beyond the range of a float"):
        loads("[1e400]")


def test_other_functions_are_used_as_given() -> None:
    def dumps(value: Any) -> str:
        return "mine"

    def loads(text: str | bytes) -> Any:
        return "mine"

    assert _check_functions(dumps, loads) == (dumps, loads)


def test_the_default_is_orjson_when_it_is_installed_and_reads_bytes() -> None:
    dumps, loads = _check_functions(None, None)
    assert dumps({"n": 2**64, "s": "é"}) == '{"n":18446744073709551616,"s":"é"}'
    assert dumps({"n": 1}) == b'{"n":1}'
    assert is_exact_loads(loads)
    assert loads(b'{"n": 18446744073709551616}') == {"n": 2**64}


def test_the_standard_library_dumps_is_the_module_encoder_with_the_same_output() -> None:
    dumps, _ = _check_functions(json.dumps, json.loads)
    value = {"a": [1, 2.5, None, True], "é": "\u2028"}
    assert dumps(value) == json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    with pytest.raises(ValueError, match="Out of range float values"):
        dumps([math.nan])


def test_the_binary_jsonb_codec_adds_and_checks_the_version_byte() -> None:
    encode, decode = _binary_codecs(*_check_functions(None, None))["jsonb"]
    assert encode({"a": 1}) == b'\x01{"a":1}'
    assert decode(b'\x01{"a": [18446744073709551616]}') == {"a": [2**64]}
    with pytest.raises(DatabaseError, match="unknown binary version"):
        decode(b'\x02{"a": 1}')
    encode_text, _ = _binary_codecs(*_check_functions(json.dumps, json.loads))["jsonb"]
    assert encode_text({"s": "é"}) == b'\x01{"s":"\xc3\xa9"}'
