"""The engine fields of SimsConfig: names, options per engine, sizes."""

from __future__ import annotations

import pytest

from sims_core.config import ConfigError, SimsConfig


def test_defaults_run_one_shard_on_threads_and_join_no_phase_key():
    cfg = SimsConfig()
    assert (cfg.shards, cfg.engine, cfg.engine_options) == (1, "threads", {})
    other = cfg.replace(shards=4, engine="dask", engine_options={"n_workers": 2})
    from tasks.generations import GENERATION_FIELDS
    from tasks.steering import STEERING_FIELDS as FIT_FIELDS

    assert other.hash_of(GENERATION_FIELDS) == cfg.hash_of(GENERATION_FIELDS)
    assert other.hash_of(FIT_FIELDS) == cfg.hash_of(FIT_FIELDS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"engine": "spark"}, "engine must be one of ['threads', 'dask', 'ray', 'deployment'], got 'spark'"),
        ({"shards": 0}, "shards must be a positive integer, got 0"),
        (
            {"engine": "dask", "engine_options": {"n_workers": 0}},
            "engine_options.n_workers must be a positive integer, got 0",
        ),
        (
            {"engine": "ray", "engine_options": {"n_workers": 2}},
            "engine_options.n_workers is not an option of engine 'ray'",
        ),
        ({"engine": "dask", "engine_options": {"processes": "yes"}}, "engine_options.processes must be true or false"),
        ({"engine": "threads", "engine_options": {"retries": -1}}, "engine_options.retries must be an integer >= 0"),
        (
            {"engine": "dask", "engine_options": {"address": "tcp://h:8786", "n_workers": 2}},
            "cannot be combined with address",
        ),
        (
            {"engine": "ray", "engine_options": {"address": "ray://h:10001", "num_cpus": 2}},
            "cannot be combined with address",
        ),
        ({"engine": "deployment", "engine_options": {"deployment": "gpu"}}, "'flow-name/deployment-name'"),
        ({"engine_options": []}, "engine_options must be a mapping"),
    ],
)
def test_bad_engine_settings_name_the_field(values, message):
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")
    ):
        SimsConfig.from_dict(values)


def test_engine_settings_from_overrides():
    cfg = SimsConfig().with_overrides(["engine=ray", "shards=3", "engine_options={num_cpus: 2, retries: 0}"])
    assert (cfg.engine, cfg.shards, cfg.engine_options) == ("ray", 3, {"num_cpus": 2, "retries": 0})
