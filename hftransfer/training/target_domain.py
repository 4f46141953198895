"""What a domain-adaptation run adds to the loop: the domain gap before training, and the record of the target."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..adaptation.criteria import SELECTION_RULES
from ..adaptation.domain_gap import domain_gap
from ..data import INDEX_COLUMN
from ..records import DomainAdaptation, RunResults
from .runtime import from_main_process
from .setup import TrainingRun


def measure_domain_gap(run: TrainingRun) -> dict:
    """Proxy A-distance and MMD between source and target train features of the backbone before training
    (``--domain_gap_samples`` per domain), kept in the run state: a resumed run reports the same gap."""
    cfg, accelerator = run.cfg, run.accelerator
    if run.state.global_step > 0 or run.state.epoch > 0 or not cfg.domain_gap_samples:
        return {}
    gap = {}
    if accelerator.is_main_process:
        from torch.utils.data import DataLoader

        pipeline, column = run.loaders.pipeline, run.bundle.input_column
        features = []
        was_training = run.module.training
        run.module.eval()
        for split in ("train", "target_train"):
            prepared = run.loaders.prepared[split]
            n = min(cfg.domain_gap_samples, len(prepared))
            # torch's permutation, not data.subset's shuffle: the recorded gaps of earlier runs stay comparable
            order = torch.randperm(len(prepared), generator=torch.Generator().manual_seed(cfg.seed))[:n]
            subset = prepared.select(order.tolist())
            loader = DataLoader(pipeline.eval_view(subset, column), batch_size=cfg.per_device_eval_batch_size,
                                collate_fn=pipeline.collate)
            rows = []
            for batch in tqdm(loader, desc=f"domain gap: {split.replace('_', ' ')} features", leave=False,
                              dynamic_ncols=True):
                batch = {k: v.to(accelerator.device) for k, v in batch.items() if k not in ("labels", INDEX_COLUMN)}
                with torch.no_grad():
                    rows.append(run.module.forward_features(**batch).float().cpu())
            features.append(torch.cat(rows))
        run.module.train(was_training)
        gap = domain_gap(*features, max_per_domain=None, seed=cfg.seed)
        accelerator.print(f"domain gap of the backbone before training ({gap['samples_per_domain']} examples per "
                          f"domain): proxy A-distance {gap['proxy_a_distance']:.3f} (0 = indistinguishable, 2 = "
                          f"separable), MMD {gap['mmd']:.4f}")
    run.state.domain_gap = from_main_process(accelerator, gap)
    return run.state.domain_gap


def prepare_target_epoch(run: TrainingRun, epoch: int) -> None:
    """Before epoch ``epoch`` trains: what the adaptation method needs from the whole target split (self-training's
    pseudo-labels). Nothing for the other methods.

    Self-training refreshes its pseudo-labels once per epoch from the second on (the first trains on the source
    labels alone: the head is untrained before it), with the model as the epoch starts. They live in the method's
    buffers, which checkpoints save: a run resumed inside an epoch finds that epoch's labels there and keeps them.
    """
    from ..adaptation.methods import SelfTraining

    method = run.adaptation
    if not isinstance(method, SelfTraining) or epoch == 0 or int(method.pseudo_epoch) == epoch:
        return
    index, confidence, predicted = predict_target_train(run)
    counts = method.set_pseudo_labels(index, confidence, predicted, epoch).tolist()
    names = run.bundle.id2label
    run.accelerator.print(f"self-training, epoch {epoch + 1}: {sum(counts)} of {len(method.pseudo_labels)} target "
                          f"examples pseudo-labelled (top probability >= {method.threshold:g}): "
                          + ", ".join(f"{names.get(k, k)} {n}" for k, n in enumerate(counts)))


def predict_target_train(run: TrainingRun) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every target train example's ``INDEX_COLUMN``, top class probability and top class, predicted by the current
    model (eval mode, eval preprocessing: no augmentation); each process scores its shard and every process gets
    all of them. Leaves the global RNG as it found it (DataLoader iterators draw a seed from it)."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    cfg, accelerator, pipeline = run.cfg, run.accelerator, run.loaders.pipeline
    view = pipeline.eval_view(run.loaders.prepared["target_train"], run.bundle.input_column)
    loader = DataLoader(view, batch_size=cfg.per_device_eval_batch_size, shuffle=False, collate_fn=pipeline.collate,
                        num_workers=getattr(run.loaders.eval, "num_workers", 0))
    # sharded like the run's loaders, but not registered with the accelerator: checkpoints keep their loader list
    loader = prepare_data_loader(loader, accelerator.device, num_processes=accelerator.num_processes,
                                 process_index=accelerator.process_index, put_on_device=True)
    was_training = run.module.training
    run.module.eval()
    out = []
    with torch.random.fork_rng(devices=[]):
        for batch in tqdm(loader, desc="self-training: pseudo-labelling the target", leave=False, dynamic_ncols=True,
                          disable=not accelerator.is_local_main_process):
            index = batch.pop(INDEX_COLUMN)
            batch.pop("labels", None)
            with torch.no_grad(), accelerator.autocast():
                logits = run.module(**batch).logits
            confidence, predicted = torch.softmax(logits.float(), dim=-1).max(dim=-1)
            out.append([t.cpu() for t in accelerator.gather_for_metrics((index, confidence, predicted))])
    run.module.train(was_training)
    index, confidence, predicted = (torch.cat(parts) for parts in zip(*out))
    return index, confidence, predicted


def adaptation_record(run: TrainingRun, results: RunResults, gap: dict, target_test: dict | None) -> DomainAdaptation:
    """What a target-domain run tells about the target: method, gap, the selected epoch's scores, the oracle."""
    cfg, m = run.cfg, results.metrics
    record = DomainAdaptation(method=cfg.domain_adaptation, weight=cfg.adaptation_weight,
                              selection_criterion=cfg.selection_criterion,
                              selection_rule=SELECTION_RULES[cfg.selection_criterion],
                              target_train_samples=len(run.bundle.target.train), domain_gap=gap,
                              selected_epoch=run.state.best_epoch, source_accuracy=m.get("eval_accuracy"),
                              selection_score=m.get("eval_selection_score"), target_im=m.get("eval_target_im"),
                              selection_scores=m.get("eval_selection_scores") or {},
                              self_training_threshold=(cfg.self_training_threshold
                                                       if cfg.adaptation_loss == "self_training" else None),
                              adversary_warmup_steps=(cfg.adversary_warmup_steps
                                                      if cfg.adaptation_loss in ("dann", "cdan") else None),
                              target_entropy=m.get("eval_target_entropy"),
                              target_diversity=m.get("eval_target_diversity"),
                              target_oracle_accuracy=m.get("eval_target_oracle_accuracy"),
                              target_oracle_f1=m.get("eval_target_oracle_f1"))
    oracle = [(h["target_oracle_accuracy"], h["epoch"]) for h in run.state.history
              if h.get("target_oracle_accuracy") is not None]
    if oracle:
        best_accuracy, best_epoch = max(oracle, key=lambda x: (x[0], -x[1]))
        record.target_oracle_best_accuracy, record.target_oracle_best_epoch = best_accuracy, best_epoch
    if target_test is not None:
        record.target_test_accuracy, record.target_test_f1 = target_test["accuracy"], target_test["f1"]
        record.target_test_samples = target_test["samples"]
    return record
