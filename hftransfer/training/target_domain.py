"""What a domain-adaptation run adds to the loop: the domain gap before training, and the record of the target."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..adaptation.domain_gap import domain_gap
from ..adaptation.methods import SELECTION_RULES
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
    pseudo-labels). Nothing for the other methods."""
    return None


def adaptation_record(run: TrainingRun, results: RunResults, gap: dict, target_test: dict | None) -> DomainAdaptation:
    """What a target-domain run tells about the target: method, gap, the selected epoch's scores, the oracle."""
    cfg, m = run.cfg, results.metrics
    record = DomainAdaptation(method=cfg.domain_adaptation, weight=cfg.adaptation_weight,
                              selection_criterion=cfg.selection_criterion,
                              selection_rule=SELECTION_RULES[cfg.selection_criterion],
                              target_train_samples=len(run.bundle.target.train), domain_gap=gap,
                              selected_epoch=run.state.best_epoch, source_accuracy=m.get("eval_accuracy"),
                              selection_score=m.get("eval_selection_score"), target_im=m.get("eval_target_im"),
                              target_entropy=m.get("eval_target_entropy"),
                              target_diversity=m.get("eval_target_diversity"),
                              target_oracle_accuracy=m.get("eval_target_oracle_accuracy"),
                              target_oracle_f1=m.get("eval_target_oracle_f1"))
    oracle = [(h["target_oracle_accuracy"], h["epoch"]) for h in run.state.history if h.get("target_oracle_accuracy") is not None]
    if oracle:
        best_accuracy, best_epoch = max(oracle, key=lambda x: (x[0], -x[1]))
        record.target_oracle_best_accuracy, record.target_oracle_best_epoch = best_accuracy, best_epoch
    if target_test is not None:
        record.target_test_accuracy, record.target_test_f1 = target_test["accuracy"], target_test["f1"]
        record.target_test_samples = target_test["samples"]
    return record
