"""Configuration of stvg-vem (Jin & Mu, ECCV 2024: weakly-supervised STVG with variational cross-modal alignment).

transformers 5 convention: a config is a (strict) dataclass; fields are declared with type annotations and defaults,
extra checks run in ``__post_init__``. Value errors raise plain ``ValueError`` naming the field and the fix.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

RECONSTRUCTION_ASSIGNMENTS = ("variational", "posterior")
TEMPORAL_CONTEXTS = ("frames", "frames_and_regions")
RECONSTRUCTION_MEMORIES = ("frames", "pooled", "gaussian_attention")
RELATION_EVIDENCES = ("states", "geometry", "states_and_geometry")
OBJECTIVES = ("both", "contrastive", "reconstruction")


@strict
class StvgConfig(PreTrainedConfig):
    r"""
    Configuration of [`StvgModel`]: the two networks q_phi (variational) and p_theta (posterior) of the paper.

    Args:
        vocab_size: number of word ids of the word-level tokenizer ([PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3).
        word_embedding_dim: width of the GloVe-style word table (300 in the paper).
        region_feature_dim: width of the RoI region features (Dv).
        frame_feature_dim: width of the pooled frame features (Df).
        hidden_size: D, width of every encoder/decoder (256).
        num_attention_heads: heads of every attention layer (8).
        num_video_layers: blocks of the video context encoder; each block is one spatial + one temporal layer (2).
        num_language_layers: self-attention layers over phrases (2).
        num_temporal_layers: cross-attention layers of the Eq. 7 temporal head (2).
        num_decoder_layers: layers of the Eq. 15 reconstruction decoder (2).
        intermediate_size: feed-forward width of every transformer layer.
        num_regions: M, proposals (= tubes) per frame (10). Inputs may carry any M; this is the default for tools.
        max_frames: T at most (200 sampled frames); sizes the frame position table.
        max_relation_tokens: longest relation predicate the decoder accepts, BOS and EOS included.
        linking_alpha: alpha of Eq. 4, weight of IoU in the tube-linking edge score (0.5).
        fusion_beta: beta of Eq. 16, Z = beta * Z_q + (1 - beta) * Z_p (0.3).
        contrastive_temperature: tau of the InfoNCE loss (Eq. 11).
        temporal_min_width: lower bound of the Gaussian width of Eq. 7, as a fraction of the video length.
        temporal_max_width: upper bound of that width (1.0 = none). A bounded window cannot cover the whole video,
            so the reconstruction and the temporal ranking have to place it.
        temporal_threshold: inference span rule: the segment around the peak of the fused z^T where
            z^T >= temporal_threshold * max z^T.
        reconstruction_assignment: which assignment feeds the Eq. 13 reconstruction in the M-step:
            "variational" = q_phi's (detached; the paper's text), "posterior" = p_theta's own (gradient reaches
            p_theta's assignment heads). See DESIGN sec. 4, open point.
        box_motion: add each tube's centre displacement to the previous and the next frame to the box embedding
            (a linked tube makes motion explicit; our choice, the paper embeds the box only).
        temporal_context: what the Eq. 7 cross-attention reads per frame: "frames" (the frame feature, as the paper
            states) or "frames_and_regions" (the frame feature plus the mean of that frame's region context
            states, which carry tube motion; frame features pooled over a whole image barely see a small object
            move).
        reconstruction_memory: what the Eq. 15 decoder cross-attends to: "frames" = {h^r_t} for every frame t, each
            scaled by z^T_t (Eq. 13 as written), or "pooled" = one vector per relation, sum_t z^T_t h^r_t with z^T
            normalised over t; the decoder then sees only what the temporal assignment selects, so reconstruction
            pushes z^T onto the frames that show the relation; or "gaussian_attention" = {h^r_t} unscaled, with
            log z^T_t added to the decoder's cross-attention logits (z^T as the prior over the frames it reads).
        relation_evidence: what h^r_t of Eq. 14 is made of: "states" (W_r on the subject's and the object's video
            context states, the paper), "geometry" (the subject/object layout and motion from the z^S-weighted box
            centres, :func:`relation_geometry`, projected) or "states_and_geometry" (the sum). Relations are
            about layout and motion; appearance states let the decoder memorise the training videos.
        temporal_ranking_weight / temporal_ranking_margin: weight (0 = off) and margin (nats per word) of the
            temporal ranking loss of the M-step (:func:`temporal_ranking_loss`, our addition): each relation must
            be reconstructed better from the frames z^T selects than from those it leaves out. Only z^T gets its
            gradient, so it trains p_theta's temporal head; with reconstruction_assignment="variational" (q_phi's
            detached z^T) there is nothing for it to move and it is not computed.
        objective: "both" (paper), "contrastive" (ablation: q_phi with L_contra only; inference uses q_phi only),
            "reconstruction" (ablation: no L_contra).
        gather_negatives: gather the sentences of all processes as InfoNCE negatives when torch.distributed is
            initialised.
        contrastive_loss_weight / assignment_loss_weight / reconstruction_loss_weight: loss weights.
        dropout: dropout of every transformer layer and projection.
        train_word_embeddings: whether the word table is trained (False = keep GloVe vectors fixed).
        layer_norm_eps, initializer_range: as usual.
        pad_token_id / unk_token_id / bos_token_id / eos_token_id: special word ids (0/1/2/3).

    Example:

    ```python
    >>> from modeling_stvg import StvgConfig, StvgModel
    >>> model = StvgModel(StvgConfig(vocab_size=5000))
    ```
    """

    model_type = "stvg_vem"

    vocab_size: int = 20000
    word_embedding_dim: int = 300
    region_feature_dim: int = 1024
    frame_feature_dim: int = 1024
    hidden_size: int = 256
    num_attention_heads: int = 8
    num_video_layers: int = 2
    num_language_layers: int = 2
    num_temporal_layers: int = 2
    num_decoder_layers: int = 2
    intermediate_size: int = 1024
    num_regions: int = 10
    max_frames: int = 200
    max_relation_tokens: int = 16
    linking_alpha: float | int = 0.5
    fusion_beta: float | int = 0.3
    contrastive_temperature: float | int = 0.1
    temporal_min_width: float | int = 0.02
    temporal_max_width: float | int = 0.3
    temporal_threshold: float | int = 0.5
    reconstruction_assignment: str = "posterior"
    box_motion: bool = True
    temporal_context: str = "frames_and_regions"
    reconstruction_memory: str = "gaussian_attention"
    objective: str = "both"
    gather_negatives: bool = True
    contrastive_loss_weight: float | int = 1.0
    assignment_loss_weight: float | int = 1.0
    reconstruction_loss_weight: float | int = 1.0
    relation_evidence: str = "geometry"
    temporal_ranking_weight: float | int = 1.0
    temporal_ranking_margin: float | int = 0.1
    dropout: float | int = 0.1
    train_word_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    pad_token_id: int = 0
    unk_token_id: int = 1
    bos_token_id: int = 2
    eos_token_id: int = 3

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        self._check_values()

    def _check_values(self) -> None:
        """Raise ``ValueError`` (``TypeError`` for a wrong type) naming the first bad field and how to fix it."""
        for name, field in self.__dataclass_fields__.items():
            if field.type == "int" and (not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool)):
                raise TypeError(f"StvgConfig.{name} must be an int, got {getattr(self, name)!r}.")
            if field.type == "float | int" and (
                not isinstance(getattr(self, name), (int, float)) or isinstance(getattr(self, name), bool)
            ):
                raise TypeError(f"StvgConfig.{name} must be a number, got {getattr(self, name)!r}.")
        positive = (
            "vocab_size",
            "word_embedding_dim",
            "region_feature_dim",
            "frame_feature_dim",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "num_regions",
            "max_frames",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"StvgConfig.{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("num_video_layers", "num_language_layers", "num_temporal_layers", "num_decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"StvgConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"StvgConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.max_relation_tokens < 3:
            raise ValueError(
                f"StvgConfig.max_relation_tokens must be >= 3 (BOS + one word + EOS), got {self.max_relation_tokens}."
            )
        if self.linking_alpha < 0:
            raise ValueError(f"StvgConfig.linking_alpha must be >= 0, got {self.linking_alpha}.")
        if not 0.0 <= self.fusion_beta <= 1.0:
            raise ValueError(f"StvgConfig.fusion_beta must be in [0, 1], got {self.fusion_beta}.")
        if self.contrastive_temperature <= 0:
            raise ValueError(f"StvgConfig.contrastive_temperature must be > 0, got {self.contrastive_temperature}.")
        if not 0.0 < self.temporal_max_width <= 1.0 or self.temporal_max_width <= self.temporal_min_width:
            raise ValueError(
                f"StvgConfig.temporal_max_width must be in (temporal_min_width, 1], got {self.temporal_max_width}."
            )
        if not 0.0 < self.temporal_min_width < 1.0:
            raise ValueError(f"StvgConfig.temporal_min_width must be in (0, 1), got {self.temporal_min_width}.")
        if not 0.0 < self.temporal_threshold <= 1.0:
            raise ValueError(f"StvgConfig.temporal_threshold must be in (0, 1], got {self.temporal_threshold}.")
        if self.temporal_context not in TEMPORAL_CONTEXTS:
            raise ValueError(
                f"StvgConfig.temporal_context must be one of {TEMPORAL_CONTEXTS}, got {self.temporal_context!r}."
            )
        if self.reconstruction_memory not in RECONSTRUCTION_MEMORIES:
            raise ValueError(
                f"StvgConfig.reconstruction_memory must be one of {RECONSTRUCTION_MEMORIES}, "
                f"got {self.reconstruction_memory!r}."
            )
        if self.reconstruction_assignment not in RECONSTRUCTION_ASSIGNMENTS:
            raise ValueError(
                f"StvgConfig.reconstruction_assignment must be one of {RECONSTRUCTION_ASSIGNMENTS}, "
                f"got {self.reconstruction_assignment!r}."
            )
        if self.relation_evidence not in RELATION_EVIDENCES:
            raise ValueError(
                f"StvgConfig.relation_evidence must be one of {RELATION_EVIDENCES}, got {self.relation_evidence!r}."
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(f"StvgConfig.objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        for name in ("contrastive_loss_weight", "assignment_loss_weight", "reconstruction_loss_weight",
                     "temporal_ranking_weight", "temporal_ranking_margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"StvgConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"StvgConfig.dropout must be in [0, 1), got {self.dropout}.")
        special = {
            "pad_token_id": self.pad_token_id,
            "unk_token_id": self.unk_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        for name, value in special.items():
            if not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"StvgConfig.{name} ({value}) must be a word id in [0, vocab_size={self.vocab_size})."
                )
        if len(set(special.values())) != len(special):
            raise ValueError(f"StvgConfig special token ids must be distinct, got {special}.")

    def validate_stvg_values(self) -> None:
        """strict-dataclass class validator (runs again on ``save_pretrained``, e.g. after edits)."""
        self._check_values()


__all__ = ["StvgConfig", "RECONSTRUCTION_ASSIGNMENTS", "OBJECTIVES"]
