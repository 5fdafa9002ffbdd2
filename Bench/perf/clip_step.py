"""CLIP training-step throughput and retrieval-evaluation time.

    python -m Bench.perf.clip_step                      # ViT3D-B + BERT-base, 32x256x256, 512 tokens
    python -m Bench.perf.clip_step --batch 4 --steps 5 --dtypes fp32,bf16 --pairs 2000,100000

Step: forward + backward + AdamW step of the published M3D-CLIP geometry (ViT3D-B, patch 4x16x16 on
32x256x256 with CLS; BERT-base-uncased geometry, random init; reports padded to 512 tokens; InfoNCE),
samples/s after one warm-up step, fp32 and bf16 autocast (CUDA when available, else CPU).
``--activation-checkpointing`` adds a row with both towers checkpointed.

Retrieval: Recall@1/5/10/50/100 in both directions from random L2-normalised 768-d embeddings
(encoding excluded), with ``LaMed.metrics.retrieval`` (chunked ranks). The baseline in the same run
is the naive ``argsort`` of the full similarity matrix (skipped where it would not fit in memory).
Figures are printed as ratios to the baseline (fp32 step / naive ranking) measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def build_model(img_size=(32, 256, 256), vision="vit3d_base"):
    from transformers import BertConfig

    from LaMed.models.clip import LamedClipConfig, LamedClipModel

    text = BertConfig().to_dict()  # bert-base-uncased geometry: 12 x 768, vocab 30522
    text["model_type"] = "bert"
    return LamedClipModel(
        LamedClipConfig(
            vision_encoder=vision,
            vision_overrides={"img_size": list(img_size)},
            text_config=text,
            projection_dim=768,
            logit_scale_mode="raw",
        )
    )


def step_throughput(
    batch: int, steps: int, dtype: str, device: str, img_size, tokens: int, checkpointing: bool = False
) -> dict[str, float]:
    """Samples/s of forward + backward + optimizer step (one warm-up step not timed)."""
    import torch

    torch.manual_seed(0)
    model = build_model(img_size).to(device).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    image = torch.rand(batch, 1, *img_size, device=device)
    ids = torch.randint(1000, 30000, (batch, tokens), device=device)
    mask = torch.ones_like(ids)
    amp = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if dtype == "bf16" else None

    def one():
        if amp is not None:
            with amp:
                loss = model(image=image, input_ids=ids, attention_mask=mask).loss
        else:
            loss = model(image=image, input_ids=ids, attention_mask=mask).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    one()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync()
    seconds = (time.perf_counter() - start) / steps
    out = {"seconds_per_step": seconds, "samples_per_s": batch / seconds}
    if device.startswith("cuda"):
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    one = None  # drop the closure's references so the model and optimizer state are freed before the next size
    return out


def retrieval_time(n: int, dim: int = 768, naive_limit: int = 20000) -> dict[str, float]:
    """Seconds for Recall@K both ways on n random pairs: chunked (LaMed) and naive argsort baseline."""
    from LaMed.metrics.retrieval import recall_at_k_from_embeddings

    rng = np.random.default_rng(0)
    img = rng.standard_normal((n, dim), dtype=np.float32)
    txt = img + 2.0 * rng.standard_normal((n, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ks = [k for k in (1, 5, 10, 50, 100) if k <= n]
    start = time.perf_counter()
    t2i = recall_at_k_from_embeddings(txt, img, ks)
    recall_at_k_from_embeddings(img, txt, ks)
    out = {"chunked_s": time.perf_counter() - start, "text_to_image_R@1": t2i[1]}
    if n <= naive_limit:
        start = time.perf_counter()
        for q, c in ((txt, img), (img, txt)):
            sim = q @ c.T
            order = np.argsort(-sim, axis=1)
            ranks = np.argmax(order == np.arange(n)[:, None], axis=1)
            naive = {k: float(np.mean(ranks < k)) for k in ks}
        out["naive_s"] = time.perf_counter() - start
        out["naive_R@1_image_to_text"] = naive[1]
    return out


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--img-size", default="32,256,256")
    p.add_argument("--pairs", default="2000,100000")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--skip-step", action="store_true")
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    img_size = tuple(int(v) for v in a.img_size.split(","))
    print(
        f"device: {device} ({torch.cuda.get_device_name() if device == 'cuda' else f'{torch.get_num_threads()} threads'})"
    )
    if not a.skip_step:
        rows: list[tuple] = []
        for dtype in a.dtypes.split(","):
            rows.append((dtype, False, step_throughput(a.batch, a.steps, dtype, device, img_size, a.tokens)))
            if a.activation_checkpointing:
                rows.append((dtype, True, step_throughput(a.batch, a.steps, dtype, device, img_size, a.tokens, True)))
        base = rows[0][2]["samples_per_s"]
        print(f"\nCLIP step, ViT3D-B {img_size} + BERT-base {a.tokens} tokens, batch {a.batch}")
        print("| dtype | act. ckpt | s/step | samples/s | vs first row |" + (" peak GiB |" if device == "cuda" else ""))
        for dtype, ck, r in rows:
            mem = f" {r['peak_gib']:.1f} |" if "peak_gib" in r else ""
            print(
                f"| {dtype} | {ck} | {r['seconds_per_step']:.2f} | {r['samples_per_s']:.3f} | "
                f"{r['samples_per_s'] / base:.2f}x |{mem}"
            )
    print("\nRetrieval evaluation (Recall@1/5/10/50/100 both directions, 768-d, encoding excluded)")
    print("| pairs | chunked s | naive argsort s | speed-up |")
    for n in (int(v) for v in a.pairs.split(",") if v):
        r = retrieval_time(n)
        naive = r.get("naive_s")
        print(
            f"| {n} | {r['chunked_s']:.2f} | {naive:.2f} | {naive / r['chunked_s']:.1f}x |"
            if naive is not None
            else f"| {n} | {r['chunked_s']:.2f} | (does not fit: {n}x{n} float32 = {n * n * 4 / 2**30:.0f} GiB) | - |"
        )


if __name__ == "__main__":
    main()
