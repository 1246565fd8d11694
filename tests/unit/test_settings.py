"""ServerSettings: the one table of serve's options, and the APPLIANCE_* variables that carry it to the workers."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from api.settings import ServerSettings, env_name, option_of


def test_settings_from_env_round_trip():
    settings = ServerSettings(
        engines=Path("/srv/engines"), host="0.0.0.0", port=9000, workers=3, drain_timeout_s=2.5, slots=4, max_tokens=77,
        api_keys=("sk-one-key-of-enough-length", "sk-two-key-of-enough-length"), api_key_files=("/etc/keys",), insecure_no_auth=True,
        cors_origins=("https://app.example", "*"), warm=False, keepalive_s=0.5, request_timeout_s=12.0,
    )
    assert ServerSettings.from_env(settings.to_env()) == settings
    assert ServerSettings.from_env(ServerSettings().to_env()) == ServerSettings()
    assert ServerSettings.from_env({}) == ServerSettings()


def test_every_field_has_its_row_and_variable():
    flags = [option_of(spec.name).flag for spec in fields(ServerSettings)]
    named = [flag for flag in flags if flag is not None]
    assert len(named) == len(set(named)) and all(flag.startswith("--") for flag in named)
    assert option_of("warm").flag is None and option_of("keepalive_s").flag is None  # set by variable only
    assert set(ServerSettings().to_env()) == {env_name(spec.name) for spec in fields(ServerSettings)}


def test_variables_are_parsed_and_checked_as_the_flags_are():
    settings = ServerSettings.from_env({"APPLIANCE_SLOTS": "3", "APPLIANCE_WARM": "off", "APPLIANCE_API_KEYS": "a-key, b-key\nc-key,", "APPLIANCE_STREAM_KEEPALIVE_S": "0.25"})
    assert (settings.slots, settings.warm, settings.api_keys, settings.stream_keepalive_s) == (3, False, ("a-key", "b-key", "c-key"), 0.25)
    for name, raw, reason in [
        ("APPLIANCE_SLOTS", "0", "must be at least 1"),
        ("APPLIANCE_PORT", "eighty", "not a whole number"),
        ("APPLIANCE_REQUEST_TIMEOUT_S", "0", "must be more than 0 seconds"),
        ("APPLIANCE_INSECURE_NO_AUTH", "maybe", "not a yes or no"),
    ]:
        with pytest.raises(ValueError, match=f"^{name}={raw!r}: {reason}"):
            ServerSettings.from_env({name: raw})
