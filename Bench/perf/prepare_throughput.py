"""Throughput of ``prepare_volumes`` on real-size CT volumes: one worker against two.

    python -m Bench.perf.prepare_throughput                    # 6 volumes of 300x512x512, preset m3d
    python -m Bench.perf.prepare_throughput --n 4 --size 200 512 512 --keep /tmp/bench_volumes
    python -m Bench.perf.prepare_throughput --dataset ct_rate   # the CT-RATE preparer, 4 x 300x512x512 .nii.gz

``--dataset ct_rate`` writes a fake CT-RATE raw copy instead (``dataset/valid/...`` int16 ``.nii.gz``
stored as HU + 1024 without header scaling, with the report / label / metadata CSVs, as CT-RATE
ships its original volumes) and times ``lamed prepare ct_rate`` (metadata rescale, ``hsenet``
preset to 32x256x256 and the 32-slice 2D branch, no slice model) with 1 and ``--workers`` workers:
volumes/s of each, their ratio and the machine's own 2-process ceiling.

Setup (not timed): phantom-like int16 CT volumes of ``--size`` (D, H, W) voxels are drawn with
``make_phantom`` (two distinct cases, copied up to ``--n`` files) and written once as uncompressed
``.nii`` into a temporary folder; one ``.nii.gz`` copy is written too.

Figures, one a line:
  * single-volume CPU seconds (``time.process_time`` in this process, after a warm-up): load +
    preset + save of one volume, for ``.nii`` and ``.nii.gz``, with the split per step; target < 1 s
    for 512x512x300 -> 32x256x256;
  * volumes/s of ``prepare_volumes`` with 1 worker (in-process, torch's default threads, then one
    thread) and 2 workers (process pool, one thread each), the same ``.nii`` files, fresh output
    folders; the speed-up ratios (target >= 1.7x). The pool's start-up time is included.
  * the speed-up an ideal CPU-bound job gets from the same number of processes right now: the
    ceiling of the ratios above (a shared machine whose cores are busy gives well below 2x);
  * peak resident memory of this process and of the largest worker (``getrusage`` maxrss).
The input files were just written, so they are read from the page cache: these are CPU figures,
not disk figures. CPU seconds per volume of every run (this process plus its workers) are printed
too: unlike the rates they do not depend on what else the machine is running (the load average
is printed at the start and the end).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_nifti(path: Path, hu: np.ndarray, spacing) -> None:
    """Canonical (D, H, W) = (S, P, L) int16 array -> RAS NIfTI (x, y, z), as a scanner export would be."""
    import nibabel as nib

    data = np.ascontiguousarray(hu.transpose(2, 1, 0)[::-1, ::-1, :])
    sd, sh, sw = spacing
    nx, ny, _ = data.shape
    affine = np.array([[sw, 0, 0, -(nx - 1) * sw / 2], [0, sh, 0, -(ny - 1) * sh / 2], [0, 0, sd, 0], [0, 0, 0, 1.0]])
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(np.int16)
    nib.save(img, str(path))


def make_inputs(folder: Path, n: int, size, distinct: int = 2) -> tuple[list[Path], Path, float]:
    from LaMed.data.phantom import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = []
    for i in range(n):
        path = folder / f"vol_{i:02d}.nii"
        gz_path = folder.parent / "single" / "vol_00.nii.gz"
        if path.is_file() and gz_path.is_file():  # --keep folder of an earlier run: reuse
            files.append(path)
            continue
        if i < distinct:
            ph = make_phantom(i, shape=size)
            write_nifti(path, ph.image, ph.spacing)
            if i == 0:
                gz = folder.parent / "single" / "vol_00.nii.gz"
                gz.parent.mkdir(parents=True, exist_ok=True)
                write_nifti(gz, ph.image, ph.spacing)
            del ph
        else:
            shutil.copyfile(files[i % distinct], path)
        files.append(path)
    return files, folder.parent / "single" / "vol_00.nii.gz", time.perf_counter() - t0


def single_volume_cost(path: Path, out: Path, preset: str) -> dict:
    """CPU and wall seconds of load, preset and save of one volume in this process."""
    from LaMed.data.io import load_volume
    from LaMed.data.prepared import write_image
    from LaMed.data.transforms import apply_preset

    res = {}
    c0, w0 = time.process_time(), time.perf_counter()
    vol = load_volume(path)
    c1 = time.process_time()
    prep = apply_preset(preset, vol.array, vol.spacing)
    c2 = time.process_time()
    write_image(out, "single", prep["image"])
    c3, w3 = time.process_time(), time.perf_counter()
    res.update(
        load_cpu=c1 - c0,
        preset_cpu=c2 - c1,
        save_cpu=c3 - c2,
        total_cpu=c3 - c0,
        total_wall=w3 - w0,
        shape=vol.shape,
        out_shape=tuple(prep["image"].shape),
    )
    return res


def _spin(_) -> None:
    a = np.linspace(0.0, 1.0, 1_000_000)
    for _ in range(60):
        a = np.sin(a)


def machine_scaling(workers: int) -> float:
    """Speed-up of ``workers`` processes over one on an ideal CPU-bound numpy job: the ceiling the
    pool can reach on this machine right now (below ``workers`` when other work holds the cores)."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    for i in range(2 * workers):
        _spin(i)
    serial = time.perf_counter() - t0
    with mp.get_context("fork").Pool(workers) as pool:
        t0 = time.perf_counter()
        pool.map(_spin, range(2 * workers))
        parallel = time.perf_counter() - t0
    return serial / parallel


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def make_ct_rate_raw(root: Path, n: int, size) -> float:
    """A CT-RATE raw layout with ``n`` volumes of ``size`` (two distinct phantoms, copied)."""
    import csv

    from LaMed.data.phantom import make_phantom

    t0 = time.perf_counter()
    first = []
    names = [f"valid_{i + 1}_a_1" for i in range(n)]
    for i, name in enumerate(names):
        path = root / "dataset" / "valid" / f"valid_{i + 1}" / f"valid_{i + 1}_a" / f"{name}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            continue
        if i < 2:
            ph = make_phantom(i, shape=size)
            write_nifti(path, (ph.image.astype(np.int32) + 1024).astype(np.int16), ph.spacing)
            first.append(path)
            del ph
        else:
            shutil.copyfile(
                first[i % 2] if first else path.parents[2] / "valid_1" / "valid_1_a" / "valid_1_a_1.nii.gz", path
            )
    d = root / "dataset"
    for sub, fname, header, row in (
        (
            "radiology_text_reports",
            "validation_reports.csv",
            ["VolumeName", "Findings_EN", "Impressions_EN"],
            lambda v: [v, "Bilateral lower lobe atelectasis. No effusion.", "Atelectasis."],
        ),
        (
            "multi_abnormality_labels",
            "valid_predicted_labels.csv",
            ["VolumeName", "Atelectasis", "Emphysema"],
            lambda v: [v, 1, 0],
        ),
        (
            "metadata",
            "validation_metadata.csv",
            ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"],
            lambda v: [v, 1, -1024, "[0.75, 0.75]", 1.0],
        ),
    ):
        (d / sub).mkdir(parents=True, exist_ok=True)
        with open(d / sub / fname, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for v in names:
                w.writerow(row(f"{v}.nii.gz"))
    return time.perf_counter() - t0


def ct_rate_benchmark(args, root: Path) -> int:
    """Volumes/s of the CT-RATE preparer on 1 and ``args.workers`` workers."""
    n = args.n or 4
    size = tuple(args.size)
    t_make = make_ct_rate_raw(root / "raw", n, size)
    f0 = next((root / "raw").rglob("*.nii.gz"))
    print(
        f"inputs: {n} x {'x'.join(map(str, size))} int16 CT-RATE .nii.gz ({f0.stat().st_size / 2**20:.0f} MB each) "
        f"+ CSVs, written in {t_make:.1f} s"
    )
    from Data.ct_rate import PREPARER

    # Warm-up on one volume: imports and first-call costs do not belong to the timed runs.
    PREPARER.prepare(root / "raw", root / "warm", no_progress=True, limit=1)
    rates = {}
    for workers in (1, args.workers):
        out = root / f"out_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
        s = PREPARER.prepare(root / "raw", out, workers=workers, no_progress=True)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0 + _children_cpu() - k0
        if s.failed or not s.validation.ok:
            print(f"FAILED: {s}\n{s.validation}", file=sys.stderr)
            return 1
        rates[workers] = s.written / dt
        print(
            f"ct_rate_volumes_per_s[workers={workers}]: {rates[workers]:.3f} ({s.written} volumes in {dt:.1f} s; "
            f"{cpu / s.written:.2f} CPU s per volume incl. 2D slices, all processes)"
        )
    w = args.workers
    print(f"ct_rate_speedup[{w} workers vs 1]: {rates[w] / rates[1]:.2f}x")
    print(
        f"machine_scaling[{w} processes, ideal numpy job]: {machine_scaling(w):.2f}x "
        f"(the ceiling of the ratio above on this machine now)"
    )
    print(f"load average at end: {_load()}")
    print(f"peak_rss_largest_worker: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="number of volumes (default 6; 4 with --dataset ct_rate)")
    ap.add_argument(
        "--dataset",
        choices=("volumes", "ct_rate"),
        default="volumes",
        help="prepare_volumes on plain NIfTI (default) or the CT-RATE preparer on a CT-RATE layout",
    )
    ap.add_argument(
        "--size",
        type=int,
        nargs=3,
        default=(300, 512, 512),
        metavar=("D", "H", "W"),
        help="volume size in voxels (default 300 512 512)",
    )
    ap.add_argument("--preset", default="m3d")
    ap.add_argument("--workers", type=int, default=2, help="pool size compared with 1 worker (default 2)")
    ap.add_argument("--keep", default=None, help="write the inputs here and keep them (default: a temp folder)")
    args = ap.parse_args(argv)

    # Wall-clock figures are only meaningful on an idle machine: print the load to judge them.
    print(f"cpus: {os.cpu_count()}, load average (1/5/15 min) at start: {_load()}")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lamed_prepare_bench_"))
    if args.dataset == "ct_rate":
        try:
            return ct_rate_benchmark(args, root)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    args.n = args.n or 6
    try:
        files, gz, t_make = make_inputs(root / "nii", args.n, tuple(args.size))
        mb = files[0].stat().st_size / 2**20
        print(
            f"inputs: {args.n} x {'x'.join(map(str, args.size))} int16 .nii ({mb:.0f} MB each, "
            f"{gz.stat().st_size / 2**20:.0f} MB as .nii.gz), drawn and written in {t_make:.1f} s"
        )

        # Warm-up: imports (torch, nibabel) and first-call costs do not belong to a volume.
        single_volume_cost(files[0], root / "single_out", args.preset)
        for label, path in (("nii", files[1 % len(files)]), ("nii.gz", gz)):
            r = single_volume_cost(path, root / "single_out", args.preset)
            print(
                f"cpu_s_per_volume[{label}]: {r['total_cpu']:.2f} s (load {r['load_cpu']:.2f}, preset "
                f"{r['preset_cpu']:.2f}, save {r['save_cpu']:.2f}; wall {r['total_wall']:.2f} s; "
                f"{'x'.join(map(str, r['shape']))} -> {'x'.join(map(str, r['out_shape'][1:]))}; target < 1 s)"
            )

        import torch

        from LaMed.data.prepare import prepare_volumes

        default_threads = torch.get_num_threads()
        rates = {}
        # 1 worker runs in this process with torch's default threads, then with one thread (the
        # per-worker setting of the pool, so the ratio against it is the pure parallel scaling).
        for label, workers, threads in (
            ("1", 1, default_threads),
            ("1, 1 thread", 1, 1),
            (str(args.workers), args.workers, default_threads),
        ):
            out = root / f"out_{label.replace(', ', '_').replace(' ', '')}"
            shutil.rmtree(out, ignore_errors=True)
            torch.set_num_threads(threads)
            t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
            s = prepare_volumes(root / "nii", out, preset=args.preset, workers=workers, progress=False)
            dt = time.perf_counter() - t0
            cpu = time.process_time() - c0 + _children_cpu() - k0
            torch.set_num_threads(default_threads)
            if s.failed:
                print(f"FAILED: {s}", file=sys.stderr)
                return 1
            rates[label] = s.written / dt
            print(
                f"volumes_per_s[workers={label}]: {rates[label]:.3f} ({s.written} volumes in {dt:.1f} s; "
                f"{cpu / s.written:.2f} CPU s per volume, all processes)"
            )
        w = str(args.workers)
        print(f"speedup[{w} workers vs 1]: {rates[w] / rates['1']:.2f}x (target >= 1.7x)")
        print(f"speedup[{w} workers vs 1 single-threaded]: {rates[w] / rates['1, 1 thread']:.2f}x")
        print(
            f"machine_scaling[{w} processes, ideal numpy job]: {machine_scaling(args.workers):.2f}x "
            f"(the ceiling of the ratios above on this machine now)"
        )

        self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"load average at end: {_load()}")
        print(f"peak_rss_self: {self_mb:.0f} MB (includes drawing the inputs)")
        print(f"peak_rss_largest_worker: {child_mb:.0f} MB")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
