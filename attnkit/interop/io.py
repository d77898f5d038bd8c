"""Files of a Hugging Face model folder: ``config.json``, safetensors weights (one file or
shards with an index), and output folders written atomically.

Only safetensors and JSON are read - a folder holding nothing but
``pytorch_model.bin`` is refused, because loading it would unpickle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from attnkit.errors import AttnkitError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AttnkitError(f"{path.parent} has no {path.name} (not a {what}; point at the folder "
                           f"save_pretrained wrote)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AttnkitError(f"cannot read {path}: {getattr(e, 'strerror', None) or e} "
                           f"(check the file's permissions)") from None
    except json.JSONDecodeError as e:
        raise AttnkitError(f"{path} is not valid JSON (line {e.lineno}); restore the file") from None


def read_hf_config(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict, or a one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AttnkitError(f"Hugging Face model folder not found: {folder} (point at the folder "
                           f"save_pretrained wrote)")
    data = read_json(folder / "config.json", "Hugging Face model folder")
    if not isinstance(data, dict):
        raise AttnkitError(f"{folder / 'config.json'} is not a JSON object (restore the file)")
    return data


class HFWeights:
    """The tensors of a Hugging Face folder, read lazily by name.

    ``get(name)`` also finds a tensor saved without the base model's ``prefix``
    (the original GPT-2 checkpoints say ``h.0.attn.c_attn.weight`` where
    ``GPT2LMHeadModel`` says ``transformer.h.0...``).
    """

    def __init__(self, folder: Path, prefix: str = "") -> None:
        self.folder, self.prefix = Path(folder), prefix
        self._stack = contextlib.ExitStack()
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        for path in self._files():
            handle = self._open(path)
            for key in handle.keys():
                self._where[key] = path
            self._handles[path] = handle

    def _files(self) -> list[Path]:
        single, index = self.folder / WEIGHTS, self.folder / INDEX
        if single.is_file():
            return [single]
        if index.is_file():
            data = read_json(index, "safetensors index")
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise AttnkitError(f"{index} has no weight_map (restore the file)")
            files = sorted({self.folder / str(f) for f in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise AttnkitError(f"{index} names the shard {f.name}, which is missing "
                                       f"(download the complete model)")
            return files
        if any(self.folder.glob("pytorch_model*.bin")):
            raise AttnkitError(f"{self.folder} holds only pytorch_model.bin weights; attnkit reads "
                               f"safetensors, never pickles (re-save with save_pretrained(..., "
                               f"safe_serialization=True))")
        raise AttnkitError(f"{self.folder} has no {WEIGHTS} (a Hugging Face model folder needs "
                           f"its weights as safetensors)")

    def _open(self, path: Path) -> Any:
        try:
            return self._stack.enter_context(safe_open(str(path), framework="pt"))
        except (SafetensorError, OSError, ValueError) as e:
            raise AttnkitError(f"cannot read {path}: {str(e).splitlines()[0][:160]} (the file is "
                               f"truncated or corrupt; download it again)") from None

    def resolve(self, name: str) -> str | None:
        """The key under which ``name`` is stored, or None."""
        if name in self._where:
            return name
        if self.prefix and name.startswith(self.prefix) and name[len(self.prefix):] in self._where:
            return name[len(self.prefix):]
        return None

    def file_of(self, name: str) -> Path:
        key = self.resolve(name)
        if key is not None:
            return self._where[key]
        return next(iter(self._handles), self.folder / WEIGHTS)

    def check_shapes(self, tensors: dict, expected: dict, sources: dict[str, str],
                     note=None) -> None:
        """Refuse a converted tensor whose shape is not the one config.json implies for the
        attnkit parameter it fills; ``note(source_key)`` may say how the source was changed."""
        for name, t in tensors.items():
            if t.shape != expected[name].shape:
                src = sources[name]
                raise AttnkitError(f"{self.file_of(src)}: tensor '{src}' has shape "
                                   f"{tuple(t.shape)}{note(src) if note else ''}, but config.json "
                                   f"implies {tuple(expected[name].shape)} (the weights do not "
                                   f"match config.json)")

    def get(self, name: str) -> torch.Tensor | None:
        key = self.resolve(name)
        if key is None:
            return None
        path = self._where[key]
        try:
            return self._handles[path].get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise AttnkitError(f"cannot read tensor '{key}' from {path}: "
                               f"{str(e).splitlines()[0][:160]} (the file is truncated or "
                               f"corrupt; download it again)") from None

    def keys(self) -> list[str]:
        return list(self._where)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> HFWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` only when the block completes.

    ``out`` must not exist or be an empty folder: converted files never land on
    top of others.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AttnkitError(f"{out} already exists and is not empty (choose a new output folder, "
                           f"or delete it first)")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise AttnkitError(f"cannot create {out}: {e.strerror or e} (choose a writable "
                           f"location)") from None
    try:
        yield tmp
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AttnkitError(f"cannot write {out}: {e.strerror or e} (free disk space or choose "
                           f"another location)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tokenizer_config(tokenizer, cfg) -> dict:
    """What ``AutoTokenizer`` needs beside ``tokenizer.json`` (``tokenizer`` a Hugging Face
    backed one, ``cfg`` the model's config): the class and the special tokens."""
    out: dict = {"tokenizer_class": "PreTrainedTokenizerFast",
                 "model_max_length": cfg.context_length}
    for name, i in tokenizer.special_tokens.items():
        out[f"{name}_token"] = tokenizer.hf_tokenizer.id_to_token(i)
    return out


def folder_tokenizer(folder: Path):
    """The tokenizer of a Hugging Face model folder (its ``tokenizer.json``), or None."""
    from attnkit.tokenizers import load_tokenizer

    path = folder / "tokenizer.json"
    return load_tokenizer(path) if path.is_file() else None
