"""The method registry: names are unique, lookups fail with one readable line, ``list_methods``
filters with shell patterns, and a third-party distribution registers through the entry-point
group ``ltbench.methods`` (loaded for real through ``importlib.metadata``)."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch.nn.functional as F

import ltbench.registry
from ltbench import LossMethod, LtbenchError, create_method, get_method_class, list_methods, register_method
from ltbench.registry import ENTRY_POINT_GROUP, unregister_method


class _Plain(LossMethod):
    def loss(self, logits, labels):
        return F.cross_entropy(logits, labels)


@pytest.fixture
def registered():
    """Register throw-away classes under names; unregister them after the test."""
    names: list[str] = []

    def register(name: str) -> type:
        cls = register_method(name)(type(f"M_{name}", (_Plain,), {}))
        names.append(name)
        return cls

    yield register
    for name in names:
        unregister_method(name)


def test_builtin_methods_are_registered():
    assert {"ce", "focal", "ecl"} <= set(list_methods())


def test_a_duplicate_name_raises_and_keeps_the_first_registration():
    first = get_method_class("ce")
    with pytest.raises(ValueError, match="'ce' is already registered"):
        register_method("ce")(type("AnotherCE", (_Plain,), {}))
    assert get_method_class("ce") is first
    assert first.name == "ce"


def test_register_sets_the_name_and_unregister_removes_it(registered):
    cls = registered("zz_registry_probe")
    assert cls.name == "zz_registry_probe"
    assert get_method_class("zz_registry_probe") is cls
    unregister_method("zz_registry_probe")
    assert "zz_registry_probe" not in list_methods()
    unregister_method("zz_registry_probe")  # removing an absent name is a no-op


def test_an_unknown_name_raises_ltbench_error_naming_the_known_methods():
    with pytest.raises(LtbenchError) as info:
        create_method("no_such_method")
    message = str(info.value)
    assert "no_such_method" in message
    for known in ("ce", "focal", "ecl"):
        assert known in message


def test_bad_parameters_raise_ltbench_error():
    with pytest.raises(LtbenchError, match="focal.*gama"):
        create_method("focal", gama=2.0)  # a typo of gamma
    with pytest.raises(LtbenchError, match="'ce'.*gamma"):
        create_method("ce", gamma=2.0)  # ce takes no hyperparameters


def test_list_methods_filters_with_a_shell_pattern(registered):
    registered("zz_pattern_beta")
    registered("zz_pattern_alpha")
    registered("zz_other")
    assert list_methods("zz_pattern_*") == ["zz_pattern_alpha", "zz_pattern_beta"]  # sorted
    assert list_methods("zz_pattern_a*") == ["zz_pattern_alpha"]
    assert list_methods("zz_*") == ["zz_other", "zz_pattern_alpha", "zz_pattern_beta"]
    assert list_methods("zz_nothing*") == []
    assert "ce" in list_methods("c?") and "focal" not in list_methods("c?")
    assert list_methods() == list_methods("*")


# --- entry-point plug-ins ----------------------------------------------------------------------
def _make_distribution(root, module: str, source: str, entry_points: str) -> None:
    """An installed distribution as importlib.metadata finds it: a module and its dist-info."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = root / f"{module}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """tmp_path on sys.path and the registry ready to load entry points again; cleaned up after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ltbench.registry, "_loaded", False)
    modules_before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - modules_before:
        if name.startswith("ltbench_plugin_"):
            del sys.modules[name]


def test_an_entry_point_plugin_is_loaded_and_registered(plugin_path):
    _make_distribution(
        plugin_path, "ltbench_plugin_demo",
        source='''
            import torch.nn.functional as F
            from ltbench import LossMethod, register_method

            @register_method("plugin_demo")
            class PluginDemo(LossMethod):
                def __init__(self, scale: float = 1.0) -> None:
                    super().__init__()
                    self.scale = scale

                def loss(self, logits, labels):
                    return self.scale * F.cross_entropy(logits, labels)
        ''',
        entry_points=f"[{ENTRY_POINT_GROUP}]\ndemo = ltbench_plugin_demo\n",
    )
    try:
        assert "plugin_demo" in list_methods()
        assert "ltbench_plugin_demo" in sys.modules  # imported through its entry point
        method = create_method("plugin_demo", scale=0.5)
        assert method.get_params() == {"scale": 0.5}
        assert type(method).__module__ == "ltbench_plugin_demo"
        assert {"ce", "focal", "ecl"} <= set(list_methods())  # built-ins still there
    finally:
        unregister_method("plugin_demo")
    assert "plugin_demo" not in list_methods()


def test_a_broken_plugin_raises_ltbench_error_naming_its_entry_point(plugin_path):
    _make_distribution(
        plugin_path, "ltbench_plugin_broken",
        source="raise ImportError('missing dependency')\n",
        entry_points=f"[{ENTRY_POINT_GROUP}]\nbroken = ltbench_plugin_broken\n",
    )
    with pytest.raises(LtbenchError, match="broken.*missing dependency"):
        list_methods()


def test_an_entry_point_may_name_an_undecorated_class(plugin_path):
    _make_distribution(
        plugin_path, "ltbench_plugin_cls",
        source='''
            import torch.nn.functional as F
            from ltbench import LossMethod

            class Plain(LossMethod):
                def loss(self, logits, labels):
                    return F.cross_entropy(logits, labels)
        ''',
        entry_points=f"[{ENTRY_POINT_GROUP}]\nplain_cls = ltbench_plugin_cls:Plain\n",
    )
    try:
        assert "plain_cls" in list_methods()
        assert create_method("plain_cls").name == "plain_cls"
    finally:
        unregister_method("plain_cls")


def test_invalid_parameter_values_are_one_ltbench_error():
    with pytest.raises(LtbenchError, match="'ecl'.*E1"):
        create_method("ecl", E1=60, E2=50)
