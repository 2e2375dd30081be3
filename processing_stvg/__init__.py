"""Processing side of stvg-vem: video decoding/sampling, detector features, sentence parsing,
word tokenizer, the StvgProcessor, post-processing and visualisation.

Importing this package registers the processor classes with the transformers Auto classes
(``AutoProcessor``, ``AutoVideoProcessor``, ``AutoFeatureExtractor``) for ``StvgConfig``, so
``AutoProcessor.from_pretrained(checkpoint_dir)`` works offline.
"""

from __future__ import annotations

from .feature_extraction_stvg import StvgFeatureExtractor
from .parsing_stvg import (
    EmptySentenceError,
    NoNounPhraseError,
    ParsedSentence,
    SentenceParseError,
    StanzaModelsMissingError,
    StanzaSentenceParser,
    extract_parse,
)
from .processing_stvg import (
    MODEL_INPUT_KEYS,
    POSTPROCESS_KEYS,
    ProcessorInputError,
    StvgProcessor,
    build_model_inputs,
    post_process_grounding,
    span_to_frame_ids,
)
from .tokenization_stvg import build_word_tokenizer
from .video_processing_stvg import StvgVideoProcessor, VideoDecodeError, VideoInputError


def register_auto_classes() -> None:
    """Register the processor classes with the transformers Auto classes (idempotent)."""
    from transformers import AutoFeatureExtractor, AutoProcessor, AutoVideoProcessor

    from modeling_stvg.configuration_stvg import StvgConfig

    AutoProcessor.register(StvgConfig, StvgProcessor, exist_ok=True)
    AutoVideoProcessor.register(StvgConfig, StvgVideoProcessor, exist_ok=True)
    AutoFeatureExtractor.register(StvgConfig, StvgFeatureExtractor, exist_ok=True)


register_auto_classes()

__all__ = [
    "MODEL_INPUT_KEYS",
    "POSTPROCESS_KEYS",
    "EmptySentenceError",
    "NoNounPhraseError",
    "ParsedSentence",
    "ProcessorInputError",
    "SentenceParseError",
    "StanzaModelsMissingError",
    "StanzaSentenceParser",
    "StvgFeatureExtractor",
    "StvgProcessor",
    "StvgVideoProcessor",
    "VideoDecodeError",
    "VideoInputError",
    "build_model_inputs",
    "build_word_tokenizer",
    "extract_parse",
    "post_process_grounding",
    "register_auto_classes",
    "span_to_frame_ids",
]
