"""CLIP losses against direct, unoptimised computations; gathered loss on 2 processes (gloo)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from LaMed.models.clip.losses import (
    consistency_loss,
    consistency_weight,
    effective_scale,
    infonce_loss,
    siglip_loss,
)


def features(n=6, p=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, p, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(n, p, generator=g, dtype=torch.float64), dim=-1)
    return x, y


def direct_infonce(x, y, s):
    """Textbook symmetric InfoNCE with explicit sums."""
    n = x.shape[0]
    i2t = t2i = 0.0
    for i in range(n):
        row = [math.exp(s * float(x[i] @ y[j])) for j in range(n)]
        col = [math.exp(s * float(y[i] @ x[j])) for j in range(n)]
        i2t += -math.log(row[i] / sum(row))
        t2i += -math.log(col[i] / sum(col))
    return (i2t / n + t2i / n) / 2


def direct_siglip(x, y, s, b, symmetric=False):
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            logit = s * float(x[i] @ y[j]) + b
            if symmetric:
                logit = (logit + s * float(x[j] @ y[i]) + b) / 2
            z = 1.0 if i == j else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return total / n


def test_infonce_equals_direct_computation():
    x, y = features()
    s = torch.tensor(7.5, dtype=torch.float64)
    loss, lpi, lpt = infonce_loss(x, y, s)
    assert loss.item() == pytest.approx(direct_infonce(x, y, 7.5), rel=1e-9)
    torch.testing.assert_close(lpt, lpi.T)


@pytest.mark.parametrize("symmetric", [False, True])
def test_siglip_equals_direct_computation(symmetric):
    x, y = features(seed=1)
    loss, lpi, _ = siglip_loss(
        x, y, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64), symmetric=symmetric
    )
    assert loss.item() == pytest.approx(direct_siglip(x, y, 10.0, -3.0, symmetric), rel=1e-9)
    if symmetric:
        torch.testing.assert_close(lpi, lpi.T)


def test_logit_scale_modes():
    # exp mode: exp(ln 200) = 200 clamped at 100; raw mode: the parameter itself (published M3D quirk).
    assert effective_scale(torch.tensor(math.log(200.0)), "exp", 100.0).item() == pytest.approx(100.0)
    assert effective_scale(torch.tensor(math.log(1 / 0.07)), "exp").item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert effective_scale(torch.tensor(2.6593), "raw").item() == pytest.approx(2.6593)
    # Above the clamp the scale gets no gradient (it stops growing), below it does.
    p = torch.tensor(math.log(200.0), requires_grad=True)
    effective_scale(p, "exp").backward()
    assert p.grad.item() == 0.0
    with pytest.raises(ValueError, match="logit_scale_mode"):
        effective_scale(p, "linear")
    # Med3DVLM's SigLIP (imported with logit_scale_max=None): exp(t') unbounded, gradient exp(t') too.
    q = torch.tensor(math.log(200.0), requires_grad=True)
    scale = effective_scale(q, "exp", None)
    scale.backward()
    assert scale.item() == pytest.approx(200.0) and q.grad.item() == pytest.approx(200.0)


def test_an_unclamped_siglip_model_scales_by_exp_t():
    from transformers import BertConfig

    from LaMed.models.clip import LamedClipConfig, LamedClipModel

    text = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=32,
        max_position_embeddings=16,
    ).to_dict()
    common = dict(
        vision_encoder="vit3d_test",
        text_config=text,
        projection_dim=8,
        loss_type="siglip",
        logit_scale_mode="exp",
        logit_scale_init=math.log(150.0),
    )
    clamped = LamedClipModel(LamedClipConfig(**common))
    free = LamedClipModel(LamedClipConfig(**common, logit_scale_max=None))
    assert clamped.scale.item() == pytest.approx(100.0) and free.scale.item() == pytest.approx(150.0, rel=1e-5)
    with pytest.raises(ValueError, match="logit_scale_max"):
        LamedClipConfig(**common, logit_scale_max=0.0)


def test_consistency_loss_and_its_decaying_weight():
    g = torch.Generator().manual_seed(3)
    s_i2t, t_i2t = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    s_t2i, t_t2i = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    expected = (((s_i2t - t_i2t) ** 2).mean() + ((s_t2i - t_t2i) ** 2).mean()) / 2
    got = consistency_loss((s_i2t.requires_grad_(), s_t2i), (t_i2t.requires_grad_(), t_t2i))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got.backward()
    assert t_i2t.grad is None  # the teacher side is detached
    torch.testing.assert_close(s_i2t.grad, (s_i2t - t_i2t).detach() / 16)  # d/dS of mean((S-T)^2)/2
    # HSENet: w = 0.1 * (1 - step / 5000) before step 5000, then 0.
    assert consistency_weight(0) == pytest.approx(0.1)
    assert consistency_weight(2500) == pytest.approx(0.05)
    assert consistency_weight(4999) == pytest.approx(0.1 / 5000)
    assert consistency_weight(5000) == 0.0 and consistency_weight(10**6) == 0.0


def test_shape_errors_are_readable():
    x, y = features()
    with pytest.raises(ValueError, match=r"\(B, P\)"):
        infonce_loss(x, y[:3], torch.tensor(1.0))
    with pytest.raises(ValueError, match="shape"):
        consistency_loss((x @ y.T, x @ y.T), (torch.zeros(2, 2), torch.zeros(2, 2)))


# ---- two processes ----------------------------------------------------------------------------
B, P, WORLD = 3, 5, 2


@pytest.mark.multiproc
def test_gathered_loss_on_two_ranks_equals_single_process_loss(tmp_path):
    """Each rank holds half the batch; after DDP's gradient averaging the result must equal one
    process training on the concatenated batch: the (mean over ranks of the) loss equals the
    single-process loss, and each rank's feature gradient divided by the world size equals the
    single-process gradient of its rows."""
    import torch.multiprocessing as mp
    from clip_dist_worker import host_store, two_rank_worker

    store, port = host_store()  # outlives both ranks (see clip_dist_worker)
    mp.spawn(two_rank_worker, args=(port, str(tmp_path), B, P, 5), nprocs=WORLD, join=True)
    del store
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    x_all, y_all = features(B * WORLD, P, seed=5)
    singles = {
        "infonce": lambda x, y: infonce_loss(x, y, torch.tensor(6.0, dtype=torch.float64))[0],
        "siglip_global": lambda x, y: siglip_loss(
            x, y, torch.tensor(8.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64), symmetric=True
        )[0],
        "siglip_local": lambda x, y: siglip_loss(
            x, y, torch.tensor(8.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
        )[0],
    }
    for name, single_name in (
        ("infonce_global", "infonce"),
        ("infonce_local", "infonce"),
        ("siglip_global", "siglip_global"),
        ("siglip_local", "siglip_local"),
    ):
        x = x_all.clone().requires_grad_()
        y = y_all.clone().requires_grad_()
        ref = singles[single_name](x, y)
        ref.backward()
        mean_loss = sum(r[name][0] for r in ranks) / WORLD
        assert mean_loss.item() == pytest.approx(ref.item(), rel=1e-9), name
        if name.endswith("global"):  # every rank computes the very same global loss
            assert ranks[0][name][0].item() == pytest.approx(ranks[1][name][0].item(), rel=1e-12)
        for r in range(WORLD):
            rows = slice(r * B, (r + 1) * B)
            torch.testing.assert_close(ranks[r][name][1] / WORLD, x.grad[rows], msg=f"{name} image grad rank {r}")
            torch.testing.assert_close(ranks[r][name][2] / WORLD, y.grad[rows], msg=f"{name} text grad rank {r}")
