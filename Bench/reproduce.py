"""Reproduce a released system's published numbers: run its evaluation protocol, print one table.

    python -m Bench.reproduce med3dvlm --models retrieval=runs/med3dvlm_siglip,mrg=runs/med3dvlm_qwen,vqa=runs/med3dvlm_qwen \
        --data retrieval=data/m3d_cap/test.json,mrg=data/m3d_cap/test.json,vqa=data/m3d_vqa/test.json --out results/repro
    python -m Bench.reproduce hsenet --predictions mrg=preds/hsenet_mrg.jsonl --data mrg=data/ct_rate/test.json --out r/
    python -m Bench.reproduce --list

The published values are data: ``Bench/published/<system>.yaml`` (M3D, SegVol, Med3DVLM incl. its
FLARE 2025 figures, Text3DSAM, HSENet, R1Seg-3D), each number with its source and the protocol it
was measured under. An entry names the ``task`` (a Bench front end), the ``metric`` key of that
task's ``summary.json`` (the Bench evaluator computes it with the function of ``LaMed.metrics``
that carries its name), the ``data`` key of the split it needs (default: the task) and the
protocol's arguments (``run_args`` for ``Bench.run_<task>``, ``eval_args`` for
``Bench.eval_<task>``). Entries the Bench cannot compute say why (``not_reproducible``).

For each (task, split) the harness either runs the model given by ``--models task=PATH`` through
``Bench.run_<task>`` or scores an existing prediction file given by ``--predictions data=PATH``
through ``Bench.eval_<task>``; ``--data data=MANIFEST`` names the prepared split. The table:
metric, published value and source, reproduced value (in the published unit), difference, note.
It fails loudly on an unknown system, task or metric name, a missing split, and on a key of
``--models`` / ``--predictions`` / ``--data`` the system does not use. ``reproduce.json`` and
``reproduce.md`` are written into ``--out``.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from Bench.common import BenchError

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
UNITS = {"percent": 100.0, "fraction": 1.0}


def _retrieval_metric(name: str) -> bool:
    return bool(re.fullmatch(r"(image_to_text|text_to_image)_R@[1-9]\d*", name))


def _known(module: str, attrs: Sequence[str]) -> Callable[[str], bool]:
    def check(name: str) -> bool:
        import importlib

        mod = importlib.import_module(f"Bench.{module}")
        return any(name in getattr(mod, a) for a in attrs)

    return check


@dataclass(frozen=True)
class Task:
    """A Bench task: its model front end, its evaluator and the metric names its summary holds."""

    run: str
    evaluate: str
    known: Callable[[str], bool]
    names: str  # for error messages


TASKS: dict[str, Task] = {
    "retrieval": Task("run_retrieval", "eval_retrieval", _retrieval_metric, "image_to_text_R@K, text_to_image_R@K"),
    "mrg": Task(
        "run_mrg", "eval_mrg", _known("eval_mrg", ("PER_SAMPLE", "CORPUS")), "Bench.eval_mrg PER_SAMPLE + CORPUS"
    ),
    "vqa": Task("run_vqa", "eval_vqa", _known("eval_vqa", ("METRICS",)), "Bench.eval_vqa METRICS"),
    "pos": Task("run_pos", "eval_pos", _known("eval_pos", ("METRICS",)), "Bench.eval_pos METRICS"),
    "seg": Task("run_seg", "eval_seg", _known("eval_seg", ("METRICS",)), "Bench.eval_seg METRICS"),
    "classify": Task(
        "run_classify", "eval_classify", _known("eval_classify", ("METRICS",)), "Bench.eval_classify METRICS"
    ),
    # GREEN on generated reports (LaMed.metrics.green, a local judge model): run_mrg, then the judge.
    "green": Task("run_mrg", "green", lambda n: n == "green", "green"),
}


@dataclass
class Entry:
    """One published number."""

    name: str
    published: float
    unit: str
    source: str
    task: str = ""
    metric: str = ""
    data: str = ""
    protocol: str = ""
    run_args: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()
    not_reproducible: str = ""

    @property
    def group(self) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
        return (self.task, self.data, self.run_args, self.eval_args)


@dataclass
class System:
    name: str
    paper: str
    entries: list[Entry]
    not_found: list[str] = field(default_factory=list)
    path: str = ""


def list_systems() -> list[str]:
    return sorted(p.stem for p in PUBLISHED_DIR.glob("*.yaml"))


def load_system(name_or_path: str | Path) -> System:
    """Read and check ``Bench/published/<name>.yaml`` (or a YAML path)."""
    import yaml

    p = Path(name_or_path)
    if not p.suffix:
        p = PUBLISHED_DIR / f"{str(name_or_path).lower()}.yaml"
        if not p.is_file():
            raise BenchError(f"unknown system {str(name_or_path)!r}; known: {list_systems()} (or a YAML path)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{p}: published-values file not found") from None
    except yaml.YAMLError as exc:
        raise BenchError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
        raise BenchError(f"{p}: expected a mapping with 'system', 'paper' and a 'metrics' list")
    for key in ("system", "paper"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise BenchError(f"{p}: field {key!r} must be a non-empty string")
    entries, names = [], set()
    allowed = {
        "name",
        "published",
        "unit",
        "source",
        "task",
        "metric",
        "data",
        "protocol",
        "run_args",
        "eval_args",
        "not_reproducible",
    }
    for i, m in enumerate(data["metrics"]):
        where = f"{p}: metrics[{i}]"
        if not isinstance(m, dict):
            raise BenchError(f"{where}: expected a mapping")
        extra = set(m) - allowed
        if extra:
            raise BenchError(f"{where}: unknown field(s) {sorted(extra)}")
        name = m.get("name")
        if not isinstance(name, str) or not name.strip() or name in names:
            raise BenchError(f"{where}: 'name' must be a non-empty string, unique in the file (got {name!r})")
        names.add(name)
        if not isinstance(m.get("published"), (int, float)) or isinstance(m.get("published"), bool):
            raise BenchError(f"{where} ({name}): 'published' must be a number")
        if not isinstance(m.get("source"), str) or not m["source"].strip():
            raise BenchError(f"{where} ({name}): every number needs its 'source' (paper table / README)")
        unit = m.get("unit", "fraction")
        if unit not in UNITS:
            raise BenchError(f"{where} ({name}): unit {unit!r} is not one of {sorted(UNITS)}")
        e = Entry(
            name,
            float(m["published"]),
            unit,
            m["source"],
            protocol=str(m.get("protocol", "")),
            not_reproducible=str(m.get("not_reproducible", "")),
        )
        if not e.not_reproducible:
            task, metric = m.get("task"), m.get("metric")
            if task not in TASKS:
                raise BenchError(f"{where} ({name}): unknown task {task!r}; known: {sorted(TASKS)}")
            if not isinstance(metric, str) or not TASKS[task].known(metric):
                raise BenchError(
                    f"{where} ({name}): unknown metric {metric!r} for task {task!r} (known: {TASKS[task].names})"
                )
            for key in ("run_args", "eval_args"):
                v = m.get(key, [])
                if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
                    raise BenchError(f"{where} ({name}): {key!r} must be a list of strings")
            e.task, e.metric, e.data = task, metric, str(m.get("data") or task)
            e.run_args, e.eval_args = tuple(m.get("run_args", [])), tuple(m.get("eval_args", []))
        entries.append(e)
    nf = data.get("not_found") or []
    return System(data["system"], data["paper"], entries, [str(x) for x in nf], str(p))


# ------------------------------------------------------------------------------------------- running


def _green(predictions: Path, manifest: str, out: Path, green_model: str | None) -> dict:
    """GREEN of a report prediction file against the manifest's ``text`` (``LaMed.metrics.green``)."""
    from Bench.common import load_manifest, match_ids, read_jsonl
    from LaMed.metrics.base import MetricUnavailable
    from LaMed.metrics.text_model import green
    from LaMed.utils.atomic import write_json_atomic

    man = load_manifest(manifest)
    recs = read_jsonl(predictions, ("id", "prediction"))
    match_ids(man, [r["id"] for r in recs], predictions)
    by_id = {it["id"]: it for it in man["items"]}
    summary = {
        "task": "green",
        "manifest": str(manifest),
        "predictions": str(predictions),
        "overall": {},
        "unavailable": {},
    }
    try:
        res = green([r["prediction"] for r in recs], [by_id[r["id"]]["text"] for r in recs], model_path=green_model)
        summary["overall"] = {"green": res["mean"], "count": len(recs)}
    except MetricUnavailable as exc:
        summary["unavailable"]["green"] = str(exc)
    write_json_atomic(out / "summary.json", summary)
    return summary


def _bench_main(module: str, argv: list[str]) -> dict:
    import importlib

    return importlib.import_module(f"Bench.{module}").main(argv)


def run_group(
    task: str,
    manifest: str,
    out: Path,
    model: str | None,
    predictions: str | None,
    run_args: Sequence[str],
    eval_args: Sequence[str],
    green_model: str | None = None,
) -> tuple[dict, str]:
    """Run or score one (task, split); returns ``(summary, how)``."""
    t = TASKS[task]
    out.mkdir(parents=True, exist_ok=True)
    if predictions:
        if task == "green":
            return _green(Path(predictions), manifest, out, green_model), f"scored {predictions}"
        argv = ["--predictions", predictions, "--manifest", manifest, "--out", str(out), *eval_args]
        return _bench_main(t.evaluate, argv), f"Bench.{t.evaluate} on {predictions}"
    argv = ["--model", str(model), "--manifest", manifest, "--out", str(out), *run_args]
    summary = _bench_main(t.run, argv)
    if task == "green":
        return _green(out / "predictions.jsonl", manifest, out, green_model), f"Bench.{t.run} + GREEN with {model}"
    return summary, f"Bench.{t.run} with {model}"


def _pairs(items: Sequence[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for chunk in items:
        for part in str(chunk).split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise BenchError(f"{option}: expected KEY=VALUE, got {part!r}")
            out[key.strip()] = value.strip()
    return out


def reproduce(
    system: str | Path,
    out: str | Path,
    models: Mapping[str, str] = (),
    predictions: Mapping[str, str] = (),
    data: Mapping[str, str] = (),
    only: Sequence[str] = (),
    extra_run: Mapping[str, str] = (),
    extra_eval: Mapping[str, str] = (),
    green_model: str | None = None,
) -> dict:
    """Run the published protocol of ``system``; returns ``{"system", "paper", "rows", "not_found"}``."""
    from LaMed.utils.atomic import atomic_write_text, write_json_atomic

    sysd = load_system(system)
    models, predictions, data = dict(models or {}), dict(predictions or {}), dict(data or {})
    extra_run, extra_eval = dict(extra_run or {}), dict(extra_eval or {})
    entries = sysd.entries
    if only:
        known = {e.name for e in entries}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise BenchError(f"--only: unknown metric name(s) {unknown} for {sysd.name}; known: {sorted(known)}")
        entries = [e for e in entries if e.name in only]
    tasks = {e.task for e in entries if e.task}
    keys = {e.data for e in entries if e.task}
    for option, given, valid in (
        ("--models", models, tasks),
        ("--predictions", predictions, keys),
        ("--data", data, keys),
        ("--run-args", extra_run, tasks),
        ("--eval-args", extra_eval, tasks),
    ):
        bad = sorted(set(given) - valid)
        if bad:
            raise BenchError(
                f"{option}: {sysd.name} has no {'task' if valid is tasks else 'split'} {bad}; "
                f"its {'tasks' if valid is tasks else 'splits'}: {sorted(valid)}"
            )
    out = Path(out)
    results: dict[tuple, tuple[dict | None, str]] = {}
    for e in entries:
        if not e.task or e.group in results:
            continue
        model, preds = models.get(e.task), predictions.get(e.data)
        if not model and not preds:
            results[e.group] = (None, f"not run: give --models {e.task}=PATH or --predictions {e.data}=PATH")
            continue
        manifest = data.get(e.data)
        if not manifest:
            raise BenchError(f"{sysd.name} / {e.name}: no split given: --data {e.data}=<prepared manifest>")
        if not Path(manifest).is_file():
            raise BenchError(f"{sysd.name} / {e.name}: split {e.data!r} not found: {manifest}")
        folder = out / f"{e.task}_{e.data}_{len(results)}"
        results[e.group] = run_group(
            e.task,
            manifest,
            folder,
            model,
            preds,
            [*e.run_args, *shlex.split(extra_run.get(e.task, ""))],
            [*e.eval_args, *shlex.split(extra_eval.get(e.task, ""))],
            green_model,
        )
    rows = []
    for e in entries:
        row = {
            "metric": e.name,
            "published": e.published,
            "unit": e.unit,
            "source": e.source,
            "reproduced": None,
            "difference": None,
            "note": e.not_reproducible or e.protocol,
        }
        if e.task:
            row["task"], row["key"] = e.task, e.metric
            summary, how = results[e.group]
            if summary is None:
                row["note"] = how
            else:
                v = summary.get("overall", {}).get(e.metric)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    row["reproduced"] = float(v) * UNITS[e.unit]
                    row["difference"] = row["reproduced"] - e.published
                    row["note"] = how + (f"; {e.protocol}" if e.protocol else "")
                else:
                    why = (summary.get("unavailable") or {}).get(e.metric) or "not in the evaluator's summary"
                    row["note"] = f"not computed: {why}"
        rows.append(row)
    result = {
        "system": sysd.name,
        "paper": sysd.paper,
        "published_file": sysd.path,
        "rows": rows,
        "not_found": sysd.not_found,
    }
    write_json_atomic(out / "reproduce.json", result)
    atomic_write_text(out / "reproduce.md", table(result))
    return result


def _num(v: float | None, unit: str, sign: bool = False) -> str:
    """Percentages with 2 decimals (as papers print them), fractions with 4."""
    if v is None:
        return "-"
    return format(v, ("+" if sign else "") + (".2f" if unit == "percent" else ".4f"))


def table(result: Mapping) -> str:
    """The markdown table: metric, published (source), reproduced, difference, note."""
    lines = [
        f"# {result['system']}: published vs reproduced",
        "",
        f"Paper: {result['paper']}",
        "",
        "| metric | published | source | reproduced | difference | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        unit = r["unit"]
        diff = _num(r["difference"], unit, sign=True)
        pub = _num(r["published"], unit) + (" %" if unit == "percent" else "")
        lines.append(
            f"| {r['metric']} | {pub} | {r['source']} | {_num(r['reproduced'], unit)} | {diff} | {r['note']} |"
        )
    if not result["rows"]:
        lines.append("| (no published number could be cited) | - | - | - | - | - |")
    if result.get("not_found"):
        lines += ["", "Not listed (no citable number): " + "; ".join(result["not_found"])]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description="Run a released system's published evaluation protocol and compare with its published numbers"
    )
    p.add_argument("system", nargs="?", help=f"one of {list_systems()} or a published-values YAML")
    p.add_argument(
        "--models", action="append", default=[], help=f"TASK=MODEL_DIR[,TASK=...] (tasks: {', '.join(sorted(TASKS))})"
    )
    p.add_argument("--predictions", action="append", default=[], help="SPLIT=FILE: score existing predictions")
    p.add_argument("--data", action="append", default=[], help="SPLIT=MANIFEST: the prepared split of each entry")
    p.add_argument(
        "--only", action="append", default=[], help="a metric name of the system's table; repeat for several"
    )
    p.add_argument("--run-args", action="append", default=[], help="TASK='extra args' for Bench.run_<task>")
    p.add_argument("--eval-args", action="append", default=[], help="TASK='extra args' for Bench.eval_<task>")
    p.add_argument(
        "--green-model", default=None, help="local folder of the GREEN judge (StanfordAIMI/GREEN-radllama2-7b)"
    )
    p.add_argument("--out", default="results/reproduce", help="output folder")
    p.add_argument("--list", action="store_true", help="list the systems and their published metrics")
    a = p.parse_args(argv)
    if a.list or not a.system:
        for name in list_systems():
            s = load_system(name)
            print(f"{name}: {s.name} ({s.paper})")
            for e in s.entries:
                print(f"  - {e.name}: {e.published} {e.unit} [{e.task or 'not reproducible'}] ({e.source})")
        return {}

    def kv(items, option):  # TASK='args with spaces' may hold commas inside quotes: split on the first '='
        out = {}
        for it in items:
            k, sep, v = it.partition("=")
            if not sep or not k.strip():
                raise BenchError(f"{option}: expected TASK='args', got {it!r}")
            out[k.strip()] = v
        return out

    result = reproduce(
        a.system,
        a.out,
        _pairs(a.models, "--models"),
        _pairs(a.predictions, "--predictions"),
        _pairs(a.data, "--data"),
        [n.strip() for n in a.only if n.strip()],
        kv(a.run_args, "--run-args"),
        kv(a.eval_args, "--eval-args"),
        a.green_model,
    )
    print(table(result))
    return result


if __name__ == "__main__":
    main()
