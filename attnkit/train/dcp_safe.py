"""Reading a distributed checkpoint (DCP) folder without running code from it.

PyTorch's own reader would run whatever a crafted checkpoint asks: ``FileSystemReader``
unpickles ``.metadata`` with plain ``pickle.load``, and ``DefaultLoadPlanner.load_bytes``
reads every non-tensor value (the optimizer's ``param_groups``) with
``torch.load(weights_only=False)``. :class:`SafeReader` and :class:`SafePlanner` do the same
work, but ``.metadata`` is unpickled by :class:`MetadataUnpickler`, which builds only the few
classes DCP writes there (:data:`ALLOWED`, found by logging ``find_class`` while reading real
checkpoints), and non-tensor values go through ``torch.load(weights_only=True)``, which builds
only tensors and plain data. (Tensors DCP already reads with ``weights_only=True``.)

Every refusal is an :class:`AttnkitError` naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import IO, Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from attnkit.errors import AttnkitError
from attnkit.weights import corrupt, load_plain, refused

#: module -> the names in it that ``.metadata`` may name. Building any of them runs no code of
#: the file's choosing: dataclasses filled field by field, an enum looked up by value,
#: ``torch.Size`` from a tuple, a layout looked up by name, a path from its parts.
ALLOWED: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset({
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"}),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch": frozenset({"Size"}),  # and every dtype: DTYPES
    # StorageMeta.checkpoint_id: the folder the writer was given, as its OS spells paths.
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}),
}

#: The names of torch's dtypes (``torch.float32`` pickles as ``torch`` . ``float32``).
DTYPES = frozenset(n for n, v in vars(torch).items() if isinstance(v, torch.dtype))

class MetadataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that builds only :data:`ALLOWED` classes and :data:`DTYPES`.

    Names are matched whole, so a dotted name cannot reach into an allowed class."""

    def __init__(self, file: IO[bytes], path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if name in ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and name in DTYPES:
            return getattr(torch, name)
        raise refused(self.path, f"checkpoint metadata ({module}.{name})")


def read_metadata_file(path: Path) -> Metadata:
    """The ``Metadata`` pickled in ``path``, built by :class:`MetadataUnpickler`."""
    try:
        with open(path, "rb") as f:
            metadata = MetadataUnpickler(f, path).load()
    except AttnkitError:
        raise
    except FileNotFoundError:
        raise AttnkitError(f"{path.parent} has no {path.name}, so the sharded checkpoint cannot "
                           f"be read (the checkpoint is damaged; resume from an earlier "
                           f"checkpoint)") from None
    except Exception:  # noqa: BLE001 - truncated or garbage: pickle raises many kinds
        raise corrupt(path) from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise corrupt(path)
    for info in metadata.storage_data.values():
        # DCP opens folder / relative_path: a name with a separator could reach any file.
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise AttnkitError(f"{path} names the data file {name!r}, which is not in its "
                               f"folder (it is not an attnkit checkpoint; restore the file or "
                               f"resume from another run)")
    return metadata


class SafeReader(FileSystemReader):
    """DCP's file-system reader with :func:`read_metadata_file` in place of ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        # rank= asks for a rank-local __N.metadata, which attnkit never writes.
        if kwargs.get("rank") is not None:
            raise FileNotFoundError(self._get_metadata_path(kwargs["rank"]))
        metadata = read_metadata_file(Path(self._get_metadata_path()))
        if metadata.storage_meta is None:  # as FileSystemReader.read_metadata does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """DCP's default load planner, but non-tensor values are read with ``weights_only=True``."""

    def __init__(self, reader: FileSystemReader) -> None:
        super().__init__()
        self.reader = reader  # to name the file a refused value came from

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        info = self.reader.storage_data[read_item.storage_index]
        obj = load_plain(value, Path(self.reader.path) / info.relative_path)
        # Hand DCP a fresh copy of what was just read safely, so its own bookkeeping (nested
        # keys, flattening) stays DCP's; its torch.load then sees only plain data we wrote.
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)


__all__ = ["ALLOWED", "MetadataUnpickler", "SafePlanner", "SafeReader",
           "read_metadata_file"]
