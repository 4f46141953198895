"""Where a run's examples come from: the labelled data (``DataOptions``) and, for domain adaptation,
the target domain's (``AdaptationOptions``), with the checks that they exist and fit together."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..adaptation.criteria import SELECTION_CRITERIA
from ..adaptation.methods import METHODS as ADAPTATION_METHODS
from ..adaptation.methods import parse_method
from ..errors import HFTransferError
from .fields import AT_LEAST_ONE, NON_NEGATIVE, OPEN_FRACTION, POSITIVE, Options, Range, check_paths, option

DATA_SOURCE_FIELDS = ("dataset_name", "train_dir", "train_file")
PATH_FIELDS = ("train_dir", "validation_dir", "test_dir", "train_file", "validation_file", "test_file",
               "target_train_dir", "target_validation_dir", "target_test_dir", "target_train_file",
               "target_validation_file", "target_test_file")
MEDIA = ("image", "audio")  # the recipes whose data comes as class-per-subfolder folders of files
TARGET_SOURCE_FIELDS = ("target_dataset_name", "target_train_dir", "target_train_file")


@dataclass
class DataOptions(Options):
    """Which examples, which columns, how they are split and preprocessed for the backbone."""

    dataset_name: Optional[str] = option(None, "a datasets Hub name, a local dataset script/folder, or a folder "
                                         "written by save_to_disk (a single Dataset = the train split)")
    dataset_config_name: Optional[str] = option(None, "the dataset's configuration name")
    train_dir: Optional[str] = option(None, "folder with one subfolder per class, of images (image recipe) or audio "
                                      "files (audio recipe: .wav, .flac, .ogg, .mp3, ...)", modality=MEDIA)
    validation_dir: Optional[str] = option(None, "validation folder (same classes)", modality=MEDIA)
    train_file: Optional[str] = option(None, "training data file: text as .csv, .tsv, .json or .jsonl; images or audio "
                                       "as a manifest (.csv, .tsv, .jsonl or .parquet) of file paths (relative to it) "
                                       "or bytes and labels")
    validation_file: Optional[str] = option(None, "validation data file (text, or a manifest), same format")
    test_dir: Optional[str] = option(None, "test folder (same classes), scored once with the exported model",
                                     modality=MEDIA)
    test_file: Optional[str] = option(None, "test data file (text, or a manifest), same format, scored once with the "
                                      "exported model")
    image_column_name: str = option("image", "column holding the images", modality="image")
    text_column_name: str = option("text", "column holding the texts", modality="text")
    audio_column_name: str = option("audio", "column holding the audio (a datasets Audio feature, file paths or "
                                    "bytes)", modality="audio")
    label_column_name: str = option("label", "column holding the labels (a list per row = multi-label)")
    label_names: Optional[list[str]] = option(None, "names for the labels in sorted order, e.g. negative positive; "
                                              "with --streaming the label set itself (integer labels index it, text "
                                              "labels must be in it)")
    validation_fraction: float = option(0.15, "fraction of train held out (stratified) when no validation split is "
                                        "given", valid=OPEN_FRACTION)
    max_train_samples: Optional[int] = option(None, "truncate training data (random subset, seeded; with "
                                              "--streaming the first N in file order)",
                                              valid=AT_LEAST_ONE)
    max_eval_samples: Optional[int] = option(None, "truncate validation data (random subset, seeded; with "
                                             "--streaming the first N, default 1000)",
                                             valid=AT_LEAST_ONE)
    max_predict_samples: Optional[int] = option(None, "truncate test data (random subset, seeded; with --streaming "
                                                "the first N)", valid=AT_LEAST_ONE)
    max_seq_length: int = option(128, "text: truncate longer sequences (batches are padded dynamically)",
                                 valid=Range(2), modality="text")
    # every recipe: manifests are text files too
    text_encoding: str = option("auto", "text files' encoding: auto (UTF-8, else detected and said so) or a codec "
                                "name such as utf-8, cp1252, latin-1")
    decode_size: Optional[int] = option(None, "image: decode once, shrinking the shorter side to this many pixels "
                                        "(0 = keep size)", valid=NON_NEGATIVE, modality="image",
                                        default_text="the model's eval resize size, e.g. 256 for 224 inputs")
    per_device_eval_batch_size: int = option(64, "evaluation (and feature extraction) batch size per process",
                                             valid=AT_LEAST_ONE)
    streaming: bool = option(False, "read the data as a stream (datasets' IterableDataset), decoded on the fly, never "
                             "whole on disk: Hub datasets, or --train_file / --validation_file as a file or a glob of "
                             "Parquet / JSONL / CSV / webdataset .tar shards; needs --max_steps and a validation split "
                             "(its first --max_eval_samples, default 1000, are evaluated); each process reads its own "
                             "shards; labels from the data's ClassLabel or --label_names")
    shuffle_buffer_size: int = option(1000, "with --streaming: examples shuffled together (windows of this many, "
                                      "after shuffling the shard order each pass)", valid=AT_LEAST_ONE)
    feature_cache_dir: Optional[str] = option(None, "also keep cached features on disk here, reused across runs")
    feature_cache_dtype: str = option("float32", "float32 or float16 (half the memory)", ("float32", "float16"))

    def validate(self) -> "DataOptions":
        super().validate()
        if self.train_dir and self.train_file:
            raise HFTransferError("--train_dir and --train_file both name training data: pass one of them")
        from ..data.sources import mixed_image_inputs  # imported here: parsing options should not import datasets

        mixed = mixed_image_inputs(self.train_dir, self.validation_dir, self.test_dir, self.train_file,
                                   self.validation_file, self.test_file)
        if mixed:
            raise HFTransferError(mixed)
        for flag, partner in (("validation_dir", "train_dir"), ("validation_file", "train_file"),
                              ("test_dir", "train_dir"), ("test_file", "train_file")):
            if getattr(self, flag) and not getattr(self, partner) and not self.dataset_name:
                raise HFTransferError(f"--{flag} is given without --{partner}: pass the training data too")
        # with --streaming a *_file may be a glob: data.streaming expands it and names one that matches nothing
        file_flags = () if self.streaming else ("train_file", "validation_file", "test_file")
        check_paths(self, ("train_dir", "validation_dir", "test_dir"), file_flags,
                    "pass a folder with one subfolder per class",
                    "pass an existing CSV/TSV/JSON/JSONL file (or, for images and audio, a .parquet manifest)")
        if self.feature_cache_dir and Path(self.feature_cache_dir).is_file():
            raise HFTransferError(f"--feature_cache_dir '{self.feature_cache_dir}' is a file: pass a folder (created if missing)")
        if self.text_encoding != "auto":
            import codecs

            try:
                codecs.lookup(self.text_encoding)
            except LookupError:
                raise HFTransferError(f"--text_encoding '{self.text_encoding}' is not a known codec: use auto, utf-8, "
                                      "cp1252, latin-1, utf-16, ...") from None
        return self


@dataclass
class AdaptationOptions(Options):
    """Unsupervised domain adaptation: labelled source data (the data options) and unlabelled target data."""

    domain_adaptation: str = option("none", "none (source only); dann, cdan (CDAN+E), mcc or self_training: a loss "
                                    "on unlabelled target examples trained beside the source labels; dapt: masked-"
                                    "language-model pretraining on the target text first (text), alone or as "
                                    "dapt+<method>",
                                    ADAPTATION_METHODS)
    target_dataset_name: Optional[str] = option(None, "target domain as a dataset (Hub name or save_to_disk folder): "
                                                "its train split is used unlabelled; validation / test splits only "
                                                "report")
    target_train_dir: Optional[str] = option(None, "unlabelled target images or audio files: a flat folder, or class "
                                             "subfolders (ignored)", modality=MEDIA)
    target_train_file: Optional[str] = option(None, "unlabelled target data file (text, or a manifest); a label "
                                              "column, if present, is ignored")
    target_validation_dir: Optional[str] = option(None, "labelled target folder, reported as the oracle score, never "
                                                  "used to select", modality=MEDIA)
    target_validation_file: Optional[str] = option(None, "labelled target data file, reported as the oracle score, "
                                                   "never used to select")
    target_test_dir: Optional[str] = option(None, "labelled target test folder, scored once with the exported model",
                                            modality=MEDIA)
    target_test_file: Optional[str] = option(None, "labelled target test file, scored once with the exported model")
    adaptation_weight: float = option(1.0, "weight of the adaptation loss against the source classification loss",
                                      valid=POSITIVE)
    selection_criterion: str = option("source_im", "picks the exported epoch, and with --compare_source_only the "
                                      "exported model, without target labels: source_im (source validation accuracy + "
                                      "information maximization of the target predictions; the best-calibrated on the "
                                      "benchmark), dev / dev_loss (deep embedded validation of the error / loss), snd "
                                      "(soft neighbourhood density), source or im", SELECTION_CRITERIA)
    compare_source_only: Optional[bool] = option(None, "also train without adaptation (same budget, same selection) "
                                                 "and export whichever of the two the selection criterion prefers",
                                                 default_text="yes with --domain_adaptation")
    domain_gap_samples: int = option(1000, "examples per domain for the domain gap of the frozen backbone (0 = skip)",
                                     valid=NON_NEGATIVE)
    target_selection_samples: int = option(2000, "unlabelled target examples scored each epoch by the selection criterion",
                                           valid=AT_LEAST_ONE)
    mcc_temperature: float = option(2.5, "mcc: softmax temperature of the class confusion", valid=POSITIVE)
    adversary_warmup_steps: int = option(1000, "dann / cdan: optimizer steps over which the gradient reversal ramps "
                                         "from 0 to 1 (0 = over the whole run)", valid=NON_NEGATIVE)
    self_training_threshold: float = option(0.9, "self_training: a target example is pseudo-labelled when its top "
                                            "class probability reaches this", valid=OPEN_FRACTION)
    dapt_epochs: float = option(3.0, "dapt: passes of masked-language-model training over the unlabelled text",
                                valid=POSITIVE, modality="text")
    dapt_max_steps: int = option(0, "dapt: stop after this many optimizer steps (0 = --dapt_epochs decides)",
                                 valid=NON_NEGATIVE, modality="text")
    dapt_learning_rate: float = option(5e-5, "dapt: peak learning rate of the masked-language-model phase",
                                       valid=POSITIVE, modality="text")
    dapt_mlm_probability: float = option(0.15, "dapt: share of tokens masked", valid=OPEN_FRACTION, modality="text")
    dapt_source_text: bool = option(True, "dapt: pretrain on the source training text too, not only the target's",
                                    modality="text")

    def uses_target_data(self) -> bool:
        return any(getattr(self, name) for name in TARGET_SOURCE_FIELDS)

    @property
    def adaptation_loss(self) -> str:
        """The training-time method (``none`` for source-only and for ``dapt`` alone): paired batches when not none."""
        return parse_method(self.domain_adaptation)[1]

    @property
    def continued_pretraining(self) -> bool:
        """``dapt`` / ``dapt+<method>``: masked-language-model pretraining on the target text before the fine-tune."""
        return parse_method(self.domain_adaptation)[0]

    @property
    def runs_source_only_twin(self) -> bool:
        return self.domain_adaptation != "none" and self.compare_source_only is not False

    def validate(self) -> "AdaptationOptions":
        super().validate()
        if self.domain_adaptation != "none" and not self.uses_target_data():
            raise HFTransferError(f"--domain_adaptation {self.domain_adaptation} needs unlabelled target data: pass "
                                  "--target_train_file, --target_train_dir or --target_dataset_name")
        if sum(bool(getattr(self, name)) for name in TARGET_SOURCE_FIELDS) > 1:
            raise HFTransferError("--target_dataset_name, --target_train_dir and --target_train_file each name the "
                                  "target training data: pass one of them")
        for flag in ("target_validation_dir", "target_validation_file", "target_test_dir", "target_test_file"):
            if getattr(self, flag) and not self.uses_target_data():
                raise HFTransferError(f"--{flag} is given without target training data: pass --target_train_file / "
                                      "--target_train_dir too")
        check_paths(self, ("target_train_dir", "target_validation_dir", "target_test_dir"),
                    ("target_train_file", "target_validation_file", "target_test_file"),
                    "pass a folder of images or audio files",
                    "pass an existing data file")
        if self.compare_source_only and self.domain_adaptation == "none":
            raise HFTransferError("--compare_source_only compares adaptation with source-only training: pass "
                                  "--domain_adaptation mcc, dapt, self_training, dann or cdan too")
        return self


