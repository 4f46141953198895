"""DataLoaders of a run: preprocessed splits, length-grouped sampling, and the feature-cache loaders.

``create_dataloaders`` asks the backbone for its preprocessing pipeline (``Backbone.data_pipeline``)
and builds the training loader (augmented, shuffled or length-grouped), the evaluation loader and,
when some epochs train on cached features, the loaders that extract and then serve those features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from ..adaptation.paired import PairedCollate, PairedDomains
from ..data import DataBundle, subset
from ..data.balance import MULTI_LABEL_SAMPLER, BalancedSampler, group_by_length
from ..errors import HFTransferError
from ..models.devices import usable_cores
from .feature_cache import FeatureDataset


@dataclass
class Loaders:
    """The run's DataLoaders; the ``cached_*`` ones exist when some epochs train on cached features.

    ``fingerprints`` identify the prepared (decoded / tokenized) splits and ``preprocessing`` the eval
    preprocessing: with the backbone's weights they key the on-disk feature cache.
    """

    train: DataLoader
    eval: DataLoader
    train_extract: DataLoader | None = None  # train split, eval preprocessing, in order: feeds the cache
    cached_train: DataLoader | None = None
    cached_eval: DataLoader | None = None
    test: DataLoader | None = None  # scored once, after training, with the exported model
    # domain adaptation: unlabelled target examples scored by the selection criterion each epoch, and the
    # labelled target splits that are only reported (oracle validation, test with the exported model)
    target_selection: DataLoader | None = None
    target_eval: DataLoader | None = None
    target_test: DataLoader | None = None
    preprocessing: str = ""
    fingerprints: dict[str, str] = field(default_factory=dict)
    pipeline: object = None  # the backbone's preprocessing pipeline (its augmentation is seeded per epoch)
    prepared: dict = field(default_factory=dict)  # split -> its decoded / tokenized dataset (before any view)
    streamed: bool = False  # --streaming: ``train`` reads this process's shards and places its batches itself


    def set_epoch(self, epoch: int) -> None:
        """Before iterating the training loader of ``epoch``: the augmentation draws for that epoch."""
        if self.pipeline is not None:
            self.pipeline.set_epoch(epoch)
        if isinstance(self.train.dataset, PairedDomains):
            self.train.dataset.set_epoch(epoch)

    def prepare(self, accelerator) -> None:
        """``accelerator.prepare`` every loader, in a fixed order so checkpoints line up on resume."""
        # test last: checkpoints of runs without a test split keep their loader order
        names = [n for n in ("train", "eval", "train_extract", "cached_train", "cached_eval", "test",
                             "target_selection", "target_eval", "target_test") if getattr(self, n) is not None
                 and not (n == "train" and self.streamed)]
        prepared = accelerator.prepare(*[getattr(self, n) for n in names])
        for name, loader in zip(names, prepared if len(names) > 1 else [prepared]):  # one object comes back bare
            setattr(self, name, loader)


def create_dataloaders(cfg, bundle: DataBundle, backbone, with_cache: bool) -> Loaders:
    """Loaders for ``bundle`` preprocessed the way ``backbone`` expects (``cfg``: a ``TrainConfig``)."""
    check_sampler(cfg, bundle)
    workers = cfg.dataloader_num_workers if cfg.dataloader_num_workers is not None else default_num_workers()
    pipeline = backbone.data_pipeline(**pipeline_kwargs(cfg, backbone.modality))
    common = {"num_workers": workers, "persistent_workers": workers > 0, "collate_fn": pipeline.collate}
    # the training loader's workers are forked anew each epoch, so they see the epoch its augmentation uses
    train_common = {**common, "persistent_workers": False}
    column = bundle.input_column
    train, evaluation = pipeline.prepare(bundle.train, column, "train"), pipeline.prepare(bundle.eval, column, "eval")
    lengths = pipeline.lengths(train) if cfg.group_by_length else None
    sampler = train_sampler(cfg, train, lengths)
    train_view, train_collate = pipeline.train_view(train, column), pipeline.collate
    target = bundle.target
    if target is not None:
        target_train = pipeline.prepare(target.train, column, "target train")
        if cfg.adaptation_loss != "none":  # each source example brings a target example along
            train_view = PairedDomains(train_view, pipeline.train_view(target_train, column), cfg.seed)
            train_collate = PairedCollate(pipeline.collate)
    loaders = Loaders(
        train=DataLoader(train_view, batch_size=cfg.per_device_train_batch_size, shuffle=sampler is None,
                         sampler=sampler, **{**train_common, "collate_fn": train_collate}),
        eval=DataLoader(pipeline.eval_view(evaluation, column), batch_size=cfg.per_device_eval_batch_size,
                        shuffle=False, **common),
        preprocessing=pipeline.key,
        fingerprints={"train": train._fingerprint, "eval": evaluation._fingerprint},
        pipeline=pipeline,
        prepared={"train": train, "eval": evaluation},
    )
    if bundle.test is not None:
        test = pipeline.prepare(bundle.test, column, "test")
        loaders.test = DataLoader(pipeline.eval_view(test, column), batch_size=cfg.per_device_eval_batch_size,
                                  shuffle=False, **common)
    if target is not None:
        loaders.prepared["target_train"] = target_train
        selection = target_train
        if len(selection) > cfg.target_selection_samples:  # a fixed subset: every epoch is scored on the same examples
            selection = subset(selection, cfg.target_selection_samples, cfg.seed)
        loaders.target_selection = DataLoader(pipeline.eval_view(selection, column),
                                              batch_size=cfg.per_device_eval_batch_size, shuffle=False, **common)
        for name, split in (("target_eval", target.validation), ("target_test", target.test)):
            if split is not None:
                prepared = pipeline.prepare(split, column, name.replace("_", " "))
                setattr(loaders, name, DataLoader(pipeline.eval_view(prepared, column),
                                                  batch_size=cfg.per_device_eval_batch_size, shuffle=False, **common))
    if with_cache:
        loaders.train_extract = DataLoader(pipeline.eval_view(train, column), batch_size=cfg.per_device_eval_batch_size,
                                           shuffle=False, **common)
        # the features' rows are the train split's examples in order, so the balanced draw applies as it is
        cached_sampler = train_sampler(cfg, train, None)
        loaders.cached_train = DataLoader(FeatureDataset(len(train)), batch_size=cfg.per_device_train_batch_size,
                                          shuffle=cached_sampler is None, sampler=cached_sampler)
        loaders.cached_eval = DataLoader(FeatureDataset(len(evaluation)), batch_size=cfg.per_device_eval_batch_size,
                                         shuffle=False)
    return loaders


def train_sampler(cfg, train, lengths: list[int] | None):
    """The training loader's sampler: balanced (``--sampler``), length-grouped, or None (a plain shuffle)."""
    if cfg.sampler == "balanced":  # drawn from the prepared split: its rows are the ones the loader serves
        return BalancedSampler(train["labels"], seed=cfg.seed, lengths=lengths,
                               batch_size=cfg.per_device_train_batch_size)
    return LengthGroupedSampler(lengths, cfg.per_device_train_batch_size, seed=cfg.seed) if lengths else None


def check_sampler(cfg, bundle: DataBundle) -> None:
    """Refuse the ``--sampler`` combinations that cannot work, before any preprocessing."""
    if cfg.sampler != "balanced":
        return
    if bundle.multi_label:
        raise HFTransferError(MULTI_LABEL_SAMPLER)
    if bundle.target is not None and cfg.adaptation_loss != "none":
        # balancing the source classes shifts its label distribution away from the target's, a shift the
        # alignment losses would then try to erase from the features
        raise HFTransferError("--sampler balanced does not combine with --domain_adaptation: use --class_weights "
                              "balanced, which reweights the loss without changing what the alignment sees")


def pipeline_kwargs(cfg, modality: str = "image") -> dict:
    """What ``Backbone.data_pipeline`` takes from a ``TrainConfig`` / ``RankConfig``, for a ``modality`` backbone."""
    augment = getattr(cfg, "augment", False)  # rank reads features only: never augmented
    return {"decode_size": cfg.decode_size, "max_seq_length": cfg.max_seq_length,
            "augmentation": augmentation_of(cfg, modality) if augment else None}


def augmentation_of(cfg, modality: str):
    """The training augmentation ``cfg`` asks of ``modality``'s pipeline (None for text, which has none)."""
    if modality == "audio":
        from ..data.audio import AudioAugmentation

        return AudioAugmentation(seed=cfg.seed, gain_db=cfg.gain_db, shift=cfg.time_shift, speed=cfg.speed_perturb,
                                 time_masks=cfg.time_masks, freq_masks=cfg.freq_masks)
    from ..data.preprocessing import Augmentation

    # getattr: RankConfig has no auto-augment / erasing options (it never augments)
    return Augmentation(tuple(cfg.crop_scale), cfg.color_jitter, cfg.seed,
                        auto_augment=getattr(cfg, "auto_augment", None) or None, reprob=getattr(cfg, "reprob", 0.0))


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Random order, but batches of similar lengths: less padding, same examples per epoch.

    Indices are shuffled (seeded by ``seed + epoch``), cut into mega-batches of ``mega_batches``
    batches, and sorted by length inside each, so consecutive batches hold similar lengths while the
    epoch stays random. ``set_epoch`` (called through accelerate's loaders) makes the order a
    function of the epoch, so a resumed run sees the same batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega_batches: int = 50):
        self.lengths, self.batch_size, self.seed, self.mega = list(lengths), batch_size, seed, mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        yield from group_by_length(order, self.lengths, self.batch_size * self.mega)



def default_num_workers() -> int:
    """Loader workers: leave most cores to the model on small machines, cap at 8 on big ones."""
    cores = usable_cores()
    return 0 if cores <= 2 else min(8, cores // 2)
