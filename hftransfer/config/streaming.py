"""What ``--streaming`` cannot combine with: every option that needs the whole training split (its size, its labels,
a pass over it before training) or a second look at it, refused in one line naming the option."""
from __future__ import annotations

from ..errors import HFTransferError


def check_streaming(cfg, modality: str | None = None) -> None:
    """Refuse what a streamed run (``cfg``: a ``TrainConfig`` with ``streaming``) cannot do; nothing without it."""
    if not cfg.streaming:
        return
    if cfg.max_steps <= 0:
        raise HFTransferError("--streaming needs --max_steps N: a stream has no length to count epochs in")
    if modality == "audio":
        raise HFTransferError("--streaming supports image and text data: drop --streaming for audio")
    refused = (
        (cfg.strategy == "contrastive", "--strategy contrastive", "its pair phase reads the whole training split"),
        (cfg.shots is not None, "--shots", "it draws K examples per class from the whole training split"),
        (cfg.head_init == "prototypes", "--head_init prototypes", "it averages features over the whole split"),
        (cfg.compare_scratch, "--compare_scratch", "the from-scratch twin would read the stream again"),
        (cfg.sampler == "balanced", "--sampler balanced", "it draws from the whole split by label"),
        (cfg.class_weight_mode == "balanced", "--class_weights balanced",
         "it counts every label; pass one weight per label instead"),
        (cfg.uses_target_data() or cfg.domain_adaptation != "none", "domain adaptation (--target_*)",
         "its target data is paired with the training split"),
        (cfg.tune, "--tune", "each trial would read the stream again; tune on a file, then stream"),
        (cfg.model_name_or_path == "auto", "--model_name_or_path auto", "the ranking scores the whole split"),
        (bool(cfg.dataloader_num_workers), f"--dataloader_num_workers {cfg.dataloader_num_workers}",
         "the stream is read in the training process, whose position a checkpoint records"),
        (bool(cfg.train_dir or cfg.validation_dir or cfg.test_dir), "--train_dir / --validation_dir / --test_dir",
         "write the examples into Parquet or webdataset shards and pass --train_file 'shards/train-*.parquet'"),
    )
    for conflict, flag, why in refused:
        if conflict:
            raise HFTransferError(f"{flag} does not combine with --streaming ({why}): drop {flag.split(' (')[0]} "
                                  "or --streaming")
