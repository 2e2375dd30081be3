"""Detector proposals and region/frame features for STVG (DESIGN section 1, "feature extractor").

``StvgFeatureExtractor`` turns decoded frames ``uint8 (T, H, W, 3)`` into what the ``videos`` config
stores (DESIGN section 5):

- ``boxes`` (T, M, 4) float32, pixels, x1 y1 x2 y2: the top ``num_regions`` detections per frame by
  score (torchvision Faster R-CNN, COCO classes); missing slots are zero boxes with label -1;
- ``box_scores`` (T, M) float32 and ``box_labels`` (T, M) int32 (ids into ``label_names``);
- ``region_features`` (T, M, Dv): RoI-Align of every box on a backbone feature map + average pool;
- ``frame_features`` (T, Df): the same pooling over the whole frame.

The backbone is either the detector's own (ResNet-50 FPN, one pass serves detection and features)
or any ``timm`` model built with ``features_only=True``. When boxes are given (the synthetic
benchmark, or annotated boxes), detection is skipped and only their features are computed.

The object itself holds JSON-serialisable settings only (it saves with the processor as
``preprocessor_config.json``); the torch modules are built on first use. Weights come from local
files (safetensors, or a torch checkpoint read with ``weights_only=True``) or from the torchvision /
Hugging Face caches; nothing is downloaded. A random-initialised network is built only when
``random_init=True`` is asked for explicitly (tests, the synthetic benchmark); otherwise a missing
weight file raises :class:`MissingWeightsError` naming the file to download and where to put it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import FeatureExtractionMixin

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DETECTOR_BACKBONE = "detector"
SUPPORTED_DETECTORS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)
OUTPUT_KEYS = ("boxes", "box_scores", "box_labels", "region_features", "frame_features")


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights were needed but no local copy exists (and ``random_init`` was not asked for)."""


class FeatureExtractionError(ValueError):
    """Bad input to :meth:`StvgFeatureExtractor.extract` (frames or boxes)."""


def load_weight_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch checkpoint (read with ``weights_only=True``, no pickle code).

    Checkpoints that wrap the weights (``{"model": ...}`` / ``{"state_dict": ...}``) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weight file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for corrupt / unsafe files
            raise ValueError(f"cannot read weight file {str(path)!r} as a weights-only torch checkpoint: {error}") from error
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weight file {str(path)!r} does not hold a state dict of tensors")
    return state


class StvgFeatureExtractor(FeatureExtractionMixin):
    """Detector proposals + RoI-Align region features + pooled frame features.

    Args:
        backbone: ``"detector"`` (features from the detector's FPN) or a ``timm`` model name
            (e.g. ``"resnet18"``), built with ``features_only=True``.
        detector: torchvision detector name (one of ``SUPPORTED_DETECTORS``); used to propose boxes.
        detector_weights_path: local ``.pth``/``.safetensors`` of the detector; default: torchvision's
            cache (``$TORCH_HOME/hub/checkpoints/<file of the COCO weights>``).
        backbone_weights_path: local weights of the ``timm`` backbone (the classification checkpoint;
            timm keeps the feature stages); default: the Hugging Face cache of its hub id.
        random_init: build random-initialised networks (seeded by ``seed``) instead of loading weights.
        num_regions: proposals kept per frame (M).
        score_threshold, nms_threshold: the detector's per-class score floor and NMS IoU.
        class_agnostic_nms_threshold: NMS across classes before keeping the top M (one box per object).
        detector_min_size, detector_max_size: resize rule of the detector's transform.
        feature_levels: ``timm`` stages (``out_indices``) whose RoI features are concatenated.
        region_pooling: ``"avgpool"`` (RoI-Align + average pool) or, for the detector backbone,
            ``"box_head"`` (the Faster R-CNN box head's 1024-d representation of the RoI-Aligned map).
        roi_output_size, roi_sampling_ratio: RoI-Align grid and sampling.
        roi_pool_grid: average-pool each RoI to a ``g x g`` grid (flattened, channel-major), so a region
            vector keeps a coarse layout of the object (shape); 1 = plain average pool.
        resize_shortest_edge: for ``timm`` backbones, resize frames so their short side has this size
            (``None`` keeps the frame size); boxes are rescaled accordingly.
        image_mean, image_std: input normalisation of the ``timm`` backbone.
        feature_norm: ``"none"`` or ``"l2"`` (unit-norm region and frame vectors).
        batch_size: frames per forward pass.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        dtype: ``"auto"`` (bfloat16 autocast on CUDA, float32 on CPU), ``"float32"`` or ``"bfloat16"``.
        label_names: class names of ``box_labels``; default: the detector's COCO categories.
        backbone_kwargs: extra JSON-serialisable keyword arguments of ``timm.create_model``
            (e.g. ``{"zero_init_last": false}``).
        detector_kwargs: extra JSON-serialisable keyword arguments of the torchvision detector
            (e.g. ``{"rpn_post_nms_top_n_test": 300}`` for speed).
    """

    model_input_names = list(OUTPUT_KEYS)

    def __init__(
        self,
        backbone: str = DETECTOR_BACKBONE,
        detector: str = "fasterrcnn_resnet50_fpn",
        detector_weights_path: str | None = None,
        backbone_weights_path: str | None = None,
        random_init: bool = False,
        seed: int = 0,
        num_regions: int = 10,
        score_threshold: float = 0.0,
        nms_threshold: float = 0.5,
        class_agnostic_nms_threshold: float | None = 0.7,
        detector_min_size: int = 800,
        detector_max_size: int = 1333,
        feature_levels: list[int] | tuple[int, ...] | None = None,
        region_pooling: str = "avgpool",
        roi_output_size: int = 7,
        roi_sampling_ratio: int = 2,
        roi_pool_grid: int = 1,
        resize_shortest_edge: int | None = None,
        image_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN,
        image_std: list[float] | tuple[float, ...] = IMAGENET_STD,
        feature_norm: str = "none",
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        label_names: list[str] | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        detector_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("feature_extractor_type", None)
        super().__init__(**kwargs)
        if detector not in SUPPORTED_DETECTORS:
            raise ValueError(f"detector {detector!r} is not supported; choose one of {SUPPORTED_DETECTORS}")
        if region_pooling not in ("avgpool", "box_head"):
            raise ValueError(f"region_pooling must be 'avgpool' or 'box_head', got {region_pooling!r}")
        if region_pooling == "box_head" and backbone != DETECTOR_BACKBONE:
            raise ValueError("region_pooling='box_head' needs backbone='detector' (the head belongs to the detector)")
        if feature_norm not in ("none", "l2"):
            raise ValueError(f"feature_norm must be 'none' or 'l2', got {feature_norm!r}")
        if dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
        if int(num_regions) <= 0 or int(batch_size) <= 0:
            raise ValueError(f"num_regions and batch_size must be positive, got {num_regions}, {batch_size}")
        self.backbone = backbone
        self.detector = detector
        self.detector_weights_path = None if detector_weights_path is None else str(detector_weights_path)
        self.backbone_weights_path = None if backbone_weights_path is None else str(backbone_weights_path)
        self.random_init = bool(random_init)
        self.seed = int(seed)
        self.num_regions = int(num_regions)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.class_agnostic_nms_threshold = (
            None if class_agnostic_nms_threshold is None else float(class_agnostic_nms_threshold)
        )
        self.detector_min_size = int(detector_min_size)
        self.detector_max_size = int(detector_max_size)
        self.feature_levels = None if feature_levels is None else [int(level) for level in feature_levels]
        self.region_pooling = region_pooling
        self.roi_output_size = int(roi_output_size)
        self.roi_sampling_ratio = int(roi_sampling_ratio)
        self.roi_pool_grid = int(roi_pool_grid)
        if not 1 <= self.roi_pool_grid <= self.roi_output_size:
            raise ValueError(f"roi_pool_grid must be in 1..roi_output_size, got {roi_pool_grid}")
        if self.roi_pool_grid != 1 and region_pooling == "box_head":
            raise ValueError("roi_pool_grid applies to region_pooling='avgpool' only")
        self.resize_shortest_edge = None if resize_shortest_edge is None else int(resize_shortest_edge)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.feature_norm = feature_norm
        self.batch_size = int(batch_size)
        self.device = device
        self.dtype = dtype
        self.label_names = list(label_names) if label_names is not None else None
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.detector_kwargs = dict(detector_kwargs or {})
        # Lazily built modules (never serialised: names start with "_").
        self._detector_model = None
        self._timm_model = None
        self._timm_channels: list[int] | None = None
        self._timm_reductions: list[int] | None = None

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON settings only (the lazily built torch modules are left out)."""
        output = {key: value for key, value in self.__dict__.items() if not key.startswith("_")}
        output = {key: (list(value) if isinstance(value, tuple) else value) for key, value in output.items()}
        output["feature_extractor_type"] = self.__class__.__name__
        return output

    # ------------------------------------------------------------------ properties
    @property
    def uses_detector_backbone(self) -> bool:
        return self.backbone == DETECTOR_BACKBONE

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bfloat16 autocast on CUDA by default, none (float32) on CPU."""
        if self.dtype == "bfloat16":
            return torch.bfloat16
        if self.dtype == "auto" and self.torch_device.type == "cuda":
            return torch.bfloat16
        return None

    @property
    def coco_label_names(self) -> list[str]:
        """The detector's class names (torchvision's COCO categories, index = label id)."""
        return list(self._detector_weights_enum().meta["categories"])

    def get_label_names(self) -> list[str]:
        """Names of ``box_labels`` ids: the configured ``label_names`` or the detector's COCO categories."""
        return list(self.label_names) if self.label_names is not None else self.coco_label_names

    @property
    def channels(self) -> int:
        """Channels of the pooled feature map(s) (summed over levels)."""
        if self.uses_detector_backbone:
            return 1024 if self.region_pooling == "box_head" else 256
        self._build_timm()
        return int(sum(self._timm_channels))

    @property
    def region_dim(self) -> int:
        """Dv of ``region_features``: channels x ``roi_pool_grid``^2."""
        return self.channels * self.roi_pool_grid**2

    @property
    def frame_dim(self) -> int:
        """Df of ``frame_features``: the channels averaged over the whole frame."""
        return self.channels

    # ------------------------------------------------------------------ weights and modules
    def _detector_weights_enum(self):
        from torchvision.models import get_model_weights

        return get_model_weights(self.detector).COCO_V1

    def detector_weight_file(self) -> Path:
        """Where torchvision's cache keeps the detector's COCO weights (``$TORCH_HOME/hub/checkpoints``)."""
        url = self._detector_weights_enum().url
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)

    def _build_detector(self) -> torch.nn.Module:
        if self._detector_model is not None:
            return self._detector_model
        from torchvision.models import get_model

        kwargs = dict(
            weights=None,
            weights_backbone=None,
            num_classes=len(self._detector_weights_enum().meta["categories"]),
            min_size=self.detector_min_size,
            max_size=self.detector_max_size,
            box_score_thresh=self.score_threshold,
            box_nms_thresh=self.nms_threshold,
            box_detections_per_img=max(100, self.num_regions),
        )
        kwargs.update(self.detector_kwargs)
        if self.random_init:
            state = None
        else:
            path = Path(self.detector_weights_path) if self.detector_weights_path else self.detector_weight_file()
            if not path.is_file():
                url = self._detector_weights_enum().url
                raise MissingWeightsError(
                    f"no weights for detector {self.detector!r}: {str(path)!r} does not exist. Download {url} and put "
                    f"it at {str(self.detector_weight_file())!r} (torchvision's cache; set TORCH_HOME to move it), or pass "
                    f"detector_weights_path='/path/to/{os.path.basename(url)}' (.pth or .safetensors). "
                    "Use random_init=True only for tests."
                )
            state = load_weight_file(path)
        with _seeded(self.seed):
            model = get_model(self.detector, **kwargs)
        if state is not None:
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"detector weights do not fit {self.detector!r}: missing {list(missing)[:5]}, "
                    f"unexpected {list(unexpected)[:5]}"
                )
        self._detector_model = model.eval().to(self.torch_device)
        return self._detector_model

    def _timm_weight_file(self) -> Path | None:
        """The timm backbone's weights: ``backbone_weights_path`` or the Hugging Face cache of its hub id."""
        if self.backbone_weights_path:
            return Path(self.backbone_weights_path)
        import timm

        cfg = timm.models.get_pretrained_cfg(self.backbone)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if hub_id:
            from huggingface_hub import try_to_load_from_cache

            for filename in ("model.safetensors", "pytorch_model.bin"):
                cached = try_to_load_from_cache(hub_id, filename)
                if isinstance(cached, str):
                    return Path(cached)
        return None

    def _build_timm(self) -> torch.nn.Module:
        if self._timm_model is not None:
            return self._timm_model
        import timm

        if self.backbone not in timm.list_models():
            raise ValueError(f"backbone {self.backbone!r} is neither 'detector' nor a timm model name")
        levels = tuple(self.feature_levels) if self.feature_levels else None
        kwargs: dict[str, Any] = {**self.backbone_kwargs, "features_only": True}
        if levels is not None:
            kwargs["out_indices"] = levels
        if self.random_init:
            with _seeded(self.seed):
                model = timm.create_model(self.backbone, pretrained=False, **kwargs)
        else:
            path = self._timm_weight_file()
            if path is None or not path.is_file():
                cfg = timm.models.get_pretrained_cfg(self.backbone)
                hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
                where = f"https://huggingface.co/{hub_id} (file model.safetensors)" if hub_id else "its timm source"
                raise MissingWeightsError(
                    f"no weights for timm backbone {self.backbone!r}"
                    + (f": {str(path)!r} does not exist" if path is not None else "")
                    + f". Download them from {where} and pass backbone_weights_path='/path/to/model.safetensors' "
                    "(or place them in the Hugging Face cache). Use random_init=True only for tests."
                )
            with _seeded(self.seed):
                model = timm.create_model(
                    self.backbone, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
                )
        self._timm_channels = list(model.feature_info.channels())
        self._timm_reductions = list(model.feature_info.reduction())
        self._timm_model = model.eval().to(self.torch_device)
        return self._timm_model

    # ------------------------------------------------------------------ extraction
    def __call__(self, frames: Any, boxes: Any = None, **kwargs: Any) -> dict[str, np.ndarray]:
        return self.extract(frames, boxes=boxes, **kwargs)

    def extract(
        self,
        frames: np.ndarray | torch.Tensor,
        boxes: np.ndarray | torch.Tensor | None = None,
        box_scores: np.ndarray | None = None,
        box_labels: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Proposals and features of one clip.

        Args:
            frames: ``uint8 (T, H, W, 3)`` RGB.
            boxes: optional ``(T, M, 4)`` pixel boxes (x1 y1 x2 y2); when given, detection is skipped.
            box_scores, box_labels: optional ``(T, M)`` for given boxes (default 1.0 and 0; label -1 marks
                padding, whose features are zeros).

        Returns:
            dict of numpy arrays: ``boxes (T,M,4) float32``, ``box_scores (T,M) float32``,
            ``box_labels (T,M) int32`` (-1 = padding), ``region_features (T,M,Dv) float32``,
            ``frame_features (T,Df) float32``.
        """
        frames_t = self._check_frames(frames)
        num_frames, height, width = frames_t.shape[:3]
        if boxes is not None:
            boxes_t, scores_t, labels_t = self._check_boxes(boxes, box_scores, box_labels, num_frames, width, height)
        else:
            boxes_t = scores_t = labels_t = None
        out = {key: [] for key in OUTPUT_KEYS}
        with torch.inference_mode():
            for start in range(0, num_frames, self.batch_size):
                stop = min(start + self.batch_size, num_frames)
                batch = frames_t[start:stop]
                if self.uses_detector_backbone:
                    given = None if boxes_t is None else boxes_t[start:stop]
                    result = self._run_detector(batch, given)
                else:
                    if boxes_t is None:
                        # Proposals come from the detector; features from the timm backbone.
                        result = self._run_detector(batch, None, features=False)
                        given = torch.as_tensor(result["boxes"])
                    else:
                        given = boxes_t[start:stop]
                        result = {}
                    region, frame = self._timm_features(batch, given)
                    result["region_features"], result["frame_features"] = region, frame
                if boxes_t is not None:
                    result["boxes"] = boxes_t[start:stop].numpy()
                    result["box_scores"] = scores_t[start:stop].numpy()
                    result["box_labels"] = labels_t[start:stop].numpy()
                for key in OUTPUT_KEYS:
                    out[key].append(result[key])
        merged = {key: np.concatenate(values, axis=0) for key, values in out.items()}
        real = merged["box_labels"] != -1
        merged["region_features"] = merged["region_features"] * real[..., None]
        merged["boxes"] = (merged["boxes"] * real[..., None]).astype(np.float32)
        merged["box_scores"] = (merged["box_scores"] * real).astype(np.float32)
        merged["box_labels"] = merged["box_labels"].astype(np.int32)
        if self.feature_norm == "l2":
            merged["region_features"] = _l2(merged["region_features"])
            merged["frame_features"] = _l2(merged["frame_features"])
        merged["region_features"] = merged["region_features"].astype(np.float32)
        merged["frame_features"] = merged["frame_features"].astype(np.float32)
        return merged

    def _check_frames(self, frames: Any) -> torch.Tensor:
        frames_t = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        if frames_t.dtype != torch.uint8:
            raise FeatureExtractionError(f"frames must be uint8 RGB (T, H, W, 3), got dtype {frames_t.dtype}")
        if frames_t.ndim != 4 or frames_t.shape[-1] != 3:
            raise FeatureExtractionError(f"frames must have shape (T, H, W, 3), got {tuple(frames_t.shape)}")
        if frames_t.shape[0] == 0 or frames_t.shape[1] == 0 or frames_t.shape[2] == 0:
            raise FeatureExtractionError(f"frames are empty: shape {tuple(frames_t.shape)} (zero frames decoded?)")
        return frames_t.cpu()

    def _check_boxes(self, boxes, scores, labels, num_frames, width, height):
        boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
        if boxes_t.ndim != 3 or boxes_t.shape[0] != num_frames or boxes_t.shape[2] != 4:
            raise FeatureExtractionError(
                f"boxes must have shape (T={num_frames}, M, 4) in pixels, got {tuple(boxes_t.shape)}"
            )
        if boxes_t.shape[1] != self.num_regions:
            raise FeatureExtractionError(f"boxes have {boxes_t.shape[1]} per frame, expected num_regions={self.num_regions}")
        shape = tuple(boxes_t.shape[:2])
        labels_t = torch.zeros(shape, dtype=torch.int32) if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int32))
        scores_t = torch.ones(shape, dtype=torch.float32) if scores is None else torch.as_tensor(np.asarray(scores, dtype=np.float32))
        if tuple(labels_t.shape) != shape or tuple(scores_t.shape) != shape:
            raise FeatureExtractionError(f"box_scores/box_labels must have shape {shape}")
        real = labels_t != -1
        b = boxes_t[real]
        if not torch.isfinite(b).all():
            raise FeatureExtractionError("boxes contain NaN or inf")
        if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
            raise FeatureExtractionError("boxes have x2 < x1 or y2 < y1 (expected x1 y1 x2 y2 in pixels)")
        tol = 1.0
        if (b[:, :2] < -tol).any() or (b[:, 2] > width + tol).any() or (b[:, 3] > height + tol).any():
            raise FeatureExtractionError(f"boxes lie outside the {width}x{height} frame")
        return boxes_t, scores_t, labels_t

    def _autocast(self):
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.torch_device.type, dtype=dtype)

    def _run_detector(self, batch: torch.Tensor, given: torch.Tensor | None, features: bool = True) -> dict[str, Any]:
        """One batch through the detector: transform, backbone, (RPN + box head), RoI features."""
        model = self._build_detector()
        device = self.torch_device
        images = [frame.permute(2, 0, 1).to(device=device, dtype=torch.float32) / 255.0 for frame in batch]
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        with self._autocast():
            image_list, _ = model.transform(images)
            feats = model.backbone(image_list.tensors)
        feats = {name: value.float() for name, value in feats.items()}
        result: dict[str, Any] = {}
        if given is None:
            with self._autocast():
                proposals, _ = model.rpn(image_list, feats)
                detections, _ = model.roi_heads(feats, proposals, image_list.image_sizes)
            detections = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
            boxes, scores, labels = self._top_detections(detections, original_sizes)
            result.update(boxes=boxes.numpy(), box_scores=scores.numpy(), box_labels=labels.numpy())
            given = boxes
        if not features:
            return result
        # Boxes from original pixels to the transformed image's pixels (per frame scale).
        scale = torch.tensor(
            [[new[1] / old[1], new[0] / old[0]] for new, old in zip(image_list.image_sizes, original_sizes)],
            dtype=torch.float32,
        ).repeat(1, 2)
        scaled = (given.float() * scale[:, None, :]).to(device)
        whole = torch.tensor(
            [[0.0, 0.0, float(w), float(h)] for h, w in image_list.image_sizes], dtype=torch.float32, device=device
        )[:, None, :]
        rois = torch.cat([scaled, whole], dim=1)  # (B, M+1, 4): the last box is the whole frame
        pooled = model.roi_heads.box_roi_pool(feats, list(rois), image_list.image_sizes)  # (B*(M+1), 256, o, o)
        if self.region_pooling == "box_head":
            with self._autocast():
                vectors = model.roi_heads.box_head(pooled).float()
            frame_vectors = vectors
        else:
            vectors = self._grid_pool(pooled)
            frame_vectors = pooled.mean(dim=(2, 3))
        vectors = vectors.reshape(len(batch), self.num_regions + 1, -1).cpu()
        frame_vectors = frame_vectors.reshape(len(batch), self.num_regions + 1, -1).cpu()
        result["region_features"] = vectors[:, :-1].numpy()
        result["frame_features"] = frame_vectors[:, -1].numpy()
        return result

    def _grid_pool(self, pooled: torch.Tensor) -> torch.Tensor:
        """(K, C, o, o) RoI-Align output -> (K, C * g * g): average pool to a g x g grid, channel-major."""
        if self.roi_pool_grid == 1:
            return pooled.mean(dim=(2, 3))
        import torch.nn.functional as F

        return F.adaptive_avg_pool2d(pooled, self.roi_pool_grid).flatten(1)

    def _top_detections(self, detections: list[dict[str, torch.Tensor]], sizes) -> tuple[torch.Tensor, ...]:
        """Class-agnostic NMS, then the top ``num_regions`` by score per frame, padded with label -1."""
        from torchvision.ops import batched_nms

        m = self.num_regions
        count = len(detections)
        boxes = torch.cat([d["boxes"].float().cpu() for d in detections])
        scores = torch.cat([d["scores"].float().cpu() for d in detections])
        labels = torch.cat([d["labels"].cpu() for d in detections])
        frame = torch.cat([torch.full((len(d["scores"]),), i, dtype=torch.long) for i, d in enumerate(detections)])
        if self.class_agnostic_nms_threshold is not None and len(scores):
            keep = batched_nms(boxes, scores, frame, self.class_agnostic_nms_threshold)  # sorted by score
        else:
            keep = torch.argsort(scores, descending=True, stable=True)
        # Stable sort by frame keeps the score order inside each frame; rank = position within its frame.
        keep = keep[torch.argsort(frame[keep], stable=True)]
        kept_frame = frame[keep]
        first = torch.searchsorted(kept_frame, torch.arange(count))
        rank = torch.arange(len(keep)) - first[kept_frame]
        take = rank < m
        out_boxes = torch.zeros(count, m, 4)
        out_scores = torch.zeros(count, m)
        out_labels = torch.full((count, m), -1, dtype=torch.int32)
        sel = keep[take]
        out_boxes[kept_frame[take], rank[take]] = boxes[sel]
        out_scores[kept_frame[take], rank[take]] = scores[sel]
        out_labels[kept_frame[take], rank[take]] = labels[sel].to(torch.int32)
        limits = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=torch.float32)[:, None, :]
        out_boxes = torch.minimum(out_boxes.clamp(min=0.0), limits)
        return out_boxes, out_scores, out_labels

    def _timm_features(self, batch: torch.Tensor, boxes: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """RoI-Align + average pool on every configured timm stage, concatenated; frame = global average."""
        import torch.nn.functional as F
        from torchvision.ops import roi_align

        model = self._build_timm()
        device = self.torch_device
        images = batch.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32) / 255.0
        height, width = images.shape[-2:]
        factor = 1.0
        if self.resize_shortest_edge is not None and min(height, width) != self.resize_shortest_edge:
            factor = self.resize_shortest_edge / min(height, width)
            size = (max(1, round(height * factor)), max(1, round(width * factor)))
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.image_mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=device).view(1, 3, 1, 1)
        images = (images - mean) / std
        with self._autocast():
            maps = model(images)
        count, m = boxes.shape[:2]
        index = torch.arange(count, dtype=torch.float32).repeat_interleave(m)[:, None]
        rois = torch.cat([index, boxes.reshape(-1, 4).float() * factor], dim=1).to(device)
        regions, frames = [], []
        for feature_map, reduction in zip(maps, self._timm_reductions):
            feature_map = feature_map.float()
            pooled = roi_align(
                feature_map, rois, output_size=self.roi_output_size, spatial_scale=1.0 / reduction,
                sampling_ratio=self.roi_sampling_ratio, aligned=True,
            )
            regions.append(self._grid_pool(pooled).reshape(count, m, -1))
            frames.append(feature_map.mean(dim=(2, 3)))
        return torch.cat(regions, dim=-1).cpu().numpy(), torch.cat(frames, dim=-1).cpu().numpy()


def _l2(array: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.maximum(norm, 1e-6)


@contextlib.contextmanager
def _seeded(seed: int):
    """Deterministic random initialisation without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
