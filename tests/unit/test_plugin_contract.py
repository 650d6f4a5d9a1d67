"""The extension contract's discovery (llmdrill/plugin.py): built-in kinds are listed as
entry points like any plugin's, and a broken or clashing plugin is named, not a traceback.
(An installed out-of-tree plugin is exercised end to end in tests/integration/test_plugin.py.)
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

from llmdrill import plugin
from llmdrill.checks import runbook_for
from llmdrill.plugin import (
    CHECKS_GROUP,
    FAULTS_GROUP,
    CheckKind,
    FaultBackend,
    PluginError,
    check_kinds,
    fault_backends,
    load_plugin,
    plugin_entry_points,
)
from llmdrill.scenario.models import (
    BUILTIN_CHECK_KINDS,
    BUILTIN_FAULT_BACKENDS,
    CHECK_KINDS,
    FAULT_BACKENDS,
)

pytestmark = pytest.mark.unit


def test_every_builtin_kind_is_an_entry_point_of_llmdrill() -> None:
    faults = {ep.name for ep in plugin_entry_points(FAULTS_GROUP) if not plugin._external(ep)}
    checks = {ep.name for ep in plugin_entry_points(CHECKS_GROUP) if not plugin._external(ep)}
    assert faults == set(BUILTIN_FAULT_BACKENDS) == {
        "toxiproxy", "cancel_storm", "request_flood", "docker", "kubernetes", "process",
        "haproxy", "router"}
    assert checks == set(BUILTIN_CHECK_KINDS)
    assert len(BUILTIN_CHECK_KINDS) == 19


def test_builtin_entry_points_are_backends_and_kinds_like_a_plugins() -> None:
    for key in BUILTIN_FAULT_BACKENDS:
        backend = fault_backends()[key]
        assert isinstance(backend, FaultBackend) and backend.builtin
        assert backend.description and callable(backend.revert)
    for key in BUILTIN_CHECK_KINDS:
        kind = check_kinds()[key]
        assert isinstance(kind, CheckKind) and kind.builtin and kind.description


def test_every_builtin_check_kind_has_a_runbook_hint() -> None:
    kinds = {key: kind for key, kind in check_kinds().items() if kind.builtin}
    assert set(kinds) == set(BUILTIN_CHECK_KINDS)
    short = [key for key, kind in kinds.items() if len(kind.runbook.split()) < 12]
    assert not short, f"check kinds without a runbook hint of a few sentences: {short}"


def test_a_runbook_hint_is_found_by_kind_and_empty_for_an_unknown_one() -> None:
    assert runbook_for("slo") == check_kinds()["slo"].runbook.strip() != ""
    assert runbook_for("no_such_kind") == ""


def test_a_runbook_hint_is_empty_when_plugins_cannot_load(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    def broken() -> dict[str, CheckKind]:
        raise PluginError("plugin 'x' cannot be loaded")

    monkeypatch.setattr("llmdrill.checks.base.check_kinds", broken)
    assert runbook_for("slo") == ""


def test_the_scenario_model_is_assembled_from_the_registered_kinds() -> None:
    # (other unit tests add test-only backends to the registry, never to the model)
    assert set(FAULT_BACKENDS) <= set(fault_backends())
    assert set(CHECK_KINDS) <= set(check_kinds())
    assert set(BUILTIN_FAULT_BACKENDS) <= set(FAULT_BACKENDS)
    assert set(BUILTIN_CHECK_KINDS) <= set(CHECK_KINDS)


def test_a_builtin_module_does_not_need_the_scenario_model_to_import() -> None:
    """The scenario model imports the specs while it is built: a backend or check module
    that imported the model at import time would make a cycle. Each one is imported first
    in a fresh interpreter, the way `llmdrill cleanup` or a plugin may."""
    import subprocess
    import sys

    modules = sorted({ep.value.split(":")[0] for group in (FAULTS_GROUP, CHECKS_GROUP)
                      for ep in plugin_entry_points(group) if not plugin._external(ep)})
    code = ("import importlib, sys\n"
            "for m in sys.argv[1:]:\n"
            "    for k in [k for k in sys.modules if k.startswith('llmdrill')]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module(m)\n"
            "    import llmdrill.scenario.models\n")
    done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_plugin_that_is_not_a_backend_or_kind_is_named() -> None:
    with pytest.raises(PluginError, match=r"plugin 'odd' \(os:sep\) is a str, not a"):
        load_plugin(EntryPoint("odd", "os:sep", FAULTS_GROUP))


def test_a_plugin_that_cannot_be_imported_is_named() -> None:
    with pytest.raises(PluginError, match=r"plugin 'gone' \(no_such_module_x:X\) cannot be "
                                          r"loaded: ModuleNotFoundError"):
        load_plugin(EntryPoint("gone", "no_such_module_x:X", FAULTS_GROUP))


def _installed(monkeypatch: pytest.MonkeyPatch, *eps: EntryPoint) -> None:
    """llmdrill's own entry points plus these (as another distribution's)."""
    real = plugin.entry_points

    def fake(group: str) -> list[Any]:
        return [*real(group=group), *(ep for ep in eps if ep.group == group)]

    monkeypatch.setattr(plugin, "entry_points", fake)


def test_a_plugin_taking_a_builtin_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, EntryPoint("docker", "llmdrill.faults.docker_backend:DOCKER",
                                       FAULTS_GROUP))
    with pytest.raises(PluginError, match="takes a key llmdrill already has"):
        plugin._registered(FAULTS_GROUP, FaultBackend)


def test_a_check_kind_listed_as_a_fault_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, EntryPoint("mine", "llmdrill.checks.slo:SLO", FAULTS_GROUP))
    with pytest.raises(PluginError, match=r"is listed under llmdrill\.faults but is a CheckKind"):
        plugin._registered(FAULTS_GROUP, FaultBackend)


def test_a_plugin_module_instead_of_an_object_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, EntryPoint("mine", "json", CHECKS_GROUP))
    with pytest.raises(PluginError, match="is a module, not a FaultBackend or CheckKind"):
        plugin._registered(CHECKS_GROUP, CheckKind)


def test_plugins_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, EntryPoint("mine", "json", CHECKS_GROUP))
    monkeypatch.setenv(plugin.PLUGINS_ENV, "off")
    assert set(plugin._registered(CHECKS_GROUP, CheckKind)) == set(BUILTIN_CHECK_KINDS)
