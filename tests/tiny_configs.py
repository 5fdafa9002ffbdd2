"""Test helper: small model configs several test modules build from (not a test module)."""

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
