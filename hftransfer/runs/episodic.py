"""``--strategy episodic``'s phase (``runs.backbone_phase``): prototypical episodes of the training split tune the
backbone (``tuning.episodic``), written to ``output_dir/episodic/``; then the run fits the head on the frozen,
tuned backbone (with ``--head_init prototypes``, from the class means of the embedding the episodes shaped)."""
from __future__ import annotations

from pathlib import Path

from ..tuning.episodic import episode_shape, episodic_finetune
from .backbone_phase import BackbonePhase, run_phase


def plan(cfg, labels: list[int], processes: int) -> tuple[str, dict]:
    ways, support, queries = episode_shape(labels, cfg.episode_ways, cfg.episode_support, cfg.episode_queries)
    line = (f"{cfg.episodes} episodes of {len(labels)} training examples, each {ways} classes x ({support} support + "
            f"{queries} queries), lr {cfg.episodic_learning_rate:g}, over {processes} process(es)")
    return line, {"episodes": cfg.episodes, "ways": ways, "support": support, "queries": queries,
                  "learning_rate": cfg.episodic_learning_rate}


EPISODIC = BackbonePhase(name="episodic", options=("episodes", "episode_ways", "episode_support", "episode_queries",
                                                   "episodic_learning_rate"),
                         plan=plan, tune=episodic_finetune, loss="prototypical cross-entropy of the queries (cosine)")


def episodic_phase(cfg, modality: str, accelerator, output_dir: Path, stop=None) -> tuple[Path, dict]:
    """Run (or reuse) the episodic phase; returns the tuned backbone's weights file and the phase's record."""
    return run_phase(EPISODIC, cfg, modality, accelerator, output_dir, stop)
