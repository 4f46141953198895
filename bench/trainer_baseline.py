"""A plain Hugging Face ``Trainer`` fine-tune, written the way users write one today.

The baseline that ``bench/speed.py`` times against the hftransfer recipes. It follows transformers'
example scripts and uses no hftransfer code:

* image (``--task image``): ``datasets`` imagefolder, ``set_transform`` with timm's train/eval
  transforms built from the model's ``pretrained_cfg`` (what ``TimmWrapperImageProcessor`` builds),
  the timm model through ``AutoModelForImageClassification`` (TimmWrapper), like
  ``examples/pytorch/image-classification/run_image_classification.py``. ``--strategy linear_probe``
  freezes every parameter but the classifier with ``requires_grad=False`` (the model still runs its
  full forward in train mode every epoch, BatchNorm included).
* text (``--task text``): JSON lines, ``AutoModelForSequenceClassification``, tokenized with
  ``padding="max_length", max_length=128, truncation=True`` and ``default_data_collator``: the
  defaults of ``examples/pytorch/text-classification/run_classification.py``
  (``pad_to_max_length=True``, ``max_seq_length=128``); ``--padding dynamic`` switches to
  ``DataCollatorWithPadding``, ``--group_by_length`` to length-grouped batches.

``evaluate`` metrics need the network, so accuracy is computed with numpy. Writes ``--results_file``
(JSON: ``train_runtime``, ``train_samples``, ``epochs``, ``eval_accuracy``, ...).

Offline image weights: the Hub is unreachable here, so ``--make_timm_folder DIR`` writes the bundled
ImageNet ``tf_efficientnet_lite0`` checkpoint as a local folder in timm's Hub layout
(``config.json`` with ``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg``, plus
``model.safetensors``): exactly what ``timm/tf_efficientnet_lite0.in1k`` looks like on the Hub, so
``--model DIR`` stands in for the Hub id.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make_timm_folder", metavar="DIR", help="write the bundled tf_efficientnet_lite0 as a timm Hub-layout folder and exit")
    p.add_argument("--task", choices=["image", "text"])
    p.add_argument("--model", help="timm Hub-layout folder (image) or transformers model folder (text)")
    p.add_argument("--train_dir")
    p.add_argument("--validation_dir")
    p.add_argument("--train_file")
    p.add_argument("--validation_file")
    p.add_argument("--strategy", choices=["full", "linear_probe"], default="full")
    p.add_argument("--num_train_epochs", type=float, default=1)
    p.add_argument("--per_device_train_batch_size", type=int, default=32)
    p.add_argument("--per_device_eval_batch_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--lr_scheduler_type", default="cosine")
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num_threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--dataloader_num_workers", type=int, default=0)
    p.add_argument("--crop_scale", type=float, nargs=2, default=[0.08, 1.0], help="image: RandomResizedCrop scale")
    p.add_argument("--color_jitter", type=float, default=0.4, help="image: color jitter (0 = off)")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--padding", choices=["max_length", "dynamic"], default="max_length",
                   help="text: pad every sequence to max_seq_length (run_classification.py's default) or per batch")
    p.add_argument("--group_by_length", action="store_true", help="text: train_sampling_strategy='group_by_length'")
    p.add_argument("--output_dir", default="outputs/trainer_baseline")
    p.add_argument("--results_file", default=None, help="JSON file for the metrics (default: OUTPUT_DIR/baseline_results.json)")
    args = p.parse_args(argv)
    if not args.make_timm_folder:
        missing = [n for n in ("task", "model") if getattr(args, n) is None]
        if args.task == "image":
            missing += [n for n in ("train_dir", "validation_dir") if getattr(args, n) is None]
        if args.task == "text":
            missing += [n for n in ("train_file", "validation_file") if getattr(args, n) is None]
        if missing:
            p.error("missing: " + ", ".join("--" + m for m in missing))
    return args


# ---- offline model folder -----------------------------------------------------------------------
def make_timm_folder(out_dir: str | Path, arch: str = "tf_efficientnet_lite0") -> Path:
    """Save the bundled ImageNet checkpoint of ``arch`` in timm's Hub layout, loadable by TimmWrapper.

    ``timm.models.save_for_hf`` also writes ``model_args`` with ``num_classes`` in it; TimmWrapper
    passes ``num_classes=num_labels`` itself, so that duplicate makes ``from_pretrained`` fail
    ("got multiple values for keyword argument 'num_classes'"). Hub timm repos carry no
    ``model_args``: it is dropped here, and ``label_names`` added as the Hub repos have them.
    """
    import timm
    from timm.data import ImageNetInfo
    from timm.models import save_for_hf

    from hftransfer.models.bundled import (
        bundled_timm_state_dict,  # only the weights file; training uses no hftransfer code
    )

    out = Path(out_dir)
    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(bundled_timm_state_dict(arch), strict=True)
    save_for_hf(model, out, safe_serialization=True)
    config = json.loads((out / "config.json").read_text())
    config.pop("model_args", None)
    info = ImageNetInfo("imagenet-1k")
    config["label_names"] = [info.index_to_description(i) for i in range(info.num_classes())]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


# ---- metrics ------------------------------------------------------------------------------------
def compute_metrics(eval_pred):
    import numpy as np

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


# ---- tasks --------------------------------------------------------------------------------------
def build_image(args):
    import timm
    import torch
    from datasets import load_dataset
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    data_files = {"train": os.path.join(args.train_dir, "**"), "validation": os.path.join(args.validation_dir, "**")}
    ds = load_dataset("imagefolder", data_files=data_files)
    labels = ds["train"].features["label"].names
    label2id = {name: i for i, name in enumerate(labels)}
    id2label = dict(enumerate(labels))
    model = AutoModelForImageClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
    )
    # TimmWrapperImageProcessor.train_transforms / val_transforms are timm's create_transform on the
    # model's data config; built here with the crop scale and jitter passed in, so both sides match.
    data_config = AutoImageProcessor.from_pretrained(args.model).data_config
    train_tf = timm.data.create_transform(**data_config, is_training=True, scale=tuple(args.crop_scale), hflip=0.5,
                                          color_jitter=args.color_jitter or None)
    val_tf = timm.data.create_transform(**data_config, is_training=False)

    def preprocess_train(batch):
        batch["pixel_values"] = [train_tf(im.convert("RGB")) for im in batch["image"]]
        return batch

    def preprocess_val(batch):
        batch["pixel_values"] = [val_tf(im.convert("RGB")) for im in batch["image"]]
        return batch

    ds["train"].set_transform(preprocess_train)
    ds["validation"].set_transform(preprocess_val)

    def collate_fn(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e["label"] for e in examples])}

    if args.strategy == "linear_probe":
        head = {id(p) for p in model.timm_model.get_classifier().parameters()}
        for p in model.parameters():
            p.requires_grad = id(p) in head
    extra = {"remove_unused_columns": False}  # set_transform needs the image column
    return model, ds["train"], ds["validation"], collate_fn, None, extra


def build_text(args):
    from datasets import load_dataset
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        default_data_collator,
    )

    raw = load_dataset("json", data_files={"train": args.train_file, "validation": args.validation_file})
    label_list = sorted(set(raw["train"]["label"]))
    label_to_id = {v: i for i, v in enumerate(label_list)}
    config = AutoConfig.from_pretrained(args.model, num_labels=len(label_list), finetuning_task="text-classification")
    config.label2id = {str(v): i for v, i in label_to_id.items()}
    config.id2label = {i: str(v) for v, i in label_to_id.items()}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, config=config)
    if args.strategy == "linear_probe":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("classifier.")
    pad = args.padding == "max_length"

    def preprocess(examples):
        result = tokenizer(examples["text"], padding="max_length" if pad else False, max_length=args.max_seq_length,
                           truncation=True)
        result["label"] = [label_to_id[v] for v in examples["label"]]
        return result

    ds = raw.map(preprocess, batched=True, desc="Running tokenizer on dataset")
    collator = default_data_collator if pad else DataCollatorWithPadding(tokenizer)
    extra = {"train_sampling_strategy": "group_by_length"} if args.group_by_length else {}
    return model, ds["train"], ds["validation"], collator, tokenizer, extra


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.make_timm_folder:
        print(f"wrote {make_timm_folder(args.make_timm_folder)}")
        return {}
    if args.num_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.num_threads)
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    set_seed(args.seed)
    start = time.time()
    model, train_ds, eval_ds, collator, tokenizer, extra = (build_image if args.task == "image" else build_text)(args)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the training steps
        lr_scheduler_type=args.lr_scheduler_type,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="epoch",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=args.dataloader_num_workers,
        **extra,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=collator, processing_class=tokenizer, compute_metrics=compute_metrics)
    train_metrics = trainer.train().metrics
    eval_metrics = trainer.evaluate()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    results = {
        "task": args.task,
        "strategy": args.strategy,
        "train_samples": len(train_ds),
        "eval_samples": len(eval_ds),
        "epochs": args.num_train_epochs,
        "train_runtime": train_metrics["train_runtime"],
        "train_samples_per_second": train_metrics["train_samples_per_second"],
        "train_loss": train_metrics.get("train_loss"),
        "eval_accuracy": eval_metrics["eval_accuracy"],
        "eval_loss": eval_metrics.get("eval_loss"),
        "eval_runtime": eval_metrics.get("eval_runtime"),
        "script_runtime": time.time() - start,
        "trainable_parameters": trainable,
        "threads": torch.get_num_threads(),
        "padding": args.padding if args.task == "text" else None,
    }
    path = Path(args.results_file or Path(args.output_dir) / "baseline_results.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
