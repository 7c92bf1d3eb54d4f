"""Audit form of settings: secret fingerprints, the configuration hash and readable differences."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elspeth_core.config import (
    ElspethSettings,
    config_hash,
    diff_settings,
    fingerprint_key,
    is_secret_name,
    load_settings_from_dict,
    resolve_for_audit,
)
from elspeth_core.config.resolved import DEFAULT_FINGERPRINT_KEY

KEY = b"test-fingerprint-key"


def expected_fingerprint(value: str, key: bytes = KEY) -> str:
    return "hmac-sha256:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def base_settings() -> dict[str, Any]:
    return {
        "datasource": {"plugin": "csv", "options": {"path": "in.csv"}},
        "row_plugins": [{"plugin": "field_mapper", "options": {"mapping": {"a": "x"}}}],
        "sinks": {"output": {"plugin": "csv", "options": {"path": "out.csv"}}},
        "output_sink": "output",
    }


def resolved(data: dict[str, Any], key: bytes = KEY) -> dict[str, Any]:
    return resolve_for_audit(load_settings_from_dict(data, environ={}).settings, key)


# --- secrets ------------------------------------------------------------------------------------

SECRETS = {
    "api_key": "sk-live-111",
    "Token": "tok-222",
    "PASSWORD": "pw-333",
    "secret": "sec-444",
    "credential": "cred-555",
    "openai_api_key": "sk-666",
    "refresh_token": "rt-777",
    "db_password": "dbpw-888",
    "client_secret": "cs-999",
    "azure_credential": "az-000",
}


def test_secret_names() -> None:
    for name in SECRETS:
        assert is_secret_name(name), name
    for name in ("keys", "monkey", "token_count", "passwords_allowed", "path", "secretary"):
        assert not is_secret_name(name), name


def test_secret_options_become_fingerprints_at_any_depth() -> None:
    data = base_settings()
    data["datasource"]["options"].update(SECRETS)
    data["row_plugins"][0]["options"]["auth"] = {"headers": [{"x_api_key": "nested-secret-1"}]}
    data["sinks"]["output"]["options"]["password"] = 12345
    data["sinks"]["output"]["options"]["token"] = None
    result = resolved(data)
    options = result["datasource"]["options"]
    for name, value in SECRETS.items():
        assert options[name] == {"fingerprint": expected_fingerprint(value)}
    assert options["path"] == "in.csv"
    nested = result["row_plugins"][0]["options"]["auth"]["headers"][0]["x_api_key"]
    assert nested == {"fingerprint": expected_fingerprint("nested-secret-1")}
    assert result["sinks"]["output"]["options"]["password"] == {
        "fingerprint": expected_fingerprint("12345")
    }
    assert result["sinks"]["output"]["options"]["token"] is None
    dumped = json.dumps(result)
    for value in [*SECRETS.values(), "nested-secret-1", "12345"]:
        assert value not in dumped


def test_url_passwords_are_fingerprinted_everywhere() -> None:
    data = base_settings()
    data["landscape"] = {
        "backend": "postgresql",
        "url": "postgresql+psycopg://elspeth:s3cr%40t@db:5432/audit",
    }
    data["sinks"]["db"] = {
        "plugin": "database",
        "options": {"url": "postgresql://loader:p@ss@warehouse/dw?sslmode=require", "table": "t"},
    }
    result = resolved(data)
    fingerprint = expected_fingerprint("s3cr%40t")
    assert result["landscape"]["url"] == f"postgresql+psycopg://elspeth:{fingerprint}@db:5432/audit"
    assert result["sinks"]["db"]["options"]["url"] == (
        f"postgresql://loader:{expected_fingerprint('p@ss')}@warehouse/dw?sslmode=require"
    )
    dumped = json.dumps(result)
    assert "s3cr%40t" not in dumped and "p@ss" not in dumped


def test_urls_without_password_are_unchanged() -> None:
    data = base_settings()
    data["landscape"] = {"url": "postgresql://elspeth@db/audit"}
    data["sinks"]["output"]["options"]["note"] = "see https://example.com/a:b@c"
    result = resolved(data)
    assert result["landscape"]["url"] == "postgresql://elspeth@db/audit"
    assert result["sinks"]["output"]["options"]["note"] == "see https://example.com/a:b@c"


def test_resolution_does_not_change_the_settings() -> None:
    data = base_settings()
    data["datasource"]["options"]["api_key"] = "sk-1"
    settings = load_settings_from_dict(data, environ={}).settings
    resolve_for_audit(settings, KEY)
    assert settings.datasource.options["api_key"] == "sk-1"


def test_fingerprint_depends_on_the_key() -> None:
    data = base_settings()
    data["datasource"]["options"]["api_key"] = "sk-1"
    one = resolved(data, b"one")["datasource"]["options"]["api_key"]
    two = resolved(data, b"two")["datasource"]["options"]["api_key"]
    assert one != two


def test_fingerprint_key_from_environment_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELSPETH_FINGERPRINT_KEY", "operator-key")
    assert fingerprint_key() == b"operator-key"
    monkeypatch.delenv("ELSPETH_FINGERPRINT_KEY")
    assert fingerprint_key() == DEFAULT_FINGERPRINT_KEY
    assert fingerprint_key({"ELSPETH_FINGERPRINT_KEY": "k"}) == b"k"


def test_resolved_is_plain_json() -> None:
    result = resolved(base_settings())
    assert json.loads(json.dumps(result)) == result
    assert result["checkpoint"] == {
        "enabled": True,
        "frequency": "every_n",
        "checkpoint_interval": 100,
    }


# --- configuration hash -------------------------------------------------------------------------


def test_hash_is_stable_under_key_order() -> None:
    data = base_settings()
    data["row_plugins"][0]["options"]["mapping"] = {"a": "x", "b": "y", "c": "z"}
    reordered = {key: data[key] for key in reversed(list(data))}
    reordered["row_plugins"] = [
        {"options": {"mapping": {"c": "z", "b": "y", "a": "x"}}, "plugin": "field_mapper"}
    ]
    assert config_hash(resolved(data)) == config_hash(resolved(reordered))


def test_hash_survives_a_json_round_trip() -> None:
    result = resolved(base_settings())
    assert config_hash(json.loads(json.dumps(result))) == config_hash(result)


def test_hash_changes_with_a_mapping_change() -> None:
    changed = base_settings()
    changed["row_plugins"][0]["options"]["mapping"]["a"] = "y"
    assert config_hash(resolved(changed)) != config_hash(resolved(base_settings()))


@pytest.mark.parametrize(
    ("section", "value"),
    [
        ("checkpoint", {"checkpoint_interval": 5000, "frequency": "every_row"}),
        (
            "landscape",
            {"url": "postgresql://u:pw@elsewhere/db", "backend": "postgresql", "enabled": False},
        ),
        ("concurrency", {"max_workers": 32}),
        ("retry", {"max_attempts": 9}),
        ("rate_limit", {"enabled": True}),
        ("payload_store", {"base_path": "/elsewhere"}),
    ],
)
def test_hash_ignores_operational_settings(section: str, value: dict[str, Any]) -> None:
    changed = base_settings()
    changed[section] = value
    assert config_hash(resolved(changed)) == config_hash(resolved(base_settings()))
    assert diff_settings(resolved(base_settings()), resolved(changed)) == []


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(run_mode="verify"),
        lambda d: d.update(landscape={"export": {"enabled": True, "sink": "output"}}),
        lambda d: d["datasource"]["options"].update(api_key="another"),
        lambda d: d["sinks"]["output"].update(plugin="json"),
    ],
)
def test_hash_changes_with_what_decides_outputs(change: Any) -> None:
    changed = base_settings()
    change(changed)
    assert config_hash(resolved(changed)) != config_hash(resolved(base_settings()))


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=10), st.booleans(), st.none()),
        max_size=8,
    )
)
def test_hash_ignores_the_order_of_any_options(options: dict[str, Any]) -> None:
    data = base_settings()
    data["datasource"]["options"] = options
    flipped = copy.deepcopy(data)
    flipped["datasource"]["options"] = dict(reversed(list(options.items())))
    assert config_hash(resolved(data)) == config_hash(resolved(flipped))


# --- differences --------------------------------------------------------------------------------


def test_diff_names_each_difference() -> None:
    recorded = base_settings()
    given_settings = base_settings()
    given_settings["row_plugins"][0]["options"]["mapping"]["a"] = "y"
    given_settings["sinks"]["extra"] = {"plugin": "json"}
    given_settings["checkpoint"] = {"checkpoint_interval": 1}
    recorded["row_plugins"].append({"plugin": "passthrough"})
    assert diff_settings(resolved(recorded), resolved(given_settings)) == [
        "row_plugins[0].options.mapping.a: 'x' != 'y'",
        "row_plugins[1]: only in the recorded settings",
        "sinks.extra: only in the given settings",
    ]


def test_diff_of_secrets_shows_fingerprints_only() -> None:
    recorded = base_settings()
    recorded["datasource"]["options"]["api_key"] = "sk-old"
    given_settings = base_settings()
    given_settings["datasource"]["options"]["api_key"] = "sk-new"
    differences = diff_settings(resolved(recorded), resolved(given_settings))
    assert differences == [
        f"datasource.options.api_key.fingerprint: {expected_fingerprint('sk-old')!r} "
        f"!= {expected_fingerprint('sk-new')!r}"
    ]


def test_diff_treats_equal_numbers_alike_but_not_booleans() -> None:
    assert diff_settings({"a": 1}, {"a": 1.0}) == []
    assert diff_settings({"a": 1}, {"a": True}) == ["a: 1 != True"]
    assert diff_settings({"a": [1]}, {"a": {"x": 1}}) == ["a: [1] != {'x': 1}"]


def test_diff_is_empty_for_equal_settings() -> None:
    settings = ElspethSettings.model_validate(base_settings())
    assert diff_settings(resolve_for_audit(settings, KEY), resolve_for_audit(settings, KEY)) == []
