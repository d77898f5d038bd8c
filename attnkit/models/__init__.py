"""Model families. Each takes one config dataclass and honours
``logits, loss = model(input_ids, targets=None)``."""

from attnkit.config import ModelConfig
from attnkit.models.decoder import Decoder

MODELS = {"decoder": Decoder}


def build_model(cfg: ModelConfig) -> Decoder:
    return Decoder(cfg)


__all__ = ["Decoder", "MODELS", "build_model"]
