"""Linear probe first, then fine-tune (LP-FT; Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features
and Underperform Out-of-Distribution"): fresh heads trained together with the encoder send large, random
gradients into it at the start and distort the features it was pretrained to give. Training the heads alone
first, on the frozen encoder, means fine-tuning starts from heads that already fit and moves the encoder less.

    prepared run ─► phase 1: the same trainer class on the frozen-encoder fast path (precompute_embeddings),
                    heads only, up to `linear_probe_epochs`, early-stopped on validation (best epoch kept)
                 ─► the encoder's trainability restored ─► phase 2: the run's own training, unchanged

Phase 1 runs in the run's output folder (`linear_probe/`, removed afterwards); a resumed run resumes phase 2
(its checkpoints hold the probed heads), and a run killed during phase 1 starts phase 1 again (it is seeded, so
it trains the same heads).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from typing import Any

from transformers import TrainerCallback

from .trainer import MultiTaskTrainer

logger = logging.getLogger(__name__)

PROBE_FOLDER = "linear_probe"


def fit_heads_first(run: Any, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any] | None:
    """Phase 1 of LP-FT for a prepared run (train.TrainingRun): trains `run.model`'s heads in place with the
    encoder bit-for-bit unchanged; returns what it did (epochs, steps, best validation combined score), or None
    when the option is off or the run resumes phase 2."""
    args = run.training_args
    if not args.linear_probe_epochs or run.resume_from:
        return None
    model = run.model
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    validated = bool(run.data.validation)
    learning_rate = args.linear_probe_learning_rate or args.head_learning_rate or args.learning_rate
    probe_dir = os.path.join(args.output_dir, PROBE_FOLDER)
    probe_args = dataclasses.replace(
        args,
        output_dir=probe_dir,
        freeze_encoder=True,
        freeze_embeddings=False,
        freeze_bottom_layers=0,
        precompute_embeddings=True,
        embedding_distillation_weight=0.0,
        linear_probe_epochs=0,
        num_train_epochs=args.linear_probe_epochs,
        max_steps=-1,
        learning_rate=learning_rate,
        head_learning_rate=learning_rate,
        encoder_learning_rate=None,
        eval_strategy="epoch" if validated else "no",
        save_strategy="epoch" if validated else "no",
        load_best_model_at_end=validated,
        metric_for_best_model="combined_score",
        greater_is_better=True,
        early_stopping_patience=args.linear_probe_patience if validated else None,
        save_total_limit=1,
        resume_from_checkpoint=None,
        report_to=[],
        push_to_hub=False,
    )
    logger.info(
        f"Linear probe first (LP-FT): the heads train alone on the frozen encoder for up to "
        f"{args.linear_probe_epochs} epoch(s) at learning rate {learning_rate}."
    )
    trainer = MultiTaskTrainer(
        model=model,
        args=probe_args,
        train_dataset=run.data.train,
        eval_dataset=run.data.validation or None,
        processing_class=run.trainer.processing_class,
        callbacks=list(callbacks or []),
        group_sizes=run.data.group_sizes,
        distinct_text_keys=run.data.distinct_text_keys,
        run_fingerprint=run.fingerprint,
    )
    trainer.train()
    for name, parameter in model.named_parameters():  # phase 2 trains what the run's options say
        parameter.requires_grad_(trainable[name])
    if trainer.is_world_process_zero():
        shutil.rmtree(probe_dir, ignore_errors=True)
    return {
        "epochs": trainer.state.epoch,
        "steps": trainer.state.global_step,
        "learning_rate": learning_rate,
        "best_combined_score": trainer.state.best_metric,
    }


__all__ = ["fit_heads_first"]
