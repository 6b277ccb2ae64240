"""Preference tuning on chosen/rejected pairs through TRL: DPO (preference.loss_type picks IPO, hinge and
TRL's other variants), KTO (each pair as one desirable and one undesirable answer), ORPO, CPO and SimPO
(no reference model). LoRA, DoRA or full fine-tuning as for SFT; the reference is the starting model
(with LoRA, the same weights with the adapter switched off)."""

from __future__ import annotations

import copy
import math
from typing import Any

from ..config import TunelabConfig
from ..config.schema import REFERENCE_FREE
from ..models.load import starting_model
from ..training import auto
from ..training.setup import wrap_model
from ..training.trl_common import conversational, eval_metrics, final_eval, pair_lengths, quiet, trl_kwargs
from .lifecycle import Prepared, Session, Start
from .pairs import prepare_pairs


def prepare(start: Start) -> Prepared:
    return prepare_pairs(start.cfg)


def _dataset(cfg: TunelabConfig, pairs: list[Any], tokenizer: Any) -> Any:
    from datasets import Dataset

    rows = [conversational(p, tokenizer) for p in pairs]
    if cfg.method == "kto":  # unpaired: the chosen answer is desirable, the rejected one is not
        rows = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                for r in rows for side in ("chosen", "rejected")]
    return Dataset.from_list(rows)


def _trainer_class(cfg: TunelabConfig) -> tuple[Any, Any, dict[str, Any]]:
    p = cfg.preference
    if cfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig, dict(beta=p.beta, loss_type=[p.loss_type], label_smoothing=p.label_smoothing,
                                           max_length=cfg.model.max_length, truncation_mode="keep_end")
    if cfg.method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig, dict(beta=p.beta, max_length=cfg.model.max_length)
    if cfg.method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig, dict(beta=p.beta, max_length=cfg.model.max_length,
                                             max_completion_length=cfg.model.max_length - p.max_prompt_tokens)
    from trl.experimental.cpo import CPOConfig, CPOTrainer  # cpo, simpo

    extra = dict(loss_type="simpo", simpo_gamma=p.simpo_gamma, cpo_alpha=0.0) if cfg.method == "simpo" else {}
    return CPOTrainer, CPOConfig, dict(beta=p.beta, max_length=cfg.model.max_length,
                                       max_completion_length=cfg.model.max_length - p.max_prompt_tokens) | extra


def train(session: Session, prepared: Prepared) -> Any:
    from transformers import set_seed

    cfg, console = session.cfg, session.console
    train_pairs, val = prepared.data.train, prepared.data.val
    set_seed(cfg.train.seed)
    model = starting_model(session.start.base, **auto.loading(cfg))
    n_params = sum(p.numel() for p in model.parameters())
    # full fine-tuning needs the starting weights beside the policy; LoRA switches its adapter off instead
    needs_ref = cfg.method in ("dpo", "kto") and cfg.peft.method == "full"
    ref = copy.deepcopy(model).eval().requires_grad_(False) if needs_ref else None
    model = wrap_model(model, cfg, "CAUSAL_LM")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hp = session.hyperparams(n_params=n_params, lengths=pair_lengths(train_pairs))
    session.announce(hp, n_params=n_params, trainable=trainable, method=cfg.method,
                     what=f"{cfg.method}  pairs {len(train_pairs)} train / {len(val)} validation")
    trainer_cls, config_cls, method_args = _trainer_class(cfg)
    args = config_cls(**trl_kwargs(cfg, hp, session.run.checkpoints, has_val=bool(val)), **method_args,
                      bf16=session.bf16)
    extra = {"ref_model": ref} if cfg.method in ("dpo", "kto") else {}
    trainer = quiet(trainer_cls(model=model, args=args, train_dataset=_dataset(cfg, train_pairs, session.tokenizer),
                                eval_dataset=_dataset(cfg, val, session.tokenizer) if val else None,
                                processing_class=session.tokenizer,
                                callbacks=session.callbacks(), **extra))
    summary = session.summary
    summary.update(method=cfg.method, task="chat", base_model=cfg.model.base, train_pairs=len(train_pairs),
                   validation_pairs=len(val), precision=session.precision)
    if val and cfg.method in REFERENCE_FREE and cfg.eval.compare_base and not session.resume:
        # no reference model: the starting model already ranks pairs by its own likelihood; that is the baseline
        session.phase("scoring base model")
        base_acc = eval_metrics(trainer.evaluate()).get("eval_rewards_accuracies")
        if base_acc is not None and not math.isnan(base_acc):
            summary["base_preference_accuracy"] = base_acc
    session.fit(trainer)
    session.save(trainer.model)
    if val:
        metrics = final_eval(trainer)
        summary |= metrics
        acc = metrics.get("eval_rewards_accuracies")
        if acc is not None and not math.isnan(acc):
            # held-out pairs whose implicit reward ranks the chosen answer above the rejected one
            summary["preference_accuracy"] = acc
            before = summary.get("base_preference_accuracy")
            console.print("Held-out preference accuracy: " + (f"before {before:.1%} -> " if before is not None else "")
                          + f"[bold]{acc:.1%}[/] "
                          f"(margin {metrics.get('eval_rewards_margins', float('nan')):.3f})")
    return trainer.model
