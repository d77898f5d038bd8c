"""Model families. Each takes its own config dataclass and honours
``logits, loss = model(input_ids, targets=None)``; ``build_model`` picks the
class from the config's ``family``."""

from torch import nn

from attnkit.models.decoder import Decoder
from attnkit.models.encoder import Encoder
from attnkit.models.lstm import LSTMLanguageModel
from attnkit.models.seq2seq import Seq2Seq
from attnkit.models.vit import ViT

MODELS: dict[str, type[nn.Module]] = {"decoder": Decoder, "lstm": LSTMLanguageModel}
MODELS["encoder"] = Encoder
MODELS["seq2seq"] = Seq2Seq
MODELS["vit"] = ViT


def build_model(cfg) -> nn.Module:
    """The model for ``cfg`` (any family's config dataclass)."""
    if cfg.family not in MODELS:
        raise ValueError(f"no model registered for family {cfg.family!r}")
    return MODELS[cfg.family](cfg)


__all__ = ["Decoder", "LSTMLanguageModel", "ViT", "MODELS", "build_model"]
