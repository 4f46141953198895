"""Rank candidate backbones for a dataset before fine-tuning any of them.

``rank_backbones(cfg)`` (CLI: ``hftransfer rank``) embeds the training split once per candidate with
the frozen backbone, exactly as a recipe's feature cache does (same preprocessing, same cache files
under ``--feature_cache_dir``, so a later linear probe or LP-FT run loads them instead of
recomputing), and scores the features by LogME and H-score (see ``transferability``). Candidates
are timm names, transformers ids or local folders of one modality; ``random:NAME`` scores the
architecture at random init, a sanity floor every pretrained candidate should clear, and
``NAME=FILE`` loads the backbone weights from a state-dict file.

Without ``--validation_dir`` the recipes hold out part of the training data, and so does ranking:
give both the same data flags and ``--feature_cache_dir`` to share the features.

Writes ``rank.csv``, ``rank.json`` and a bar chart ``rank.png`` to ``output_dir``, sorted by LogME.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..config.options import RANDOM_PREFIX
from ..errors import HFTransferError
from ..evaluation.report import new_figure, save_figure
from ..evaluation.transferability import transferability_scores
from ..files import write_json, write_text
from ..models.devices import usable_cores
from ..models.factory import modality_of
from ..models.transfer_model import create_transfer_model
from ..training.feature_cache import FeatureDataset, feature_cache_file, load_or_extract
from ..training.inputs import audio_kwargs, load_data
from ..training.loaders import create_dataloaders
from ..training.runtime import check_launch

COLUMNS = ("rank", "candidate", "logme", "h_score", "feature_dim", "samples", "seconds", "features")


@dataclasses.dataclass
class Candidate:
    spec: str  # as the user wrote it
    name: str  # what the backbone factory gets
    weights: str  # pretrained | random
    modality: str


def parse_candidate(spec: str) -> Candidate:
    """``NAME``, ``random:NAME`` or ``NAME=WEIGHTS`` (pretrained, random or a state-dict file) -> backbone
    name, weights and modality (image = timm, text = transformers)."""
    weights, name = ("random", spec[len(RANDOM_PREFIX):]) if spec.startswith(RANDOM_PREFIX) else ("pretrained", spec)
    if "=" in name:
        name, weights = name.split("=", 1)
        if weights not in ("pretrained", "random") and not Path(weights).is_file():
            raise HFTransferError(f"candidate '{spec}': weights '{weights}' is not pretrained, random or an existing file")
    if not name:
        raise HFTransferError(f"candidate '{spec}' names no backbone")
    modality = modality_of(name)
    if modality is None:
        raise HFTransferError(f"candidate folder '{name}' holds neither a timm model (config.json with 'architecture') "
                              "nor a transformers model (config.json with 'model_type')")
    if modality == "image" and Path(name).is_dir():
        name = f"local-dir:{name}"  # timm loads a folder in its Hub layout by this prefix
    return Candidate(spec, name, weights, modality)


def check_modalities(candidates: list[Candidate], data_modality: str | None) -> str:
    """One modality for all candidates, matching the data; otherwise a one-line error naming the odd ones."""
    if not candidates:
        raise HFTransferError("no candidates: pass --candidates NAME [NAME ...] (timm names or text encoder ids)")
    if data_modality == "audio":  # timm models see log-mel spectrograms, transformers ids are audio encoders
        for candidate in candidates:
            candidate.modality = "audio"
        return "audio"
    kinds = {c.modality for c in candidates}
    if len(kinds) > 1:
        parts = "; ".join(f"{m}: {', '.join(c.spec for c in candidates if c.modality == m)}" for m in sorted(kinds))
        raise HFTransferError(f"candidates mix modalities ({parts}): rank image and text backbones separately")
    modality = kinds.pop()
    if data_modality is not None and data_modality != modality:
        raise HFTransferError(f"the candidates are {modality} backbones but the data is {data_modality} "
                              f"(--{'train_dir' if data_modality == 'image' else 'train_file'}): pass matching data")
    return modality


def _data_modality(cfg) -> str | None:
    """image or audio for a class-per-subfolder folder, else None: a file (texts, or a manifest) or a datasets name is
    decided by the candidates."""
    from .modality import data_modality

    return data_modality(cfg) if cfg.train_dir else None


def embed_train_split(accelerator, train_cfg, candidate: Candidate, bundle) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Frozen features of the training split, as the recipes' feature cache computes (or stored) them.

    ``train_cfg`` is the ``TrainConfig`` of the recipe run that would train ``candidate``: its data,
    augmentation and cache options make the cache key, so the run finds these features."""
    cfg = train_cfg
    set_seed(cfg.seed)  # a random-init candidate gets the same weights as the recipe's --weights random run
    model = create_transfer_model(candidate.modality, candidate.name, bundle.id2label, weights=candidate.weights,
                                  multi_label=bundle.multi_label, pooling=cfg.pooling,
                                  **audio_kwargs(cfg, candidate.modality)).eval()
    model.backbone.use_fast_layout()
    # the eval split is emptied and the test split dropped because ranking never reads them
    own = dataclasses.replace(bundle, eval=bundle.eval.select([]), test=None)
    loaders = create_dataloaders(train_cfg, own, model.backbone, with_cache=True)
    model, loader = accelerator.prepare(model, loaders.train_extract)
    target = FeatureDataset(len(own.train))
    cache_file = feature_cache_file(cfg.feature_cache_dir, accelerator.unwrap_model(model).backbone,
                                    loaders.fingerprints["train"], loaders.preprocessing, cfg.feature_cache_dtype, "train")
    how = load_or_extract(accelerator, model, loader, target, getattr(torch, cfg.feature_cache_dtype),
                          f"features ({candidate.spec})", cache_file)
    accelerator.free_memory()
    return target.features, target.labels, "cache" if how.startswith("loaded") else "extracted"


def rank_backbones(cfg) -> list[dict]:
    """Score every candidate of ``cfg`` (a ``RankConfig``) and write the ranking to ``cfg.output_dir``."""
    candidates = [parse_candidate(spec) for spec in cfg.candidates]
    modality = check_modalities(candidates, _data_modality(cfg))
    accelerator = Accelerator()
    check_launch(accelerator)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cfg.num_threads or usable_cores())
    with accelerator.main_process_first():
        bundle = load_data(cfg.train_config(candidates[0].name, candidates[0].weights), modality)
    rows = score_candidates(accelerator, candidates, bundle, lambda c: cfg.train_config(c.name, c.weights))
    if accelerator.is_main_process:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_ranking(rows, out, {"modality": modality, "train_samples": len(bundle.train),
                                  "labels": list(bundle.id2label.values()), "config": cfg.to_dict()})
        accelerator.print(format_table(rows))
        accelerator.print(f"-> {out / 'rank.csv'}, {out / 'rank.json'}, {out / 'rank.png'}")
    accelerator.end_training()
    return rows


def score_candidates(accelerator, candidates: list[Candidate], bundle, train_config_of, key: str = "logme") -> list[dict]:
    """LogME and H-score of every candidate's frozen training-split features, sorted by ``key`` (best
    first, ``rank`` from 1). ``train_config_of(candidate)`` is the ``TrainConfig`` of the run that
    would train it (see ``embed_train_split``). Every process computes the same rows."""
    if bundle.multi_label:
        raise HFTransferError("LogME and H-score rank single-label tasks: this data has several labels per example")
    accelerator.print(f"ranking {len(candidates)} {candidates[0].modality} backbone(s) on {len(bundle.train)} "
                      f"training examples, {len(bundle.id2label)} labels")
    rows = []
    for candidate in candidates:
        start = time.time()
        features, labels, source = embed_train_split(accelerator, train_config_of(candidate), candidate, bundle)
        rows.append({"candidate": candidate.spec, **transferability_scores(features, labels),
                     "feature_dim": int(features.shape[1]), "samples": int(features.shape[0]),
                     "seconds": round(time.time() - start, 1), "features": source})
    rows.sort(key=lambda r: r[key], reverse=True)
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    return rows


def format_table(rows: list[dict]) -> str:
    width = max(len("candidate"), *(len(r["candidate"]) for r in rows))
    lines = [f"{'rank':>4}  {'candidate':<{width}}  {'LogME':>9}  {'H-score':>9}  {'dim':>5}  {'seconds':>7}  features"]
    for r in rows:
        lines.append(f"{r['rank']:>4}  {r['candidate']:<{width}}  {r['logme']:>9.4f}  {r['h_score']:>9.4f}  "
                     f"{r['feature_dim']:>5}  {r['seconds']:>7.1f}  {r['features']}")
    return "\n".join(lines)


def write_ranking(rows: list[dict], out: Path, meta: dict) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    write_text(out / "rank.csv", buffer.getvalue())
    write_json(out / "rank.json", {**meta, "ranking": rows})
    plot_ranking(rows, out / "rank.png")


def plot_ranking(rows: list[dict], path: Path) -> Path:
    """Horizontal bars, best candidate on top, one panel per score (their scales are unrelated)."""
    fig = new_figure(10.0, 1.2 + 0.45 * len(rows))
    names = [r["candidate"] for r in rows][::-1]
    for ax, key, title in zip(fig.subplots(1, 2, sharey=True), ("logme", "h_score"), ("LogME", "H-score (shrinkage)")):
        values = [r[key] for r in rows][::-1]
        ax.barh(names, values, color=["tab:grey" if n.startswith(RANDOM_PREFIX) else "tab:blue" for n in names])
        ax.set_title(f"{title} (higher is better)")
        ax.grid(axis="x", alpha=0.3)
        ax.axvline(0, color="black", lw=0.6)
    return save_figure(fig, path)
