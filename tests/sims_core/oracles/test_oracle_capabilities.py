"""Oracle capabilities are class attributes the registry reports, and installed packages add
oracles through the ``sims.oracles`` entry-point group."""

from __future__ import annotations

import sys
import textwrap

import pytest

import sims_core.oracles.base as base
from sims_core.oracles import (
    OracleError,
    SumOracle,
    get_oracle,
    known_oracles,
    oracle_capabilities,
    oracle_factory,
    oracle_info,
    score_candidates,
)

# name: (needs_reference, can_judge, uses_policy_model, comparable_scores)
EXPECTED = {
    "callable": (False, True, False, True),
    "consensus": (False, False, False, False),
    "embedding": (False, True, False, True),
    "pmi": (False, True, True, True),
    "reference": (True, True, False, True),
    "reward_model": (False, True, False, True),
    "self_judge": (False, True, True, False),
    "sum": (False, True, False, False),
}
FLAGS = ("needs_reference", "can_judge", "uses_policy_model", "comparable_scores")


def test_every_registered_oracle_declares_its_capabilities():
    assert set(EXPECTED) <= set(known_oracles())
    for name, flags in EXPECTED.items():
        info = oracle_info(name)
        assert (info.name, info.plugin) == (name, None)
        assert tuple(getattr(info, flag) for flag in FLAGS) == flags, name
        # declared on the class itself, not inherited from a default
        cls = oracle_factory(name)
        assert all(flag in vars(cls) for flag in FLAGS), name


def test_capabilities_of_an_undeclared_oracle_take_the_defaults():
    class Plain:
        name = "plain"

        def score(self, prompts, candidates):
            return [[0.0] * len(g) for g in candidates]

    assert oracle_capabilities(Plain()) == {
        "needs_reference": False,
        "can_judge": True,
        "uses_policy_model": False,
        "comparable_scores": True,
    }


def test_declare_capabilities_sets_all_four_on_the_class_and_requires_each():
    @base.declare_capabilities(needs_reference=True, can_judge=False, uses_policy_model=True, comparable_scores=False)
    class Declared:
        name = "declared"

    assert {flag: vars(Declared)[flag] for flag in FLAGS} == {
        "needs_reference": True,
        "can_judge": False,
        "uses_policy_model": True,
        "comparable_scores": False,
    }
    assert oracle_capabilities(Declared()) == oracle_capabilities(Declared)
    with pytest.raises(TypeError, match="comparable_scores"):
        base.declare_capabilities(needs_reference=False, can_judge=True, uses_policy_model=False)  # type: ignore[call-arg]


def test_a_sum_takes_its_capabilities_from_its_components():
    def by_length(prompt, answer):
        return float(len(answer))

    class NeedsReference:
        name = "needs-ref"
        needs_reference = True

        def score(self, prompts, candidates, references=None):
            if references is None:
                raise OracleError("needs-ref: this judge needs one reference answer per prompt")
            return [[float(a == r) for a in g] for g, r in zip(candidates, references)]

    plain = SumOracle([get_oracle("callable", function=by_length)])
    assert (plain.needs_reference, plain.comparable_scores, plain.can_judge) == (False, True, True)
    assert SumOracle([get_oracle("callable", function=by_length)], standardize=True).comparable_scores is False
    mixed = SumOracle([get_oracle("callable", function=by_length), (NeedsReference(), 10.0)])
    assert mixed.needs_reference is True
    assert score_candidates(mixed, ["q"], [["ab", "yes"]], references=["yes"]) == [[2.0, 13.0]]
    with pytest.raises(OracleError, match="needs one reference answer per prompt"):
        mixed.score(["q"], [["ab", "yes"]])


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as after import, with the plugin scan not yet done (restored afterwards)."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_PLUGINS", {})
    monkeypatch.setattr(base, "_PLUGIN_SOURCES", {})
    monkeypatch.setattr(base, "_plugins_scanned", False)


def _install_plugin(root, dist, entry_points, modules):
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sims.oracles]\n" + entry_points)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


PLUGIN_MODULE = """
    class WordCountOracle:
        needs_reference = False
        can_judge = True
        uses_policy_model = False
        comparable_scores = True

        def __init__(self, bonus=0.0):
            self.name = "word_count"
            self.bonus = bonus

        def score(self, prompts, candidates):
            return [[len(a.split()) + self.bonus for a in group] for group in candidates]
"""


def test_an_entry_point_plugin_is_found_and_imported_only_when_asked_for(tmp_path, monkeypatch, fresh_registry):
    _install_plugin(
        tmp_path,
        "sims-wordcount",
        "word_count = sims_plugin_wordcount:WordCountOracle\n"
        "embedding = sims_plugin_wordcount:WordCountOracle\n"  # a built-in name: ignored
        "broken = sims_plugin_missing_module:Nothing\n",
        {"sims_plugin_wordcount": PLUGIN_MODULE},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sims_plugin_wordcount", raising=False)
    names = known_oracles()
    assert {"word_count", "broken", "embedding", "reference"} <= set(names)
    assert "sims_plugin_wordcount" not in sys.modules  # listed, not imported
    oracle = get_oracle("word_count", bonus=0.5)
    assert oracle.score(["q"], [["one two three", "one"]]) == [[3.5, 1.5]]
    assert "sims_plugin_wordcount" in sys.modules
    info = oracle_info("word_count")
    assert (info.plugin, info.can_judge, info.needs_reference) == ("sims-wordcount", True, False)
    assert oracle_factory("embedding").__name__ == "EmbeddingOracle"  # built-ins win
    with pytest.raises(OracleError, match=r"oracle 'broken' from the plugin sims-wordcount .* could not be loaded"):
        get_oracle("broken")
    with pytest.raises(OracleError, match=r"bad options for oracle 'word_count'.*its options are: bonus"):
        get_oracle("word_count", colour="red")


def test_plugins_are_scanned_once(tmp_path, monkeypatch, fresh_registry):
    calls = []
    real = base.importlib.metadata.entry_points

    def counting(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(base.importlib.metadata, "entry_points", counting)
    known_oracles()
    oracle_info("pmi")
    with pytest.raises(OracleError):
        get_oracle("nothing-here")
    assert calls == [{"group": "sims.oracles"}]
