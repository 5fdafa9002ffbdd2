"""Shared plumbing of the Bench evaluators: manifests, prediction files, aggregation, outputs.

Ground truth is a prepared manifest (``lamed.prepared/1``, docs/architecture.md, Contracts), read directly as
JSON here so that Bench depends on nothing but the file format. Every evaluator writes, into
``--out``:

* ``summary.json`` -- ``{"task", "manifest", "predictions", "counts", "overall", "per_dataset",
  "per_class", "unavailable", "settings"}``; each group maps metric name -> value plus ``count``;
* ``per_sample.csv`` -- one row per evaluated sample (id, dataset, class, per-sample metrics);
* ``summary.md`` -- a short markdown table of the groups.

Group means skip non-finite values (e.g. HD95 = inf for a missed structure) and report how many
were skipped as ``<metric>_nonfinite``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

MANIFEST_FORMAT = "lamed.prepared/"


class BenchError(ValueError):
    """Bad input file: the message starts with the file path and names the field."""


def load_manifest(path: str | Path) -> dict:
    """Read and check a prepared-data manifest; returns the JSON dict with ``_root`` (its folder) added."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{path}: manifest not found") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not str(data.get("format", "")).startswith(MANIFEST_FORMAT):
        raise BenchError(
            f"{path}: field 'format' must start with {MANIFEST_FORMAT!r}, got {data.get('format')!r}"
            if isinstance(data, dict)
            else f"{path}: a manifest must be a JSON object"
        )
    items = data.get("items")
    if not isinstance(items, list):
        raise BenchError(f"{path}: field 'items' must be a list")
    seen = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise BenchError(f"{path}: items[{i}] must be an object with a string 'id'")
        if item["id"] in seen:
            raise BenchError(f"{path}: items[{i}] repeats id {item['id']!r}")
        seen.add(item["id"])
    data["_root"] = path.parent
    data["_path"] = path
    return data


def item_dataset(manifest: Mapping, item: Mapping) -> str:
    """Dataset name of an item: its own ``dataset`` field, else the manifest's."""
    return str(item.get("dataset", manifest.get("dataset", "unknown")))


def read_jsonl(path: str | Path, required: Sequence[str] = ("id",)) -> list[dict]:
    """Read a JSON-lines prediction file; every record must be an object holding ``required`` fields."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: predictions file not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchError(f"{path}: line {n} is not valid JSON ({exc})") from None
        if not isinstance(rec, dict):
            raise BenchError(f"{path}: line {n} must be a JSON object")
        for field in required:
            if field not in rec:
                raise BenchError(f"{path}: line {n} lacks the field {field!r}")
        out.append(rec)
    return out


def _finite(v: Any) -> bool:
    if isinstance(v, bool):
        return True
    return isinstance(v, (int, float)) and math.isfinite(v)


def summarize(rows: Sequence[Mapping], metrics: Sequence[str]) -> dict:
    """Mean of each metric over ``rows`` (finite values only) plus ``count`` and ``<m>_nonfinite``."""
    out: dict = {"count": len(rows)}
    for m in metrics:
        vals = [r[m] for r in rows if m in r and r[m] is not None and r[m] != ""]
        good = [float(v) for v in vals if _finite(v)]
        out[m] = sum(good) / len(good) if good else None
        if len(good) != len(vals):
            out[f"{m}_nonfinite"] = len(vals) - len(good)
    return out


def group_rows(rows: Sequence[Mapping], field: str) -> dict[str, list]:
    groups: dict[str, list] = {}
    for r in rows:
        key = r.get(field)
        if key is None or key == "":
            continue
        groups.setdefault(str(key), []).append(r)
    return dict(sorted(groups.items()))


def aggregate(rows: Sequence[Mapping], metrics: Sequence[str], class_field: str | None = "class") -> dict:
    """``{"overall": .., "per_dataset": {name: ..}, "per_class": {name: ..}}`` of :func:`summarize`."""
    out = {
        "overall": summarize(rows, metrics),
        "per_dataset": {k: summarize(v, metrics) for k, v in group_rows(rows, "dataset").items()},
    }
    out["per_class"] = (
        {k: summarize(v, metrics) for k, v in group_rows(rows, class_field).items()} if class_field else {}
    )
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def markdown_table(summary: Mapping, metrics: Sequence[str], title: str) -> str:
    """Rows: overall, each dataset, each class; columns: count and ``metrics``."""
    lines = [f"# {title}", "", "| group | count | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]

    def row(name, group):
        return f"| {name} | {group.get('count', '-')} | " + " | ".join(_fmt(group.get(m)) for m in metrics) + " |"

    lines.append(row("overall", summary["overall"]))
    for name, g in summary.get("per_dataset", {}).items():
        lines.append(row(f"dataset: {name}", g))
    for name, g in summary.get("per_class", {}).items():
        lines.append(row(f"class: {name}", g))
    if summary.get("unavailable"):
        lines += ["", "Not computed: " + "; ".join(f"{k} ({v})" for k, v in summary["unavailable"].items())]
    if summary.get("counts"):
        lines += ["", "Counts: " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items())]
    return "\n".join(lines) + "\n"


def write_outputs(
    out_dir: str | Path,
    summary: dict,
    rows: Sequence[Mapping],
    columns: Sequence[str],
    table_metrics: Sequence[str],
    title: str,
) -> dict[str, Path]:
    """Write ``summary.json``, ``per_sample.csv`` and ``summary.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "per_sample": out / "per_sample.csv", "table": out / "summary.md"}

    def clean(obj):
        if isinstance(obj, float) and not math.isfinite(obj):
            return str(obj)  # JSON has no inf/nan
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, Path):
            return str(obj)
        return obj

    paths["summary"].write_text(json.dumps(clean(summary), indent=2) + "\n", encoding="utf-8")
    with paths["per_sample"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in columns})
    paths["table"].write_text(markdown_table(summary, table_metrics, title), encoding="utf-8")
    return paths


def base_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the three arguments every evaluator has."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--predictions", required=True, help="prediction file or folder (format in the module docstring)")
    p.add_argument("--manifest", required=True, help="prepared-data manifest JSON holding the ground truth")
    p.add_argument("--out", required=True, help="output folder for summary.json, per_sample.csv, summary.md")
    return p


def match_ids(manifest: Mapping, pred_ids: Iterable[str], pred_path: str | Path) -> None:
    """Refuse predictions whose id is not in the manifest."""
    known = {it["id"] for it in manifest["items"]}
    unknown = sorted(set(pred_ids) - known)
    if unknown:
        raise BenchError(
            f"{pred_path}: {len(unknown)} prediction id(s) not in manifest {manifest['_path']}: {unknown[:5]}"
        )
