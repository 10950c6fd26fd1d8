"""The deployment's pool defaults (BATCHDROP_POOL_*) fill what a pipelines file's pool leaves out, and only that."""

import json
from pathlib import Path

import pytest

from shared.pipelines import load_pipelines
from shared.pools import PoolDefaults
from shared.settings import load_settings
from tests.unit.fakes import PIPELINE

PROJECT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, pool: dict[str, object]) -> Path:
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps({"pipelines": [{**PIPELINE, "pool": pool}]}))
    return path


def test_a_pool_that_leaves_size_and_scale_out_takes_the_deployments(tmp_path: Path) -> None:
    defaults = PoolDefaults(vm_size="standard_f4s_v2", max_nodes=7, use_spot=True, scale_to_zero=True)
    pool = load_pipelines(write(tmp_path, {"id": "p"}), defaults).pipelines[0].pool

    assert pool.vm_size == "standard_f4s_v2"
    assert pool.fixed_nodes() is None
    autoscale = pool.autoscale()
    assert autoscale is not None
    formula, interval = autoscale
    assert "$TargetLowPriorityNodes = max(0, min(7, $wanted));" in formula  # Spot, 0 to 7
    assert interval == 5


@pytest.mark.parametrize(("use_spot", "expected"), [(False, (3, 0)), (True, (0, 3))])
def test_without_scale_to_zero_the_pool_has_max_nodes_fixed(
    tmp_path: Path, use_spot: bool, expected: tuple[int, int]
) -> None:
    defaults = PoolDefaults(max_nodes=3, use_spot=use_spot, scale_to_zero=False)
    pool = load_pipelines(write(tmp_path, {"id": "p"}), defaults).pipelines[0].pool

    assert pool.fixed_nodes() == expected
    assert pool.autoscale() is None


@pytest.mark.parametrize(
    "stated",
    [
        {"vm_size": "standard_a1_v2", "dedicated_nodes": 1},
        {"vm_size": "standard_a1_v2", "low_priority_nodes": 4},
        {"vm_size": "standard_a1_v2", "scale": {"fixed": {"dedicated": 1}}},
    ],
)
def test_what_the_file_states_wins_over_the_deployment(tmp_path: Path, stated: dict[str, object]) -> None:
    defaults = PoolDefaults(vm_size="standard_f4s_v2", max_nodes=9, use_spot=True, scale_to_zero=True)
    pool = load_pipelines(write(tmp_path, {"id": "p", **stated}), defaults).pipelines[0].pool

    assert pool.vm_size == "standard_a1_v2"
    assert pool.fixed_nodes() is not None
    assert 9 not in (pool.fixed_nodes() or ())


def test_the_settings_carry_the_defaults_to_the_sample_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "BATCHDROP_BATCH_URL": "http://127.0.0.1:1",
        "BatchdropStorage": "UseDevelopmentStorage=true",
        "BATCHDROP_PIPELINES_FILE": str(PROJECT / "samples" / "pipelines.json"),
        "BATCHDROP_POOL_VM_SIZE": "standard_d4s_v3",
        "BATCHDROP_POOL_MAX_NODES": "5",
        "BATCHDROP_POOL_USE_SPOT": "true",
        "BATCHDROP_POOL_SCALE_TO_ZERO": "true",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    pipelines = load_pipelines(settings.pipelines_file, settings.pool_defaults)

    for pipeline in pipelines.pipelines:  # both sample pipelines share the pool, so they must stay equal
        assert pipeline.pool.vm_size == "standard_d4s_v3"
        assert pipeline.pool.scale is not None and pipeline.pool.scale.auto is not None
        assert (pipeline.pool.scale.auto.max_nodes, pipeline.pool.scale.auto.spot) == (5, True)


def test_a_bad_default_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHDROP_BATCH_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("BatchdropStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("BATCHDROP_PIPELINES_FILE", "x.json")
    monkeypatch.setenv("BATCHDROP_POOL_MAX_NODES", "0")
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="BATCHDROP_POOL_MAX_NODES"):
        load_settings()
