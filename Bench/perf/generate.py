"""Report-generation speed of LaMed models: time to first token and tokens/s, with and without the KV cache.

    python -m Bench.perf.generate                 # tiny and Phi-3-mini-sized configurations
    python -m Bench.perf.generate --configs tiny --new-tokens 256

Random weights (speed does not depend on them); every generation is forced to ``--new-tokens``
steps (EOS ignored). Printed per configuration: TTFT (prefill incl. the volume encoding) and decode
tokens/s with the cache, the same without it, and the ratio of total generation time uncached /
cached (target: >= 5x for 256 new tokens). Also the training-step throughput (samples/s) of the
tiny recipe's model on a batch of phantom-sized inputs. Figures are ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

CONFIGS: dict[str, dict] = {
    # tiny: what the tests and the phantom demo train (configs/recipes/tiny_lamed.yaml: 2 x 128 Phi-3-style LLM,
    # ViT3D test tower on 32x64x64 with 8x16x16 patches, per-token MLP projector, 64 image tokens).
    "tiny": dict(
        text=dict(
            model_type="phi3",
            vocab_size=1000,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        vision="vit3d_test",
        vision_overrides={"img_size": (32, 64, 64), "patch_size": (8, 16, 16)},
        projector="mlp",
        projector_overrides={},
        volume=(1, 32, 64, 64),
    ),
    # phi3: Phi-3-mini-4k geometry (3072 x 32 layers, vocab 32015) + M3D ViT-B + spp (256 tokens): 3.9 B params.
    "phi3": dict(
        text=dict(
            model_type="phi3",
            vocab_size=32015,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
        ),
        vision="vit3d_base",
        vision_overrides={},
        projector="spp",
        projector_overrides={},
        volume=(1, 32, 256, 256),
    ),
}


def build(name: str, dtype=None, layers: int | None = None):
    import torch
    from transformers import CONFIG_MAPPING

    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM

    spec = CONFIGS[name]
    text = dict(spec["text"])
    if layers:
        text["num_hidden_layers"] = layers
    mt = text.pop("model_type")
    tc = CONFIG_MAPPING[mt](**text, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    tc._attn_implementation = "sdpa"
    cfg = LaMedConfig(
        text_config=tc,
        vision_tower=spec["vision"],
        vision_overrides=spec["vision_overrides"],
        vision_feature_stages=spec.get("stages"),
        projector=spec["projector"],
        projector_overrides=spec["projector_overrides"],
        image_token_id=text["vocab_size"] - 1,
    )
    with torch.device("cpu"):
        model = LaMedForCausalLM(cfg).eval()
    if dtype is not None:
        model = model.to(dtype)
    return model, spec


def time_generate(model, spec, new_tokens: int, use_cache: bool, prompt_text_tokens: int = 16):
    """(TTFT s, decode tokens/s, total s) for batch 1, greedy, forced length."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    t = model.num_image_tokens
    vocab = model.config.text_config.vocab_size
    ids = torch.cat(
        [
            torch.tensor([[1]]),
            torch.full((1, t), model.config.image_token_id),
            torch.randint(2, vocab - 2, (1, prompt_text_tokens)),
        ],
        dim=1,
    )
    vol = torch.rand(1, *spec["volume"], dtype=next(model.parameters()).dtype)
    stamps: list[float] = []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    start = time.perf_counter()
    with torch.no_grad():
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            images=vol,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
            eos_token_id=None,
            # random weights may pick <im_patch>; fed back uncached, it would count as a placeholder
            suppress_tokens=[model.config.image_token_id],
            stopping_criteria=StoppingCriteriaList([Stamp()]),
        )
    total = stamps[-1] - start
    rate = (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9)
    return stamps[0] - start, rate, total


def train_step_rate(steps: int = 5, batch: int = 8, seq: int = 220) -> float:
    """Samples/s of fwd+bwd+AdamW on the tiny recipe's model (phantom-sized inputs)."""
    import torch

    model, spec = build("tiny")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t = model.num_image_tokens
    ids = torch.randint(2, 990, (batch, seq))
    ids[:, 1 : 1 + t] = model.config.image_token_id
    labels = ids.clone()
    labels[:, : 1 + t + 10] = -100
    vol = torch.rand(batch, *spec["volume"])
    times = []
    for i in range(steps + 1):
        s = time.perf_counter()
        loss = model(input_ids=ids, images=vol, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:  # the first step is warm-up
            times.append(time.perf_counter() - s)
    return batch / (sum(times) / len(times))


def main(argv: Sequence[str] | None = None) -> dict:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "phi3"], choices=sorted(CONFIGS))
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--phi3-layers", type=int, default=None, help="fewer LLM layers for the phi3 timing (CPU budget)")
    p.add_argument("--bf16", action="store_true", help="run the phi3 configuration in bfloat16")
    a = p.parse_args(argv)
    results = {}
    for name in a.configs:
        model, spec = build(
            name, torch.bfloat16 if (a.bf16 and name != "tiny") else None, a.phi3_layers if name == "phi3" else None
        )
        n_params = sum(x.numel() for x in model.parameters())
        time_generate(model, spec, 4, True)  # warm-up
        ttft_c, rate_c, tot_c = time_generate(model, spec, a.new_tokens, True)
        ttft_u, rate_u, tot_u = time_generate(model, spec, a.new_tokens, False)
        results[name] = dict(
            params=n_params,
            image_tokens=model.num_image_tokens,
            ttft_cached_s=ttft_c,
            tokens_per_s_cached=rate_c,
            ttft_uncached_s=ttft_u,
            tokens_per_s_uncached=rate_u,
            total_cached_s=tot_c,
            total_uncached_s=tot_u,
            speedup=tot_u / tot_c,
        )
        print(
            f"{name}: {n_params / 1e6:.1f} M params, {model.num_image_tokens} image tokens, {a.new_tokens} new tokens\n"
            f"  cached:   TTFT {ttft_c:.3f} s, {rate_c:.1f} tok/s, total {tot_c:.2f} s\n"
            f"  uncached: TTFT {ttft_u:.3f} s, {rate_u:.1f} tok/s, total {tot_u:.2f} s\n"
            f"  cached generation is {tot_u / tot_c:.1f}x faster (target >= 5x)",
            flush=True,
        )
        del model
    rate = train_step_rate()
    results["train_tiny_samples_per_s"] = rate
    print(f"tiny recipe training step: {rate:.1f} samples/s (batch 8, 220 tokens, 32x64x64 volumes)")
    return results


if __name__ == "__main__":
    main()
