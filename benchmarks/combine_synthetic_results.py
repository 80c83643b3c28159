r"""One multi-seed result from result files of reproduce_synthetic.py run on other seeds.

    python benchmarks/combine_synthetic_results.py \
        --results=seed0/reproduce_synthetic.json,seeds12/reproduce_synthetic.json \
        --output_dir=DIR [--output_name=reproduce_synthetic]

A run's checkpoints stay on the machine that trained it; its result JSON keeps every
number per (arm, seed). Seeds trained in different sessions or on different machines are
combined here: the per-run numbers are taken as they are, and the summary, the paired
95 % intervals, the verdicts and the tables are computed by the benchmark's own functions
(``reproduce_synthetic.summarise`` / ``tables_markdown``), so the output has the layout of
one multi-seed run, plus ``sources``: each file's seeds, arms, command, commit, date and
machine. Pairing stays within a seed (both arms of a paired difference come from the same
file's run of that seed).

Refused, naming the file and the field: a different benchmark configuration (world, size,
schedule, gin files, evaluation settings), a run present in two files with different
numbers, a different "trivial" reference (another test split or evaluation code). The
Δ-density and motion-mask figures, drawn from one seed, are copied from the first file
that has them (``X.json``'s are ``X_delta_density.png`` / ``X_motion_masks.png`` beside
it, as the benchmark writes them).
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks import reproduce_synthetic as rs  # noqa: E402

# settings that say where and how a run was invoked, not what it measured
INVOCATION_FIELDS = frozenset({"output_dir", "model_root", "methods", "seeds", "eval_only",
                               "plot", "output_name", "progress", "cache_dir"})
FIGURES = ("delta_density", "motion_masks")
TRIVIAL_RTOL = 1e-4


def _load(path: str) -> Dict[str, object]:
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable result file ({e})") from e
    if payload.get("benchmark") != "reproduce_synthetic" or "per_run" not in payload:
        raise ValueError(f"{path}: not a reproduce_synthetic result (no 'benchmark': "
                         "'reproduce_synthetic' / 'per_run')")
    return payload


def _difference(a, b, rtol: float, where: str = "") -> Optional[str]:
    """Where a and b first differ (structure, strings, numbers beyond rtol of the larger
    magnitude), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where or '.'}: keys {sorted(a)} vs {sorted(b)}"
        found = (_difference(a[k], b[k], rtol, f"{where}/{k}") for k in a)
        return next((d for d in found if d), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} vs {len(b)} entries"
        found = (_difference(x, y, rtol, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
        return next((d for d in found if d), None)
    numbers = (int, float)
    if (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and abs(a - b) <= rtol * max(abs(a), abs(b))):
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def _check_same(field: str, first_path: str, first, path: str, value,
                rtol: float = 0.0) -> None:
    difference = _difference(common.json_ready(first), common.json_ready(value), rtol)
    if difference:
        raise ValueError(f"{path}: {field} differs from {first_path}'s ({difference}); "
                         "only runs of one benchmark configuration can be combined")


def combine(paths: Sequence[str]) -> Dict[str, object]:
    """The union of the files' runs with the summary recomputed (see the module doc)."""
    return _combine([(p, _load(p)) for p in paths])


def _combine(loaded) -> Dict[str, object]:
    """`combine` on already loaded (path, payload) pairs."""
    if not loaded:
        raise ValueError("no result files given")
    first_path, first = loaded[0]
    per_run: Dict[str, Dict] = {}
    origin: Dict[str, str] = {}
    methods: List[str] = []
    seeds = set()
    trivial, sources = None, []
    for path, payload in loaded:
        config = payload["config"]
        for key in sorted(set(config) | set(first["config"])):
            if key not in INVOCATION_FIELDS:
                _check_same(f"config '{key}'", first_path, first["config"].get(key),
                            path, config.get(key))
        _check_same("dataset 'world'", first_path, first["dataset"]["world"],
                    path, payload["dataset"]["world"])
        if payload.get("trivial_reference") is not None:
            if trivial is None:
                trivial = payload["trivial_reference"]
            else:
                # evaluated on other CPUs: float32 round-off in the pose alignment
                # (ATE-5 differed by 2e-6 relative) is not another test split
                _check_same("trivial_reference", first_path, trivial, path,
                            payload["trivial_reference"], rtol=TRIVIAL_RTOL)
        for key, metrics in payload["per_run"].items():
            if key in per_run and _difference(common.json_ready(per_run[key]),
                                              common.json_ready(metrics), 0.0):
                raise ValueError(f"{path}: run {key} is also in {origin[key]} with other "
                                 "numbers; combine files of different seeds (or "
                                 "identical copies)")
            per_run.setdefault(key, metrics)
            origin.setdefault(key, path)
        for method in config["methods"]:
            if method not in methods:
                methods.append(method)
        seeds.update(config["seeds"])
        sources.append({"file": path, "seeds": config["seeds"], "methods": config["methods"],
                        "metadata": payload.get("metadata"),
                        "training_run": payload.get("training_run"),
                        "timing_seconds": payload.get("timing_seconds")})
    seeds = sorted(seeds)
    summary = rs.summarise(per_run, methods, seeds)
    rows = rs.add_trivial_row(summary, trivial)
    config = dict(first["config"], methods=methods, seeds=seeds)
    return {"benchmark": "reproduce_synthetic", "combined": True, "config": config,
            "dataset": first["dataset"], "protocol": first["protocol"], "sources": sources,
            "per_run": per_run, "trivial_reference": trivial, "summary": summary,
            "table_rows": methods + rows}


def _figure_source(paths: Sequence[str], payloads: Sequence[Dict], name: str):
    for path, payload in zip(paths, payloads):
        candidate = pathlib.Path(path).with_suffix("")
        candidate = candidate.with_name(f"{candidate.name}_{name}.png")
        if candidate.is_file():
            return candidate, payload["config"]["seeds"][0]
    return None, None


def _source_line(source: Dict[str, object]) -> str:
    meta = source.get("metadata") or {}
    machine = meta.get("machine") or {}
    return (f"* seeds {source['seeds']} from `{source['file']}`: `{meta.get('command')}` "
            f"({meta.get('date_utc')}, commit {meta.get('git_commit')}, "
            f"{machine.get('cpu')} x {machine.get('cpu_count')}, wall "
            f"{meta.get('wall_seconds')} s)")


def run(paths: Sequence[str], output_dir: str, output_name: str = "reproduce_synthetic",
        argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Writes ``<output_name>.json`` / ``.md`` (and the copied figures) to output_dir."""
    start = time.time()
    meta = common.run_metadata(argv)
    payloads = [_load(p) for p in paths]
    payload = _combine(list(zip(paths, payloads)))
    rows = payload.pop("table_rows")
    os.makedirs(output_dir, exist_ok=True)
    figures = []
    for name in FIGURES:
        src, seed = _figure_source(paths, payloads, name)
        if src is not None:
            dst = os.path.join(output_dir, f"{output_name}_{name}.png")
            if os.path.abspath(src) != os.path.abspath(dst):
                shutil.copyfile(src, dst)
            payload[f"{name}_figure"] = {"file": dst, "copied_from": str(src), "seed": seed}
            figures.append(f"`{os.path.basename(dst)}`: seed {seed} (from `{src}`)")
    payload["config"]["output_name"] = output_name
    payload["config"]["output_dir"] = output_dir
    payload["metadata"] = common.finish_metadata(meta, start)
    json_path = common.write_json(os.path.join(output_dir, f"{output_name}.json"), payload)
    md = rs.tables_markdown(payload["summary"], rows, payload["config"]["seeds"])
    header = ("# Synthetic reproduction (combined from per-seed result files)\n\n"
              f"Command: `{meta['command']}` ({meta['date_utc']})  \n"
              "Sources (the models were trained and evaluated there):\n\n"
              + "\n".join(_source_line(s) for s in payload["sources"]) + "\n\n"
              + ("Figures: " + "; ".join(figures) + "\n\n" if figures else ""))
    with open(os.path.join(output_dir, f"{output_name}.md"), "w") as f:
        f.write(header + md)
    print(md)
    print(f"[combine] wrote {json_path}", flush=True)
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True,
                   help="comma-separated result JSONs of reproduce_synthetic.py")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--output_name", default="reproduce_synthetic")
    args = p.parse_args(argv)
    run([s for s in args.results.split(",") if s], args.output_dir, args.output_name,
        argv=None if argv is None else [sys.argv[0]] + list(argv))


if __name__ == "__main__":
    main()
