"""Model cards (models/*/CARD.md) and the models README table cannot drift from what they describe.

Every file size and sha256 a card quotes is the committed file's; the input line's shape, scale and zero
point are metrics.json's; a MAC count credited to harness.bench.costmodel is what count_macs says of the file;
every 3- or 4-decimal figure is a value of the family's metrics.json (to the quoted precision) unless the
card's family lists it below as coming from elsewhere, with why; device-profile figures quoted in a card
are the profile's; the README table's sizes, accuracies and macro-F1 are the files' and metrics.json's.
Fixing a card means regenerating the number from metrics.json, never editing this test's expectations.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
FAMILIES = sorted(p.parent.name for p in MODELS.glob("*/CARD.md"))

# Figures a card quotes that are not in its metrics.json (bench runs, other models, runs not adopted).
NOT_FROM_METRICS = {
    "autoencoder": {"0.5701", "0.6292", "0.5382", "0.4236"},   # bench run on the bundled records
    "beatimage": {"0.742", "0.460",                           # a variant, not adopted
                  "0.5715", "0.4700"},                        # bench run on the bundled records
    "binary": {"0.682"},                                      # bench run on the bundled records
    "cnn1d": {"0.696",                                        # bench run on the bundled records
              "0.886", "0.513"},                              # the power-1.0 variant (disclosed DS2 comparison)
    "rr": {"0.270", "0.462", "0.943", "0.713",                # cnn1d_beat's DS2 figures, for comparison
           "0.759", "0.385", "0.777", "0.819",                # de Chazal et al. 2004, as published
           "0.800", "0.645", "0.388", "0.973", "0.598"},      # the first run (disclosed), not committed
    "tcn": {"0.893", "0.544",                                 # cnn1d_beat's figures, for comparison
            "0.7239", "0.4836"},                              # bench run on the bundled records
}


def _numbers(value, out):
    if isinstance(value, dict):
        for v in value.values():
            _numbers(v, out)
    elif isinstance(value, list):
        for v in value:
            _numbers(v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out.append(float(value))
    return out


def _card(family):
    return (MODELS / family / "CARD.md").read_text()


def _metrics(family):
    return json.loads((MODELS / family / "metrics.json").read_text())


def _figures(family) -> list[float]:
    """Every number of the family's JSON files: metrics.json (the recipe's) and the figures its other
    scripts write next to it (e.g. autoencoder/roc.json, rr/detector.json)."""
    values: list[float] = []
    for path in sorted((MODELS / family).glob("*.json")):
        _numbers(json.loads(path.read_text()), values)
    return values


def _int(text: str) -> int:
    return int(text.replace(",", "").replace("−", "-"))


@pytest.mark.parametrize("family", FAMILIES)
def test_card_file_sizes_and_sha256_are_the_committed_files(family):
    quoted = re.findall(r"`(\w+\.tflite)`\s*\(([\d,]+) B([^)]*)\)", _card(family))
    assert quoted, f"models/{family}/CARD.md quotes no file size"
    for name, size, rest in quoted:
        data = (MODELS / family / name).read_bytes()
        assert _int(size) == len(data), f"{family}/CARD.md: {name} is {len(data):,} B, the card says {size} B"
        digest = hashlib.sha256(data).hexdigest()
        for head, tail in re.findall(r"`([0-9a-f]{8})…([0-9a-f]{4})`", rest):
            assert digest.startswith(head) and digest.endswith(tail), \
                f"{family}/CARD.md: {name} sha256 is {digest[:8]}…{digest[-4:]}, the card says {head}…{tail}"


@pytest.mark.parametrize("family", FAMILIES)
def test_card_input_line_is_metrics_json(family):
    m = _metrics(family)
    io = m.get("int8_io") or m.get("int8_io_strided")
    found = re.search(r"int8 `\[([\d, ]+)\]`, scale ([\d.]+), zero point ([−-]?\d+)", _card(family))
    assert found, f"{family}/CARD.md has no input line (int8 `[shape]`, scale S, zero point Z)"
    shape, scale, zp = found.groups()
    assert [int(v) for v in shape.split(",")] == io["input_shape"]
    assert abs(float(scale) - io["input_scale"]) <= 0.5 * 10 ** -len(scale.split(".")[1]) + 1e-12, \
        f"{family}/CARD.md: input scale {scale}, metrics.json {io['input_scale']}"
    assert _int(zp) == io["input_zero_point"]


@pytest.mark.parametrize("family", FAMILIES)
def test_card_macs_credited_to_the_cost_model_are_the_cost_model_s(family):
    from harness.bench.costmodel import count_macs

    line = next((ln for ln in _card(family).splitlines() if ln.startswith("| MACs per beat")), None)
    if line is None or "costmodel" not in line:
        pytest.fail(f"{family}/CARD.md: the MACs line must say where the count comes from (harness.bench.costmodel)")
    counts = {count_macs(p.read_bytes()) for p in (MODELS / family).glob("*int8.tflite")}
    for number in re.findall(r"\d[\d,]{3,}", line):
        assert _int(number) in counts, f"{family}/CARD.md: {number} MACs is not count_macs of an INT8 file ({counts})"


@pytest.mark.parametrize("family", FAMILIES)
def test_card_decimal_figures_come_from_metrics_json(family):
    values = _figures(family)
    allowed = NOT_FROM_METRICS.get(family, set())
    stray = []
    for match in re.finditer(r"(?<![\d.])(0\.\d{3,4})(?!\d)", _card(family)):
        text = match.group(1)
        digits = len(text) - 2
        if text in allowed:
            continue
        if not any(abs(v - float(text)) <= 0.5 * 10 ** -digits + 1e-9 for v in values):
            stray.append(text)
    assert not stray, f"{family}/CARD.md quotes figures that are not in its metrics.json: {stray}"


@pytest.mark.parametrize("family", FAMILIES)
def test_card_device_profile_figures_are_the_profiles(family):
    for chip, amount, unit in re.findall(r"(ESP32[-\w]*) profile's ([\d.]+) (KiB|MiB|KB|MB) model store", _card(family)):
        profile = yaml.safe_load((REPO / "device_profiles" / f"{chip.lower().replace('-', '')}.yaml").read_text())
        assert unit in ("KiB", "MiB"), f"{family}/CARD.md: say KiB/MiB for a binary size ({amount} {unit})"
        assert float(amount) * (1024 if unit == "KiB" else 1 << 20) == profile["model_max_bytes"]


def test_readme_table_is_the_files_and_metrics_json():
    rows = [ln for ln in (MODELS / "README.md").read_text().splitlines() if ln.startswith("| `")]
    registry = {e["name"]: e for e in yaml.safe_load((MODELS / "registry.yaml").read_text())["models"]}
    assert rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = cells[0].strip("`")
        entry = registry[name]
        size = re.match(r"([\d,]+) B", cells[3]).group(1)
        assert _int(size) == (MODELS / entry["file"]).stat().st_size, f"README: {name} size {size} B"
        family = entry["file"].split("/")[0]
        values = _numbers(_metrics(family), [])
        for text in re.findall(r"(?<![\d.])(0\.\d{3,4})(?!\d)", cells[4] + " " + cells[5]):
            assert any(abs(v - float(text)) <= 0.5 * 10 ** -(len(text) - 2) + 1e-9 for v in values), \
                f"README: {name} quotes {text}, not in {family}/metrics.json"
