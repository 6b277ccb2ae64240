"""A reward model from preference pairs: the base with a one-output head, trained through TRL's
RewardTrainer so the chosen answer scores above the rejected one. The metric is pairwise accuracy on
held-out pairs. The run saves like a classification-head run (labels.json ["reward"]), so
`tunelab.load(run)` gives the scoring model, and `rl.rewards` can name the run."""

from __future__ import annotations

from typing import Any

from ..models.load import starting_model
from ..training import auto
from ..training.setup import wrap_model
from ..training.trl_common import conversational, eval_metrics, final_eval, pair_lengths, quiet, trl_kwargs
from .lifecycle import Prepared, Session, Start
from .pairs import prepare_pairs

LABELS = ["reward"]  # one score: the run loads as a 1-output head


def prepare(start: Start) -> Prepared:
    return prepare_pairs(start.cfg)


def train(session: Session, prepared: Prepared) -> None:
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    cfg, console = session.cfg, session.console
    train_pairs, val = prepared.data.train, prepared.data.val
    set_seed(cfg.train.seed)
    model = starting_model(session.start.base, labels=LABELS, pad_token_id=session.tokenizer.pad_token_id,
                           **auto.loading(cfg))
    n_params = sum(p.numel() for p in model.parameters())
    model = wrap_model(model, cfg, "SEQ_CLS")  # LoRA on the body; the new head is trained whole
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hp = session.hyperparams(n_params=n_params, lengths=pair_lengths(train_pairs), head=True)
    session.announce(hp, n_params=n_params, trainable=trainable, method="reward",
                     what=f"reward model  pairs {len(train_pairs)} train / {len(val)} validation")
    args = RewardConfig(**trl_kwargs(cfg, hp, session.run.checkpoints, has_val=bool(val)), bf16=session.bf16,
                        max_length=cfg.model.max_length)

    def dataset(pairs: list[Any]) -> Any:
        return Dataset.from_list([conversational(p, session.tokenizer) for p in pairs])

    trainer = quiet(RewardTrainer(model=model, args=args, train_dataset=dataset(train_pairs),
                                  eval_dataset=dataset(val) if val else None, processing_class=session.tokenizer,
                                  callbacks=session.callbacks()))
    summary = session.summary
    summary.update(method="reward", task="reward", base_model=cfg.model.base, train_pairs=len(train_pairs),
                   validation_pairs=len(val), precision=session.precision)
    dropped = len(train_pairs) - len(trainer.train_dataset)  # TRL drops pairs longer than max_length
    if dropped:
        summary["pairs_dropped_too_long"] = dropped
        console.print(f"[yellow]{dropped} training pair(s) are longer than model.max_length="
                      f"{cfg.model.max_length} tokens and were left out; raise model.max_length to keep them[/]")
    if val and cfg.eval.compare_base and not session.resume:  # an untrained head: what chance ranking gives
        session.phase("scoring base model")
        summary["base_pairwise_accuracy"] = eval_metrics(trainer.evaluate()).get("eval_accuracy")
    session.fit(trainer)
    session.save(trainer.model, labels=LABELS)
    if val:
        metrics = final_eval(trainer)
        summary |= metrics
        if "eval_accuracy" in metrics:
            summary["pairwise_accuracy"] = metrics["eval_accuracy"]
            base_acc = summary.get("base_pairwise_accuracy")
            console.print("Held-out pairwise accuracy: "
                          + (f"untrained {base_acc:.1%} -> " if base_acc is not None else "")
                          + f"[bold]{metrics['eval_accuracy']:.1%}[/]")
    return None
