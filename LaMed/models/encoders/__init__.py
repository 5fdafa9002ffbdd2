"""3D vision encoders. Importing this package registers every built-in variant."""

from LaMed.models.encoders.registry import ENCODERS, create_encoder, list_encoders, register_encoder

__all__ = ["ENCODERS", "create_encoder", "list_encoders", "register_encoder"]
