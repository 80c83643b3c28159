"""benchmarks/combine_synthetic_results.py: per-seed result files -> one multi-seed result.

The per-run numbers are constructed (random, or with a known effect); the combined paired
intervals are checked against the Student-t interval computed here from the raw values,
and the verdicts against the effect that was built in.
"""
import dataclasses
import json
import math
import pathlib
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import combine_synthetic_results as combine  # noqa: E402
from benchmarks import reproduce_synthetic as rs  # noqa: E402

T_975_2 = 4.302652729911275      # Student t, 97.5 % quantile, 2 degrees of freedom
METHODS = ["oracle_static", "baseline", "coopnet"]
METRIC_PATHS = [(n, p) for fam in rs.FAMILIES.values() for n, p, _ in fam] + rs.CONTEXT_METRICS


def _set(d, path, value):
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


def _run_metrics(rng, offsets=None):
    out = {}
    for name, path in METRIC_PATHS:
        _set(out, path, float(rng.uniform(0.5, 1.5)) + (offsets or {}).get(name, 0.0))
    return out


def _payload(seeds, per_run, trivial, **config):
    cfg = dataclasses.asdict(rs.Config(methods=tuple(METHODS), seeds=tuple(seeds)))
    cfg.update(config)
    return {"benchmark": "reproduce_synthetic", "config": cfg,
            "dataset": {"world": {"num_objects": cfg["num_objects"]}}, "protocol": {},
            "per_run": per_run, "trivial_reference": trivial,
            "metadata": {"command": f"python reproduce_synthetic.py --seeds={seeds}"}}


def _write(path: pathlib.Path, payload) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return str(path)


@pytest.fixture
def three_seeds(tmp_path):
    """Seeds 0, 1, 2 in three files; oracle_static better than baseline on static depth by
    construction, pose identical between them."""
    rng = np.random.default_rng(7)
    trivial = _run_metrics(rng)
    files, per_run = [], {}
    for seed in range(3):
        runs = {}
        base = _run_metrics(rng)
        runs[f"baseline/seed{seed}"] = base
        oracle = json.loads(json.dumps(base))
        static = oracle["depth_static_scale"]["static"]
        static["abs_rel"] -= 0.2 + 0.01 * seed
        static["log_rmse"] -= 0.1 + 0.01 * seed
        static["a1"] += 0.05
        runs[f"oracle_static/seed{seed}"] = oracle
        runs[f"coopnet/seed{seed}"] = _run_metrics(rng)
        per_run.update(runs)
        files.append(_write(tmp_path / f"s{seed}" / "reproduce_synthetic.json",
                            _payload([seed], runs, trivial)))
    return files, per_run, trivial


def test_combined_intervals_and_verdicts(three_seeds, tmp_path):
    files, per_run, _ = three_seeds
    out = combine.run(files, str(tmp_path / "out"))
    assert out["config"]["seeds"] == [0, 1, 2]
    assert out["config"]["methods"] == METHODS
    assert [s["seeds"] for s in out["sources"]] == [[0], [1], [2]]
    for name, path in [("AbsRel static", ("depth_static_scale", "static", "abs_rel")),
                       ("ATE-5", ("pose", "ate5_mean"))]:
        a = [per_run[f"coopnet/seed{s}"] for s in range(3)]
        b = [per_run[f"baseline/seed{s}"] for s in range(3)]
        d = np.array([rs._get(x, path) - rs._get(y, path) for x, y in zip(a, b)])
        half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
        got = out["summary"]["_paired"]["coopnet − baseline"]["metrics"][name]
        assert got["mean"] == pytest.approx(d.mean(), abs=1e-12)
        assert got["low"] == pytest.approx(d.mean() - half, abs=1e-9)
        assert got["high"] == pytest.approx(d.mean() + half, abs=1e-9)
        assert out["summary"]["coopnet"][name]["values"] == pytest.approx(
            [rs._get(x, path) for x in a])
    rows = {(v["comparison"], v["family"]): v["outcome"]
            for v in out["summary"]["_verdicts"]}
    assert rows[("oracle_static − baseline", "static depth")] == "oracle_static better"
    assert rows[("oracle_static − baseline", "pose")] == "no detectable difference"
    md = (tmp_path / "out" / "reproduce_synthetic.md").read_text()
    assert "seeds [0, 1, 2]" in md and "trivial (learned nothing)" in md
    assert all(f in md for f in files)
    written = json.loads((tmp_path / "out" / "reproduce_synthetic.json").read_text())
    assert written["summary"]["_verdicts"] == json.loads(json.dumps(
        out["summary"]["_verdicts"]))


def test_figures_come_from_the_first_file_that_has_them(three_seeds, tmp_path):
    files, _, _ = three_seeds
    figure = pathlib.Path(files[1]).parent / "reproduce_synthetic_delta_density.png"
    figure.write_bytes(b"seed one's figure")
    out = combine.run(files, str(tmp_path / "out"), output_name="combined")
    copied = tmp_path / "out" / "combined_delta_density.png"
    assert copied.read_bytes() == b"seed one's figure"
    assert out["delta_density_figure"]["seed"] == 1
    assert "motion_masks_figure" not in out


def test_refuses_another_configuration(three_seeds, tmp_path):
    files, _, trivial = three_seeds
    other = _write(tmp_path / "other.json",
                   _payload([3], {"coopnet/seed3": {}}, trivial, height=128))
    with pytest.raises(ValueError, match=r"other\.json: config 'height' differs"):
        combine.combine(files + [other])


def test_refuses_another_test_split(three_seeds, tmp_path):
    """The "learned nothing" reference depends on the test split only: another split is
    refused, float32 round-off (another CPU, 2e-6 relative in the committed run) is not."""
    files, _, trivial = three_seeds
    changed = json.loads(json.dumps(trivial))
    changed["pose"]["ate5_mean"] *= 1 + 2e-6
    same = _write(tmp_path / "same.json", _payload([3], {}, changed))
    assert combine.combine(files + [same])["config"]["seeds"] == [0, 1, 2, 3]
    changed["depth"]["all"]["abs_rel"] += 0.01
    other = _write(tmp_path / "other.json", _payload([3], {}, changed))
    with pytest.raises(ValueError, match=r"other\.json: trivial_reference differs .*"
                                         r"/depth/all/abs_rel: "):
        combine.combine(files + [other])


def test_one_run_in_two_files(three_seeds, tmp_path):
    files, per_run, trivial = three_seeds
    copy = _write(tmp_path / "copy.json",
                  _payload([0], {"coopnet/seed0": per_run["coopnet/seed0"]}, trivial))
    assert combine.combine(files + [copy])["config"]["seeds"] == [0, 1, 2]
    changed = json.loads(json.dumps(per_run["coopnet/seed0"]))
    changed["pose"]["ate5_mean"] += 1e-6
    conflict = _write(tmp_path / "conflict.json",
                      _payload([0], {"coopnet/seed0": changed}, trivial))
    with pytest.raises(ValueError, match=r"conflict\.json: run coopnet/seed0 is also in"):
        combine.combine(files + [conflict])
