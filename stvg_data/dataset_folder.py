"""Hub-style dataset folders (DESIGN section 5): parquet shards under ``videos/`` and ``queries/``
plus a ``README.md`` dataset card whose YAML ``configs`` name them, so that
``datasets.load_dataset(folder_or_hub_id, "queries", split=...)`` works and one command pushes it.

The card's YAML also carries an ``stvg_vem`` block (label names, feature sizes, protocol, source)
that the trainer, evaluator and processor read back.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import yaml
from datasets import Features

from .protocol import MAX_FRAMES, PROTOCOL_NAME, SAMPLE_FPS
from .schema import (
    QUERY_CONFIG,
    QUERY_FEATURES,
    VIDEO_CONFIG,
    DatasetSchemaError,
    check_columns,
    check_storage,
    video_features,
)

CARD_METADATA_KEY = "stvg_vem"
_FILE_MODE = 0o644
_SHARD_PATTERN = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})\.parquet$")


def shard_path(root: str | Path, config: str, split: str, index: int) -> Path:
    """``<root>/<config>/<split>-<index:05d>.parquet``."""
    return Path(root) / config / f"{split}-{index:05d}.parquet"


class DatasetFolderWriter:
    """Writes shards atomically (temporary name, then rename) so that an interrupted job leaves only
    finished shards behind and a rerun can skip them (``shard_done``)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.root = Path(output_dir)
        self.root.mkdir(parents=True, exist_ok=True)

    def shard_done(self, config: str, split: str, index: int) -> bool:
        return shard_path(self.root, config, split, index).is_file()

    def write_shard(
        self, config: str, split: str, index: int, rows: list[Mapping[str, Any]], features: Features
    ) -> Path:
        """Write ``rows`` as one parquet shard; returns its path."""
        target = shard_path(self.root, config, split, index)
        target.parent.mkdir(parents=True, exist_ok=True)
        table = datasets.Dataset.from_list(list(rows), features=features)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(handle)
        try:
            table.to_parquet(tmp_name)
            os.chmod(tmp_name, _FILE_MODE)  # mkstemp creates 0600; shards are ordinary files
            os.replace(tmp_name, target)
        finally:
            if os.path.exists(tmp_name):
                os.remove(tmp_name)
        return target

    def splits(self, config: str) -> list[str]:
        """Splits that have at least one finished shard of ``config``, in a stable order."""
        found = {
            match["split"]
            for path in (self.root / config).glob("*.parquet")
            if (match := _SHARD_PATTERN.match(path.name))
        }
        order = {"train": 0, "validation": 1, "val": 1, "test": 2}
        return sorted(found, key=lambda split: (order.get(split, 3), split))

    def finalize(self, metadata: Mapping[str, Any], description: str = "", pretty_name: str = "") -> Path:
        """Write ``README.md``: YAML ``configs`` for every split found on disk + the ``stvg_vem`` block."""
        configs = []
        for config in (VIDEO_CONFIG, QUERY_CONFIG):
            data_files = [{"split": split, "path": f"{config}/{split}-*.parquet"} for split in self.splits(config)]
            if not data_files:
                raise DatasetSchemaError(f"{self.root}: no {config} shards were written")
            configs.append({"config_name": config, "data_files": data_files})
        header = {"configs": configs, CARD_METADATA_KEY: _plain(dict(metadata))}
        if pretty_name:
            header["pretty_name"] = pretty_name
        card = "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + (description or "").strip() + "\n"
        return _write_text_atomic(self.root / "README.md", card)


def default_metadata(
    *,
    source: str,
    label_names: list[str],
    num_regions: int,
    region_dim: int | None,
    frame_dim: int | None,
    with_features: bool,
    **extra: Any,
) -> dict[str, Any]:
    """The ``stvg_vem`` card block every converter writes."""
    return {
        "source": source,
        "protocol": {"name": PROTOCOL_NAME, "sample_fps": SAMPLE_FPS, "max_frames": MAX_FRAMES},
        "with_features": with_features,
        "num_regions": num_regions,
        "region_dim": region_dim,
        "frame_dim": frame_dim,
        "label_names": list(label_names),
        **extra,
    }


@dataclass
class StvgSplit:
    """One split of a contract dataset: its clips, its queries and the card's ``stvg_vem`` block."""

    videos: datasets.Dataset
    queries: datasets.Dataset
    metadata: dict[str, Any]
    _index: dict[str, int] | None = field(default=None, repr=False)

    def video_position(self, video_id: str) -> int:
        """Row number of ``video_id`` in ``videos``."""
        if self._index is None:
            self._index = {vid: i for i, vid in enumerate(self.videos["video_id"])}
        if video_id not in self._index:
            raise DatasetSchemaError(f"query refers to video_id {video_id!r}, which is not in the videos config")
        return self._index[video_id]

    def video_row(self, video_id: str) -> dict[str, Any]:
        return self.videos[self.video_position(video_id)]

    @property
    def label_names(self) -> list[str]:
        return list(self.metadata.get("label_names", []))


def read_card_metadata(path_or_hub_id: str | Path) -> dict[str, Any]:
    """The ``stvg_vem`` block of a dataset card, from a local folder or a Hub dataset repo."""
    local = Path(path_or_hub_id)
    if local.is_dir():
        readme = local / "README.md"
        if not readme.is_file():
            raise DatasetSchemaError(f"{local}: no README.md dataset card; finish the conversion (finalize step)")
        text = readme.read_text(encoding="utf-8")
    else:
        from huggingface_hub import hf_hub_download

        try:
            text = Path(hf_hub_download(str(path_or_hub_id), "README.md", repo_type="dataset")).read_text("utf-8")
        except Exception as error:  # the hub client raises many types; all mean "cannot read the card"
            raise DatasetSchemaError(
                f"dataset {str(path_or_hub_id)!r} is neither a local folder nor a reachable Hub dataset repo: {error}"
            ) from error
    match = re.match(r"^---\n(.*?)\n---", text, flags=re.DOTALL)
    header = yaml.safe_load(match.group(1)) if match else None
    if not isinstance(header, dict) or CARD_METADATA_KEY not in header:
        raise DatasetSchemaError(f"{path_or_hub_id}: dataset card has no '{CARD_METADATA_KEY}' metadata block")
    return dict(header[CARD_METADATA_KEY])


def available_splits(path_or_hub_id: str | Path, config: str = QUERY_CONFIG) -> list[str]:
    """Split names of ``config`` declared by the dataset."""
    return list(datasets.get_dataset_split_names(str(path_or_hub_id), config))


def load_stvg_split(path_or_hub_id: str | Path, split: str) -> StvgSplit:
    """Load one split of a contract dataset and check its columns against the contract."""
    metadata = read_card_metadata(path_or_hub_id)
    splits = available_splits(path_or_hub_id)
    if split not in splits:
        raise DatasetSchemaError(f"dataset {str(path_or_hub_id)!r} has no split {split!r}; it has {splits}")
    videos = _load_config(path_or_hub_id, VIDEO_CONFIG, split)
    queries = _load_config(path_or_hub_id, QUERY_CONFIG, split)
    with_features = bool(metadata.get("with_features", True))
    expected_videos = video_features(
        metadata.get("num_regions", 10), metadata.get("region_dim") or 1, metadata.get("frame_dim") or 1, with_features
    )
    check_columns(videos.features, expected_videos, f"{path_or_hub_id} [videos/{split}]")
    check_columns(queries.features, QUERY_FEATURES, f"{path_or_hub_id} [queries/{split}]")
    # Shards of one split may differ from the features datasets took from another split's shard.
    check_storage(videos, expected_videos, f"{path_or_hub_id} [videos/{split}]")
    check_storage(queries, QUERY_FEATURES, f"{path_or_hub_id} [queries/{split}]")
    return StvgSplit(videos=videos, queries=queries, metadata=metadata)


def _load_config(path_or_hub_id: str | Path, config: str, split: str) -> datasets.Dataset:
    """``datasets.load_dataset`` of one config/split; shards that cannot be cast to one table (a
    column of another type or fixed length than the config's first shard) are a schema error.

    A local folder is loaded from its shard files by the ``parquet`` builder: datasets 5.2 caches a
    folder loaded by path under its basename and YAML configs only (not the files' paths or mtimes),
    so a rebuilt folder, or another folder with the same name, would silently load the old cache.
    """
    local = Path(path_or_hub_id)
    try:
        if local.is_dir():
            files = sorted(str(path.resolve()) for path in (local / config).glob(f"{split}-*.parquet"))
            if not files:
                raise DatasetSchemaError(f"{local}: no {config}/{split}-*.parquet shards")
            return datasets.load_dataset("parquet", data_files={split: files}, split=split)
        return datasets.load_dataset(str(path_or_hub_id), config, split=split)
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__ or error
        raise DatasetSchemaError(
            f"{path_or_hub_id} [{config}/{split}]: its shards do not share the contract's columns and types "
            f"({type(cause).__name__}: {str(cause)[:300]}); rebuild it with a dataset_scripts converter"
        ) from error


def write_rows(
    writer: DatasetFolderWriter, config: str, split: str, rows: Iterable[Mapping[str, Any]], features: Features,
    rows_per_shard: int,
) -> int:
    """Write ``rows`` in shards of ``rows_per_shard``; returns the number of shards written (0 for no rows)."""
    shard, index = [], 0
    for row in rows:
        shard.append(row)
        if len(shard) == rows_per_shard:
            writer.write_shard(config, split, index, shard, features)
            shard, index = [], index + 1
    if shard:  # an empty parquet shard would make the split unloadable
        writer.write_shard(config, split, index, shard, features)
        index += 1
    return index


def _write_text_atomic(path: Path, text: str) -> Path:
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.chmod(tmp_name, _FILE_MODE)
    os.replace(tmp_name, path)
    return path


def _plain(value: Any) -> Any:
    """YAML-safe copy (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value
