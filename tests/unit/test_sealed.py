"""Env values sealed for the registry: they open with the same key and name only."""

from __future__ import annotations

import pytest
from modelport.registry.sealed import PREFIX, Sealer, SealError


def test_a_sealed_value_opens_with_its_key_and_name_only():
    sealer = Sealer(bytes(range(32)))
    sealed = sealer.seal("API_TOKEN", "hunter2")
    assert sealed.startswith(PREFIX) and "hunter2" not in sealed
    assert sealer.seal("API_TOKEN", "hunter2") != sealed  # a fresh nonce each time
    assert sealer.unseal("API_TOKEN", sealed) == "hunter2"
    with pytest.raises(SealError, match="OTHER"):
        sealer.unseal("OTHER", sealed)  # moved to another name
    with pytest.raises(SealError, match="was the key replaced"):
        Sealer(bytes(32)).unseal("API_TOKEN", sealed)
    with pytest.raises(SealError, match="not sealed"):
        sealer.unseal("API_TOKEN", "hunter2")


def test_env_round_trip_keeps_names_in_clear():
    sealer = Sealer(bytes(range(32)))
    env = {"A": "1", "B": "", "C": "é" * 100}
    sealed = sealer.seal_env(env)
    assert set(sealed) == set(env)
    assert sealer.unseal_env(sealed) == env
