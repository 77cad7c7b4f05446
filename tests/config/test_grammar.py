"""Matrix grammar cases with fixtures of their own: the single-mapping ``zip:`` form and
``--set`` into a zip group (the refused forms are ``bad_*`` fixtures, run by test_bad_input)."""

from __future__ import annotations

import pytest

from hpcgen.config import load_experiment
from hpcgen.errors import ConfigError
from tests.conftest import FIXTURES


def runs(pipeline, overrides=()):
    exp = load_experiment(FIXTURES / "config_with_single_zip.yaml", pipeline, overrides, check_output=False)
    return [(r.config.train.lr, r.config.train.warmup, r.label) for r in exp.runs]


def test_a_single_mapping_zip_is_one_group(pipeline):
    assert runs(pipeline) == [(0.1, 1, "low"), (0.2, 2, "high")]


def test_set_into_a_zip_group_pins_its_position_label_included(pipeline):
    assert runs(pipeline, ["train.lr=0.2"]) == [(0.2, 2, "high")]
    assert runs(pipeline, ["train.warmup=1"]) == [(0.1, 1, "low")]


def test_set_of_a_value_outside_the_zip_group_is_refused_on_the_command_line(pipeline):
    with pytest.raises(ConfigError, match="not one of the values of its zip group") as info:
        runs(pipeline, ["train.lr=0.5"])
    assert info.value.file == "--set" and info.value.key == "train.lr"
