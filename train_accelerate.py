"""Train stvg-vem with alternating variational EM (Algorithm 1 of Jin & Mu, ECCV 2024) on Accelerate.

Weak supervision: the trainer reads video-sentence pairs only. The ``gt_*`` columns of every split
are dropped (``stvg_data.batching.drop_ground_truth``) before any row is read; only the final
evaluation (``--eval-split``) compares predictions with the ground truth, through
``stvg_data.evaluation``.

Algorithm 1: the E-step trains q_phi (L_z,phi + L_contra) with p_theta frozen, the M-step trains
p_theta (L_z,theta + L_rec) with q_phi frozen (the frozen network runs in ``eval`` mode under
``no_grad`` and gives the targets). ``--alternate epoch`` (the paper, default): every epoch is one
E-pass over the training set, then one M-pass. ``--alternate iteration``: an E-update then an
M-update on every batch. The two networks are separate modules, each prepared by Accelerate on its
own (one DDP wrapper each, see DESIGN sec. 3), with its own AdamW optimizer and its own schedule
(linear warm-up to ``--learning-rate``, then linear decay to 0).

Launch commands::

    # 1 CPU process (or 1 GPU when one is visible)
    python train_accelerate.py --dataset outputs/demo/data --output-dir outputs/run
    accelerate launch --num_processes 1 train_accelerate.py --dataset DIR_OR_HUB_ID --output-dir OUT

    # 2 CPU processes (gloo); `--cpu --num_processes 2` would start only one
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        train_accelerate.py --dataset DIR --output-dir OUT

    # 1 GPU, bf16 (the launcher's / accelerate config's setting; or pass --mixed-precision bf16)
    accelerate launch --num_processes 1 --mixed_precision bf16 train_accelerate.py --dataset D --output-dir OUT

    # all GPUs of one machine
    accelerate launch --multi_gpu --num_processes 8 train_accelerate.py --dataset D --output-dir OUT

    # resume from the latest checkpoint in OUT/checkpoints; push the result
    accelerate launch train_accelerate.py --dataset D --output-dir OUT --resume
    accelerate launch train_accelerate.py --dataset D --output-dir OUT --push-to-hub --hub-model-id user/stvg-vem

``--batch-size`` is per process; the contrastive loss takes its negatives from the global batch
(the model gathers sentences across processes).

Outputs in ``OUT``: ``config.json``, ``model.safetensors`` (+ the model's remote code), the
tokenizer/processor files, ``README.md`` (model card), ``metrics.json`` and ``predictions.json`` of
the ``--eval-split``, ``train_log.jsonl`` (one record per optimizer step and per evaluation),
``training_curves.png``, ``tubes.png``, ``checkpoints/epoch_<k>/`` (``accelerator.save_state``
each epoch, the last ``--save-total-limit`` kept) and, when tensorboard is installed, ``runs/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from modeling_stvg.configuration_stvg import (
    OBJECTIVES,
    RECONSTRUCTION_ASSIGNMENTS,
    RECONSTRUCTION_MEMORIES,
    RELATION_EVIDENCES,
    TEMPORAL_CONTEXTS,
)

TRAINER_STATE = "trainer_state.json"
LOG_NAME = "train_log.jsonl"
CHECKPOINT_DIR = "checkpoints"
HUB_IGNORE_PATTERNS = [f"{CHECKPOINT_DIR}/*", "runs/*", "*.tmp"]
# StvgStepOutput loss fields -> their name in the log (``loss/<name>``)
STEP_LOSS_LABELS = {"loss": "total", "assignment_loss": "assignment", "contrastive_loss": "contrastive",
                    "reconstruction_loss": "reconstruction", "temporal_ranking_loss": "temporal_ranking"}


class TrainingInputError(ValueError):
    """The dataset or the arguments cannot be trained on; raised before any training step."""


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_accelerate.py",
        description="Weakly-supervised STVG: alternating variational EM (Jin & Mu, ECCV 2024) with Accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="contract dataset folder or Hub dataset id (DESIGN sec. 5)")
    data.add_argument("--output-dir", required=True, type=Path)
    data.add_argument("--train-split", default="train")
    data.add_argument("--eval-split", default="test", help="evaluated after training ('none' to skip)")
    data.add_argument("--validation-split", default=None,
                      help="evaluated after every epoch (logged as eval/...; e.g. 'validation'); default: none")
    data.add_argument("--temporal-only", action="store_true",
                      help="evaluate time spans only (m_tIoU; vIoU null), as evaluate_stvg.py --temporal-only; "
                           "needed when an --eval-split/--validation-split has no ground-truth boxes")
    data.add_argument("--max-train-queries", type=int, default=None, help="use the first N training queries")
    data.add_argument("--max-eval-queries", type=int, default=None, help="evaluate the first N queries only")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")

    optim = parser.add_argument_group("optimisation (paper: AdamW, lr 5e-5 warmed up then decayed, 20 epochs, batch 32)")
    optim.add_argument("--epochs", type=int, default=20)
    optim.add_argument("--batch-size", type=int, default=32, help="per process")
    optim.add_argument("--eval-batch-size", type=int, default=32)
    optim.add_argument("--learning-rate", type=float, default=5e-5)
    optim.add_argument("--weight-decay", type=float, default=0.01)
    optim.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of each network's steps")
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--alternate", choices=("epoch", "iteration"), default="epoch",
                       help="E/M alternation: a full E-pass then a full M-pass per epoch (paper), or per batch")
    optim.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                       help="default: the launcher's --mixed_precision / accelerate config (else no); "
                            "when given, it overrides them")
    optim.add_argument("--seed", type=int, default=0)

    method = parser.add_argument_group("method")
    method.add_argument("--losses", choices=OBJECTIVES, default="both",
                        help="paper ablations: both losses, L_contra only (q_phi alone), or no L_contra")
    method.add_argument("--reconstruction-assignment", choices=RECONSTRUCTION_ASSIGNMENTS, default=None,
                        help="assignment fed to the M-step reconstruction (DESIGN sec. 4 open point); "
                             "default: the model config's default")
    method.add_argument("--reconstruction-memory", choices=RECONSTRUCTION_MEMORIES, default=None,
                        help="what the relation decoder reads (StvgConfig.reconstruction_memory); default: the config's")
    method.add_argument("--temporal-context", choices=TEMPORAL_CONTEXTS, default=None,
                        help="what the Eq. 7 temporal head reads (StvgConfig.temporal_context); default: the config's")
    method.add_argument("--box-motion", choices=("on", "off"), default=None,
                        help="tube motion in the box embedding (StvgConfig.box_motion); default: the config's")
    method.add_argument("--hidden-size", type=int, default=None, help="default: model config (256)")
    method.add_argument("--num-attention-heads", type=int, default=None)
    method.add_argument("--num-layers", type=int, default=None,
                        help="sets every encoder/decoder depth (video, language, temporal, decoder)")
    method.add_argument("--intermediate-size", type=int, default=None)
    method.add_argument("--word-embedding-dim", type=int, default=None)
    method.add_argument("--dropout", type=float, default=None)
    method.add_argument("--contrastive-temperature", type=float, default=None)
    method.add_argument("--assignment-loss-weight", type=float, default=None, help="weight of L_z (Eq. 9) in both steps")
    method.add_argument("--contrastive-loss-weight", type=float, default=None, help="weight of L_contra (Eq. 11)")
    method.add_argument("--reconstruction-loss-weight", type=float, default=None, help="weight of L_rec (Eq. 15)")
    method.add_argument("--fusion-beta", type=float, default=None)
    method.add_argument("--temporal-threshold", type=float, default=None)
    method.add_argument("--temporal-ranking-weight", type=float, default=None,
                        help="weight of the temporal ranking loss (StvgConfig.temporal_ranking_weight; 0 = off)")
    method.add_argument("--temporal-ranking-margin", type=float, default=None)
    method.add_argument("--relation-evidence", choices=RELATION_EVIDENCES, default=None,
                        help="what the relation memory is made of (StvgConfig.relation_evidence)")
    method.add_argument("--temporal-max-width", type=float, default=None,
                        help="upper bound of the Eq. 7 Gaussian width (StvgConfig.temporal_max_width)")
    method.add_argument("--glove", type=Path, default=None, help="GloVe text file to initialise the word tables")

    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUTPUT_DIR")
    run.add_argument("--stop-after-epochs", type=int, default=None,
                     help="stop (checkpoint saved, no export) once this many epochs are done; --resume continues")
    run.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (0 = keep all)")
    run.add_argument("--report-to", default="auto", help="Accelerate trackers: auto (tensorboard if installed), none, "
                                                         "or a comma list (tensorboard,wandb,...)")
    run.add_argument("--no-progress", action="store_true", help="hide tqdm bars")
    run.add_argument("--no-plots", action="store_true", help="skip training_curves.png and tubes.png")
    run.add_argument("--push-to-hub", action="store_true")
    run.add_argument("--hub-model-id", default=None)
    run.add_argument("--hub-private", action="store_true")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    positive = ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps")
    for name in positive:
        if getattr(args, name) < 1:
            raise TrainingInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.learning_rate <= 0:
        raise TrainingInputError(f"--learning-rate must be > 0, got {args.learning_rate}")
    if not 0 <= args.warmup_ratio < 1:
        raise TrainingInputError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.push_to_hub and not args.hub_model_id:
        raise TrainingInputError("--push-to-hub needs --hub-model-id (e.g. --hub-model-id user/stvg-vem)")
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise TrainingInputError(f"--stop-after-epochs must be >= 1, got {args.stop_after_epochs}")


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def load_training_data(args: argparse.Namespace) -> dict[str, Any]:
    """Load and check everything before training starts: the train split (ground truth dropped),
    its usable relations, the evaluation splits' existence and (unless ``--temporal-only``) their
    ground-truth boxes, the tokenizer. Raises
    :class:`TrainingInputError` with the fix."""
    from processing_stvg.tokenization_stvg import build_word_tokenizer
    from stvg_data.batching import (
        assert_weakly_supervised,
        count_usable_relations,
        drop_ground_truth,
        tokenizer_corpus,
    )
    from stvg_data.dataset_folder import available_splits, load_stvg_split, read_card_metadata
    from stvg_data.schema import DatasetSchemaError

    dataset = str(args.dataset)
    try:
        metadata = read_card_metadata(dataset)
        splits = available_splits(dataset)
    except DatasetSchemaError as error:
        raise TrainingInputError(f"--dataset {dataset!r}: {error}") from error
    except Exception as error:  # the hub client raises many types for an unknown id or no network
        raise TrainingInputError(
            f"--dataset {dataset!r} is neither a dataset folder nor a reachable Hub dataset ({type(error).__name__}: "
            f"{error}); pass a folder written by dataset_scripts/ or an existing Hub id"
        ) from error
    if args.train_split not in splits:
        raise TrainingInputError(
            f"--dataset {dataset!r} has no {args.train_split!r} split (it has {splits}); "
            "training needs one: build it with a dataset_scripts converter or pass --train-split"
        )
    for flag, split in (("--eval-split", args.eval_split), ("--validation-split", args.validation_split)):
        if split and split != "none" and split not in splits:
            raise TrainingInputError(f"{flag} {split!r} is not a split of {dataset!r} (it has {splits}); "
                                     f"pass one of them, or {flag} none")
    if metadata.get("with_features") is False:
        raise TrainingInputError(f"--dataset {dataset!r} was converted with --no-features; extract features first")
    try:
        train = load_stvg_split(dataset, args.train_split)
        check_evaluation_splits(args, dataset)
    except DatasetSchemaError as error:
        raise TrainingInputError(f"--dataset {dataset!r}: {error}") from error
    queries = drop_ground_truth(train.queries)  # weak supervision: gt_* never reach the trainer
    assert_weakly_supervised(queries)
    if args.max_train_queries is not None:
        queries = queries.select(range(min(args.max_train_queries, queries.num_rows)))
    if queries.num_rows == 0:
        raise TrainingInputError(f"--dataset {dataset!r}: the {args.train_split!r} split has no queries")
    if args.losses != "contrastive" and count_usable_relations(queries) == 0:
        raise TrainingInputError(
            f"--dataset {dataset!r}: no query of the {args.train_split!r} split has a usable relation (subject, "
            "non-empty predicate, object); the M-step reconstructs relations, so it has nothing to learn from. "
            "Re-run the converter with a parser that finds relations, or train with --losses contrastive"
        )
    tokenizer = build_word_tokenizer(tokenizer_corpus(queries))
    return {"metadata": metadata, "splits": splits, "train": train, "train_queries": queries, "tokenizer": tokenizer}


def check_evaluation_splits(args: argparse.Namespace, dataset: str) -> None:
    """Without ``--temporal-only``, every split evaluated during or after training must carry ground-truth
    boxes (a VidSTG build without VidOR boxes has none): refuse before training rather than fail in the
    export. Only the evaluator's helper reads the split's ``gt_frame_ids``; nothing reaches the trainer."""
    if args.temporal_only:
        return
    from stvg_data.dataset_folder import load_stvg_split
    from stvg_data.evaluation import split_has_gt_boxes

    for flag, split in (("--eval-split", args.eval_split), ("--validation-split", args.validation_split)):
        if split and split != "none" and not split_has_gt_boxes(load_stvg_split(dataset, split)):
            raise TrainingInputError(
                f"{flag} {split!r}: its queries carry no ground-truth boxes (empty gt_boxes: was the dataset "
                "converted without VidOR box annotations?), so vIoU cannot be computed; pass --temporal-only "
                f"(m_tIoU only), or {flag} none"
            )


def dataset_dims(train: Any) -> dict[str, int]:
    """Region/frame feature sizes and proposals per frame, read from the data (not trusted from the card)."""
    features = train.videos.features
    region_shape = features["region_features"].shape
    frame_shape = features["frame_features"].shape
    return {"num_regions": int(region_shape[1]), "region_feature_dim": int(region_shape[2]),
            "frame_feature_dim": int(frame_shape[1])}


def build_config(args: argparse.Namespace, vocab_size: int, dims: dict[str, int]) -> Any:
    from modeling_stvg import StvgConfig

    values: dict[str, Any] = {"vocab_size": vocab_size, "objective": args.losses, **dims}
    optional = {
        "reconstruction_assignment": args.reconstruction_assignment,
        "reconstruction_memory": args.reconstruction_memory,
        "temporal_context": args.temporal_context,
        "box_motion": None if args.box_motion is None else args.box_motion == "on",
        "hidden_size": args.hidden_size,
        "num_attention_heads": args.num_attention_heads,
        "intermediate_size": args.intermediate_size,
        "word_embedding_dim": args.word_embedding_dim,
        "dropout": args.dropout,
        "contrastive_temperature": args.contrastive_temperature,
        "fusion_beta": args.fusion_beta,
        "assignment_loss_weight": args.assignment_loss_weight,
        "contrastive_loss_weight": args.contrastive_loss_weight,
        "reconstruction_loss_weight": args.reconstruction_loss_weight,
        "temporal_threshold": args.temporal_threshold,
        "temporal_max_width": args.temporal_max_width,
        "relation_evidence": args.relation_evidence,
        "temporal_ranking_weight": args.temporal_ranking_weight,
        "temporal_ranking_margin": args.temporal_ranking_margin,
    }
    values.update({key: value for key, value in optional.items() if value is not None})
    if args.num_layers is not None:
        for key in ("num_video_layers", "num_language_layers", "num_temporal_layers", "num_decoder_layers"):
            values[key] = args.num_layers
    try:
        return StvgConfig(**values)
    except (ValueError, TypeError) as error:
        raise TrainingInputError(f"bad model setting: {error}") from error


# --------------------------------------------------------------------------------------------------
# Schedules, checkpoints, logging
# --------------------------------------------------------------------------------------------------


def warmup_linear_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """LambdaLR: linear warm-up from 0 to the base lr over ``warmup_steps``, then linear decay to 0."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = max(total_steps - warmup_steps, 1)
        return max(0.0, (total_steps - step) / remaining)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (with ``trainer_state.json``), oldest first."""
    root = output_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.name.startswith("epoch_") and path.name[6:].isdigit() and (path / TRAINER_STATE).is_file():
            found.append((int(path.name[6:]), path))
    return [path for _, path in sorted(found)]


class JsonlLogger:
    """Append-only JSON-lines log written by the main process."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (an interrupted run that is resumed from an earlier checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(record) + "\n")


def _trackers(report_to: str) -> list[str]:
    if report_to in ("none", ""):
        return []
    if report_to == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return []
        return ["tensorboard"]
    return [name.strip() for name in report_to.split(",") if name.strip()]


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def accelerator_options(args: argparse.Namespace) -> dict[str, Any]:
    """``Accelerator`` options from the arguments: ``mixed_precision`` only when ``--mixed-precision``
    was given, so that by default the launcher's ``--mixed_precision`` / accelerate config applies."""
    return {} if args.mixed_precision is None else {"mixed_precision": args.mixed_precision}


class EMTrainer:
    """The alternating EM loop of Algorithm 1 over two separately prepared networks."""

    def __init__(self, args: argparse.Namespace, data: dict[str, Any]) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        from modeling_stvg import StvgModel
        from stvg_data.batching import StvgQueryDataset, collate_stvg

        self.args, self.data = args, data
        self.output_dir = Path(args.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        trackers = _trackers(args.report_to)
        self.accelerator = Accelerator(
            **accelerator_options(args),
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "runs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        )
        accelerator = self.accelerator
        set_seed(args.seed)
        self.tokenizer = data["tokenizer"]
        self.config = build_config(args, len(self.tokenizer), dataset_dims(data["train"]))
        self.model = StvgModel(self.config)
        if args.glove is not None:
            found = self.model.init_word_embeddings_from_glove(args.glove, self.tokenizer.get_vocab())
            accelerator.print(f"GloVe: {found} of {len(self.tokenizer)} words found in {args.glove}")
        train_set = StvgQueryDataset(data["train"].videos, data["train_queries"], self.tokenizer)
        generator = torch.Generator().manual_seed(args.seed)
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=args.batch_size, shuffle=True, collate_fn=collate_stvg,
            num_workers=args.num_workers, generator=generator,
        )
        decay, no_decay = [], []
        self.optimizers = []
        for network in (self.model.q_phi, self.model.p_theta):
            decay = [p for n, p in network.named_parameters() if p.requires_grad and p.ndim >= 2 and "norm" not in n]
            no_decay = [p for n, p in network.named_parameters() if p.requires_grad and (p.ndim < 2 or "norm" in n)]
            self.optimizers.append(torch.optim.AdamW(
                [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                lr=args.learning_rate,
            ))
        self.q_phi, self.p_theta, opt_q, opt_p, self.loader = accelerator.prepare(
            self.model.q_phi, self.model.p_theta, self.optimizers[0], self.optimizers[1], loader
        )
        self.optimizers = [opt_q, opt_p]
        self.batches_per_pass = len(self.loader)
        steps_per_pass = math.ceil(self.batches_per_pass / args.gradient_accumulation_steps)
        self.total_steps = steps_per_pass * args.epochs  # per network
        warmup = int(round(args.warmup_ratio * self.total_steps))
        self.schedulers = [warmup_linear_decay(opt, self.total_steps, warmup) for opt in self.optimizers]
        accelerator.register_for_checkpointing(*self.schedulers)
        self.state = {"epoch": 0, "global_step": 0, "e_steps": 0, "m_steps": 0}
        self.logger = JsonlLogger(self.output_dir / LOG_NAME, accelerator.is_main_process)
        if trackers:
            accelerator.init_trackers("stvg_vem", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                          for k, v in vars(args).items()})
        self.validation = None
        if args.validation_split:
            from stvg_data.dataset_folder import load_stvg_split

            self.validation = load_stvg_split(args.dataset, args.validation_split)

    # -- checkpoints ---------------------------------------------------------------------------------

    def resume(self) -> None:
        checkpoints = checkpoint_dirs(self.output_dir)
        if not checkpoints:
            self.accelerator.print(f"--resume: no checkpoint in {self.output_dir / CHECKPOINT_DIR}; starting fresh")
            self.logger.truncate_after(-1)
            return
        latest = checkpoints[-1]
        self.accelerator.load_state(str(latest))
        self.state = json.loads((latest / TRAINER_STATE).read_text(encoding="utf-8"))
        self.logger.truncate_after(self.state["global_step"])
        self.accelerator.print(f"resumed from {latest} (epoch {self.state['epoch']}, step {self.state['global_step']})")

    def save_checkpoint(self) -> Path:
        accelerator = self.accelerator
        path = self.output_dir / CHECKPOINT_DIR / f"epoch_{self.state['epoch']}"
        accelerator.save_state(str(path))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # the state file marks the checkpoint complete: written last, atomically
            tmp = path / (TRAINER_STATE + ".tmp")
            tmp.write_text(json.dumps(self.state), encoding="utf-8")
            os.replace(tmp, path / TRAINER_STATE)
            limit = self.args.save_total_limit
            if limit > 0:
                for old in checkpoint_dirs(self.output_dir)[:-limit]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return path

    # -- steps ---------------------------------------------------------------------------------------

    def _losses(self, phase: str, prepared: dict[str, torch.Tensor]):
        from modeling_stvg import compute_e_step_loss, compute_m_step_loss

        compute = compute_e_step_loss if phase == "E" else compute_m_step_loss
        trained, frozen = (self.q_phi, self.p_theta) if phase == "E" else (self.p_theta, self.q_phi)
        trained.train()
        frozen.eval()  # the frozen network gives the targets: no dropout, no gradient (it runs under no_grad)
        with self.accelerator.autocast():
            return compute(self.q_phi, self.p_theta, prepared, self.config, self.args.losses)

    def _optimizer_step(self, index: int) -> tuple[float, float]:
        """Clip, step the optimizer and its schedule; returns (grad norm, learning rate used)."""
        network = (self.q_phi, self.p_theta)[index]
        lr = float(self.optimizers[index].param_groups[0]["lr"])
        grad_norm = 0.0
        if self.args.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(network.parameters(), self.args.max_grad_norm)
            grad_norm = _scalar(norm) or 0.0
        self.optimizers[index].step()
        self.schedulers[index].step()
        self.optimizers[index].zero_grad(set_to_none=True)
        return grad_norm, lr

    def run_pass(self, phases: str, pass_index: int, progress: Any) -> None:
        """One pass over the training loader; ``phases`` is "E", "M" or "EM" (both on each batch)."""
        from modeling_stvg import prepare_stvg_inputs
        from stvg_data.batching import model_inputs

        accelerator, args = self.accelerator, self.args
        self.loader.set_epoch(pass_index)
        accumulated = {phase: [] for phase in phases}
        for batch_index, batch in enumerate(self.loader):
            with torch.no_grad():
                prepared = prepare_stvg_inputs(model_inputs(batch), self.config)
            boundary = (batch_index + 1) % args.gradient_accumulation_steps == 0 or batch_index + 1 == len(self.loader)
            for phase in phases:
                if args.losses == "contrastive" and phase == "M":
                    continue  # no M-step in the contrastive-only ablation (p_theta is unused at inference)
                network = self.q_phi if phase == "E" else self.p_theta
                if boundary:
                    step = self._losses(phase, prepared)
                    accelerator.backward(step.loss / args.gradient_accumulation_steps)
                else:
                    with accelerator.no_sync(network):
                        step = self._losses(phase, prepared)
                        accelerator.backward(step.loss / args.gradient_accumulation_steps)
                accumulated[phase].append(step)
                if boundary:
                    grad_norm, lr = self._optimizer_step(0 if phase == "E" else 1)
                    self._log_step(phase, accumulated[phase], grad_norm, lr)
                    accumulated[phase] = []
            if progress is not None:
                progress.update(1)

    def _log_step(self, phase: str, steps: list[Any], grad_norm: float, lr: float) -> None:
        accelerator = self.accelerator
        self.state["global_step"] += 1
        self.state["e_steps" if phase == "E" else "m_steps"] += 1
        local = {}
        for name in STEP_LOSS_LABELS:
            values = [getattr(step, name) for step in steps if getattr(step, name) is not None]
            if values:
                local[name] = torch.stack([v.detach().float() for v in values]).mean()
        keys = sorted(local)
        if keys:  # every process has the same keys; average over processes
            stacked = accelerator.reduce(torch.stack([local[k] for k in keys]).to(accelerator.device), "mean")
            local = dict(zip(keys, stacked.tolist()))
        record = {"step": self.state["global_step"], "epoch": self.state["epoch"], "phase": phase,
                  "lr": lr, "grad_norm": grad_norm}
        record.update({f"loss/{STEP_LOSS_LABELS[k]}": v for k, v in local.items()})
        self.logger.write(record)
        if accelerator.trackers:
            accelerator.log({f"{phase}/{k}": v for k, v in record.items() if k not in ("step", "phase")},
                            step=self.state["global_step"])

    def evaluate_split(self, split: Any, max_queries: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Predict and score ``split`` on the main process (ground truth read by the evaluator only)."""
        from stvg_data.evaluation import evaluate
        from stvg_data.inference import predict_split

        if max_queries is not None:
            split = type(split)(videos=split.videos, queries=split.queries.select(range(min(max_queries, split.queries.num_rows))),
                                metadata=split.metadata)
        predictions = predict_split(self.model, self.tokenizer, split, batch_size=self.args.eval_batch_size,
                                    device=self.accelerator.device, progress=not self.args.no_progress)
        return evaluate(split, predictions, temporal_only=self.args.temporal_only), predictions

    def train(self) -> bool:
        """Run the remaining epochs. Returns False when stopped early by ``--stop-after-epochs``."""
        from tqdm.auto import tqdm

        accelerator, args = self.accelerator, self.args
        passes = 2 if args.alternate == "epoch" else 1
        progress = None
        if not args.no_progress:
            progress = tqdm(total=args.epochs * passes * self.batches_per_pass, desc="train", unit="batch",
                            disable=not accelerator.is_local_main_process,
                            initial=self.state["epoch"] * passes * self.batches_per_pass)
        while self.state["epoch"] < args.epochs:
            epoch = self.state["epoch"]
            started = time.time()
            if args.alternate == "epoch":
                self.run_pass("E", 2 * epoch, progress)  # E-step: update phi over the whole training set
                self.run_pass("M", 2 * epoch + 1, progress)  # M-step: update theta over the whole training set
            else:
                self.run_pass("EM", 2 * epoch, progress)
            self.state["epoch"] = epoch + 1
            record = {"step": self.state["global_step"], "epoch": epoch + 1, "epoch_seconds": time.time() - started}
            if self.validation is not None:
                if accelerator.is_main_process:
                    metrics, _ = self.evaluate_split(self.validation, args.max_eval_queries)
                    record.update({f"eval/{k}": v for k, v in metrics["overall"].items()
                                   if k != "num_queries" and v is not None})  # vIoU is None with --temporal-only
                    if accelerator.trackers:
                        accelerator.log({k: v for k, v in record.items() if k.startswith("eval/")},
                                        step=self.state["global_step"])
                accelerator.wait_for_everyone()
            self.logger.write(record)
            self.save_checkpoint()
            if args.stop_after_epochs is not None and self.state["epoch"] >= args.stop_after_epochs \
                    and self.state["epoch"] < args.epochs:
                accelerator.print(f"stopping after epoch {self.state['epoch']} (--stop-after-epochs); "
                                  "continue with --resume")
                if progress is not None:
                    progress.close()
                return False
        if progress is not None:
            progress.close()
        return True


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def launch_command(argv: Sequence[str]) -> str:
    return "accelerate launch train_accelerate.py " + " ".join(shlex.quote(a) for a in argv)


def _find_settings(metadata: Any, key: str) -> dict[str, Any] | None:
    """The first dict stored under ``key`` anywhere in the card's metadata (e.g. the feature extractor
    settings a converter recorded)."""
    if isinstance(metadata, dict):
        if isinstance(metadata.get(key), dict):
            return metadata[key]
        for value in metadata.values():
            found = _find_settings(value, key)
            if found is not None:
                return found
    return None


def save_tokenizer_or_processor(tokenizer: Any, output_dir: Path, metadata: dict[str, Any]) -> str:
    """Save an ``StvgProcessor`` (video processor + the feature extractor the dataset was built with, as
    recorded in its card + the trained tokenizer), so ``AutoProcessor.from_pretrained(OUT)`` can ground
    raw videos; falls back to the tokenizer alone when the processor cannot be built."""
    try:
        from processing_stvg.feature_extraction_stvg import StvgFeatureExtractor
        from processing_stvg.processing_stvg import StvgProcessor
        from processing_stvg.video_processing_stvg import StvgVideoProcessor

        settings = _find_settings(metadata, "feature_extractor")
        if settings is not None:
            feature_extractor = StvgFeatureExtractor.from_dict(dict(settings))
        else:
            feature_extractor = StvgFeatureExtractor(label_names=metadata.get("label_names") or None)
        processor = StvgProcessor(video_processor=StvgVideoProcessor(), feature_extractor=feature_extractor,
                                  tokenizer=tokenizer)
        processor.save_pretrained(str(output_dir))
        return "processor"
    except Exception as error:  # e.g. settings written by an older converter; the tokenizer alone still works
        print(f"note: saving the tokenizer only (StvgProcessor could not be built: {type(error).__name__}: {error})",
              file=sys.stderr)
        tokenizer.save_pretrained(str(output_dir))
        return "tokenizer"


def model_card(args: argparse.Namespace, argv: Sequence[str], data: dict[str, Any], config: Any,
               metrics: dict[str, Any] | None, state: dict[str, Any], mixed_precision: str | None = None) -> str:
    from stvg_data.evaluation import format_metrics_table

    metadata = data["metadata"]
    lines = [
        "---",
        "library_name: transformers",
        "tags: [video-grounding, spatio-temporal-video-grounding, weakly-supervised, stvg-vem]",
        f"datasets: [{json.dumps(str(args.dataset))}]" if not Path(str(args.dataset)).exists() else "datasets: []",
        "---",
        "",
        "# stvg-vem: weakly-supervised spatio-temporal video grounding",
        "",
        "Variational cross-modal alignment (Jin & Mu, ECCV 2024), trained with alternating variational EM "
        "(Algorithm 1) on video-sentence pairs only: no boxes and no time spans were read in training.",
        "",
        "## Data",
        "",
        f"- dataset: `{args.dataset}` (source: {metadata.get('source', 'unknown')}), train split `{args.train_split}`: "
        f"{data['train_queries'].num_rows} queries, {data['train'].videos.num_rows} clips",
        f"- features: {config.num_regions} proposals per frame, region dim {config.region_feature_dim}, "
        f"frame dim {config.frame_feature_dim}; vocabulary {config.vocab_size} words",
        "",
        "## Training",
        "",
        f"- {state['epoch']} epochs, alternation by {args.alternate}, losses `{args.losses}`, reconstruction "
        f"assignment `{config.reconstruction_assignment}`, batch {args.batch_size} per process, lr {args.learning_rate}, "
        f"seed {args.seed}, mixed precision {mixed_precision or args.mixed_precision or 'no'}; {state['e_steps']} E-steps and {state['m_steps']} "
        "M-steps",
        "",
        "```bash",
        launch_command(argv),
        "```",
        "",
    ]
    if metrics:
        lines += [f"## Results ({args.eval_split} split, protocol {metrics.get('protocol')}, percent)", "", "```",
                  format_metrics_table(metrics), "```", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "import modeling_stvg  # registers the model (or pass trust_remote_code=True)",
        "from transformers import AutoModel, AutoTokenizer",
        "from stvg_data.dataset_folder import load_stvg_split",
        "from stvg_data.inference import predict_split",
        "",
        "model = AutoModel.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "predictions = predict_split(model, tokenizer, load_stvg_split(DATASET, 'test'))",
        "```",
        "",
        "## Citation",
        "",
        "Jin, Y., Mu, Y.: Weakly-Supervised Spatio-Temporal Video Grounding with Variational Cross-Modal Alignment. "
        "ECCV 2024.",
        "",
    ]
    return "\n".join(lines)


def hub_files(output_dir: Path) -> list[str]:
    """Files of the export that go to the Hub (relative paths): everything but training checkpoints,
    tensorboard runs and temporary files."""
    from huggingface_hub.utils import filter_repo_objects

    files = sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file())
    return list(filter_repo_objects(files, ignore_patterns=HUB_IGNORE_PATTERNS))


def push_to_hub(output_dir: Path, repo_id: str, private: bool, metrics: dict[str, Any] | None) -> str:
    """Create the model repo (if needed) and upload the export in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    message = "stvg-vem checkpoint"
    if metrics and "overall" in metrics and metrics["overall"].get("m_vIoU") is not None:
        message += f" (m_vIoU {100 * metrics['overall']['m_vIoU']:.2f})"
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(output_dir / name))
                  for name in hub_files(output_dir)]
    api.create_commit(repo_id=repo_id, repo_type="model", operations=operations, commit_message=message)
    return repo_id


def export(trainer: EMTrainer, argv: Sequence[str]) -> dict[str, Any] | None:
    """Main process: save_pretrained + tokenizer/processor, evaluate, model card, plots, push."""
    from stvg_data.dataset_folder import load_stvg_split
    from stvg_data.evaluation import format_metrics_table, save_metrics, write_json_atomic

    args, accelerator, output_dir = trainer.args, trainer.accelerator, trainer.output_dir
    metrics = None
    if accelerator.is_main_process:
        model = trainer.model  # the q_phi/p_theta modules are shared with the prepared wrappers
        model.save_pretrained(str(output_dir))
        save_tokenizer_or_processor(trainer.tokenizer, output_dir, trainer.data["metadata"])
        predictions: list[dict[str, Any]] = []
        eval_split = None
        if args.eval_split and args.eval_split != "none":
            eval_split = load_stvg_split(args.dataset, args.eval_split)
            metrics, predictions = trainer.evaluate_split(eval_split, args.max_eval_queries)
            metrics = {**metrics, "dataset": str(args.dataset), "split": args.eval_split,
                       "epochs": trainer.state["epoch"], "seed": args.seed, "losses": args.losses,
                       "reconstruction_assignment": trainer.config.reconstruction_assignment,
                       "alternate": args.alternate}
            save_metrics(metrics, output_dir / "metrics.json")
            write_json_atomic(predictions, output_dir / "predictions.json")
            trainer.logger.write({"step": trainer.state["global_step"], "epoch": trainer.state["epoch"],
                                  **{f"test/{k}": v for k, v in metrics["overall"].items()
                                     if k != "num_queries" and v is not None}})
            accelerator.print(f"{args.eval_split}: {metrics['num_queries']} queries")
            accelerator.print(format_metrics_table(metrics))
        card = model_card(args, argv, trainer.data, trainer.config, metrics, trainer.state,
                          mixed_precision=str(accelerator.mixed_precision))
        (output_dir / "README.md").write_text(card, encoding="utf-8")
        if not args.no_plots:
            write_plots(output_dir, eval_split, predictions)
        if args.push_to_hub:
            repo = push_to_hub(output_dir, args.hub_model_id, args.hub_private, metrics)
            accelerator.print(f"pushed {output_dir} to https://huggingface.co/{repo}")
    accelerator.wait_for_everyone()
    return metrics


def write_plots(output_dir: Path, eval_split: Any, predictions: list[dict[str, Any]]) -> None:
    from stvg_data.reporting import plot_training_curves, plot_tubes

    log = output_dir / LOG_NAME
    if log.is_file():
        try:
            plot_training_curves(log, output_dir / "training_curves.png")
        except ValueError as error:
            print(f"note: no training curves ({error})", file=sys.stderr)
    if eval_split is not None and predictions:
        query = eval_split.queries[0]
        by_id = {p["query_id"]: p for p in predictions}
        if query["query_id"] in by_id:
            plot_tubes(eval_split.video_row(query["video_id"]), query, by_id[query["query_id"]], output_dir / "tubes.png",
                       label_names=eval_split.label_names)


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Train (or resume), export and evaluate. Returns the eval metrics (main process) or None."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    check_arguments(args)
    data = load_training_data(args)  # every input check happens here, before any model or process group
    trainer = EMTrainer(args, data)
    if args.resume:
        trainer.resume()
    elif checkpoint_dirs(args.output_dir):
        raise TrainingInputError(f"{args.output_dir} already holds checkpoints; pass --resume to continue, "
                                 "or choose a fresh --output-dir")
    else:
        trainer.logger.truncate_after(-1)
    try:
        finished = trainer.train()
        metrics = export(trainer, argv) if finished else None
    finally:
        trainer.accelerator.end_training()
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(argv)
    except TrainingInputError as error:
        print(f"train_accelerate.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
