"""The YCOR recipes are small diffs on configs/base/ycor.yaml; each resolves to what its full copy did.

``fixtures/ycor_resolved.json`` holds ``load_config(old).to_dict()`` of every ``configs/ycor*.yaml``
as it was at commit 021934a, when each was a 32-36-line copy (generated once, from ``git show``).
A recipe changed on purpose (configs/ycor.yaml re-chosen by ``offroadseg tune``; every recipe's
``train.precision`` 32 -> auto on 2026-12-05, measured in docs/benchmarks.md) updates its entry.
"""

import json
from pathlib import Path

import pytest
import yaml

from offroadseg.config import load_config

REPO = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "ycor_resolved.json").read_text())
RECIPES = sorted(name for name in FIXTURE if name.endswith(".yaml"))
SHIPPED = sorted(p.name for p in (REPO / "configs").glob("ycor*.yaml"))


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_recipe_of_the_fixture_still_ships():
    assert set(RECIPES) <= set(SHIPPED) and len(RECIPES) == 9


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_resolves_to_its_old_copy(name):
    new = _flat(load_config(REPO / "configs" / name).to_dict())
    old = _flat(FIXTURE[name])
    differ = {k: (old.get(k, "<absent>"), new.get(k, "<absent>")) for k in old.keys() | new.keys()}
    differ = {k: v for k, v in differ.items() if v[0] != v[1]}
    assert not differ, f"configs/{name} resolves differently from its old copy (old, new): {differ}"


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_is_a_small_diff_on_the_base(name):
    text = (REPO / "configs" / name).read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert yaml.safe_load(text)["base"] == "base/ycor.yaml"
    assert len(lines) <= 12, f"configs/{name}: {len(lines)} non-comment lines"
