"""The extension contract's discovery (llmdrill/plugin.py): built-in kinds are listed as
entry points like any plugin's, and a broken or clashing plugin is named, not a traceback.
(An installed out-of-tree plugin is exercised end to end in tests/integration/test_plugin.py.)
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

from llmdrill import plugin
from llmdrill.plugin import (
    CHECKS_GROUP,
    FAULTS_GROUP,
    PluginError,
    external_specs,
    load_plugin,
    plugin_entry_points,
)
from llmdrill.scenario.models import BUILTIN_CHECK_KINDS, BUILTIN_FAULT_BACKENDS

pytestmark = pytest.mark.unit


def test_every_builtin_kind_is_an_entry_point_of_llmdrill() -> None:
    faults = {ep.name for ep in plugin_entry_points(FAULTS_GROUP) if not plugin._external(ep)}
    checks = {ep.name for ep in plugin_entry_points(CHECKS_GROUP) if not plugin._external(ep)}
    assert faults == set(BUILTIN_FAULT_BACKENDS)
    assert checks == set(BUILTIN_CHECK_KINDS)


def test_builtin_entry_points_load_as_modules_that_register_their_kinds() -> None:
    from llmdrill.checks import evaluator_for
    from llmdrill.faults.base import _REVERTERS
    from llmdrill.faults.registry import _FACTORIES, load_backends

    load_backends()
    assert set(_FACTORIES) >= set(BUILTIN_FAULT_BACKENDS)
    assert {"toxiproxy", "docker", "client"} <= set(_REVERTERS)
    assert all(evaluator_for(kind) is not None for kind in BUILTIN_CHECK_KINDS)


def test_a_plugin_that_is_not_a_backend_or_kind_is_named() -> None:
    with pytest.raises(PluginError, match=r"plugin 'odd' \(os:sep\) is a str, not a"):
        load_plugin(EntryPoint("odd", "os:sep", FAULTS_GROUP))


def test_a_plugin_that_cannot_be_imported_is_named() -> None:
    with pytest.raises(PluginError, match=r"plugin 'gone' \(no_such_module_x:X\) cannot be "
                                          r"loaded: ModuleNotFoundError"):
        load_plugin(EntryPoint("gone", "no_such_module_x:X", FAULTS_GROUP))


def _installed(monkeypatch: pytest.MonkeyPatch, *eps: EntryPoint) -> None:
    def fake(group: str) -> list[Any]:
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(plugin, "entry_points", fake)


def test_a_plugin_taking_a_builtin_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, EntryPoint("docker", "os:sep", FAULTS_GROUP))
    with pytest.raises(PluginError, match="takes a key llmdrill already has"):
        external_specs(FAULTS_GROUP, BUILTIN_FAULT_BACKENDS)


def test_a_plugin_module_instead_of_an_object_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, EntryPoint("mine", "json", CHECKS_GROUP))
    with pytest.raises(PluginError, match="must name a FaultBackend or CheckKind"):
        external_specs(CHECKS_GROUP, BUILTIN_CHECK_KINDS)


def test_plugins_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, EntryPoint("mine", "json", CHECKS_GROUP))
    monkeypatch.setenv(plugin.PLUGINS_ENV, "off")
    assert external_specs(CHECKS_GROUP, BUILTIN_CHECK_KINDS) == {}
