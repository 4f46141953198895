"""The card's "Inference and deployment" section, from the ``OnnxExport`` of ``hftransfer export`` / ``--export_onnx``.

The record is the run's ``all_results.json["onnx"]`` (else ``onnx/export_results.json``, for an export of a
folder that is not a run). The section names the graphs, the exporter and opset, the fp32 check against
torch, the int8 method with its validation accuracy next to fp32's (or why int8 was refused), and how to
run them. Rendered as markdown here and placed after "How to use", before "Files". Only graphs that are in
the folder (so get pushed) are described: a record whose graph is gone renders nothing, a missing int8 graph
is left out.
"""
from __future__ import annotations

from pathlib import Path

from ..files import NATIVE_CONFIG_NAME, ONNX_DIR, ONNX_PREPROCESSING_NAME
from ..records import Int8Check, OnnxExport, RunResults
from .card_format import format_value, insert_section, markdown_escape

SECTION_TITLE = "## Inference and deployment"
BEFORE = "## Files"
README_SECTION = 'hftransfer\'s README, section "Inference and deployment"'
INT8_METHODS = {"static": "static quantization (int8 weights per channel, activation ranges calibrated on {n} "
                          "training examples, QDQ)",
                "dynamic": "dynamic quantization (int8 weights per channel, activations quantized per batch at run "
                           "time)"}


def with_export_section(text: str, output_dir: Path, repo_id: str) -> str:
    """The card ``text`` with the deployment section before "Files" (unchanged without an ONNX export)."""
    return insert_section(text, export_section(Path(output_dir), repo_id), BEFORE)


def export_record(output_dir: Path) -> tuple[OnnxExport, str] | None:
    """The export's record and its folder relative to ``output_dir``, or None when there is no export to publish."""
    results = RunResults.read(output_dir)
    record = results.onnx if results is not None else None
    record = record or OnnxExport.read(output_dir / ONNX_DIR)
    if record is None:
        return None
    folder = record.folder if record.folder and not Path(record.folder).is_absolute() else ONNX_DIR
    folder = Path(folder).as_posix().strip("/") or "."
    if not (output_dir / folder / record.file).is_file():
        return None  # the graph is gone: the card describes only what gets pushed
    return record, folder


def export_section(output_dir: Path, repo_id: str) -> str | None:
    """The section's markdown, or None when the folder holds no checked ONNX export."""
    found = export_record(output_dir)
    if found is None:
        return None
    record, folder = found
    int8 = record.int8
    if int8 is not None and int8.file and not (output_dir / folder / int8.file).is_file():
        int8 = None  # recorded as kept, but not here to be pushed
    exporter = markdown_escape(record.exporter or "torch.onnx")
    lines = [SECTION_TITLE, "", intro(record, folder), "", "| file | content |", "|---|---|",
             f"| `{folder}/{record.file}` | float32 graph, exported with {exporter}, opset {record.opset} |"]
    if int8 is not None and int8.file:
        lines.append(f"| `{folder}/{int8.file}` | int8 graph: {int8_method(int8)} |")
    lines += [f"| `{folder}/{ONNX_PREPROCESSING_NAME}` | how an input becomes the graph's inputs |",
              f"| `{folder}/{NATIVE_CONFIG_NAME}` | the labels (`id2label`), `problem_type` and the decision rule |",
              "", f"- **float32 check**: {fp32_check(record)}"]
    if int8 is not None:
        lines.append(f"- **int8**: {int8_result(int8)}")
    lines += ["", *usage(repo_id, record, int8 is not None and bool(int8.file))]
    return "\n".join(lines) + "\n"


def intro(record: OnnxExport, folder: str) -> str:
    names = record.input_names or []
    if names == ["pixel_values"]:
        inputs = "`pixel_values` (uint8 RGB pixels, NCHW, resized and center-cropped; the normalization is inside " \
                 "the graph)"
    else:
        inputs = "the tokenizer's " + ", ".join(f"`{markdown_escape(n)}`" for n in names) + " (int64)" if names \
            else "the model's inputs"
    return (f"The model is also exported to ONNX (`hftransfer export` / `--export_onnx`, in `{folder}/`), to run in "
            f"onnxruntime without torch or hftransfer. The graphs take {inputs} and return `logits`; "
            f"{'batch size and sequence length are' if 'input_ids' in names else 'the batch size is'} free.")


def fp32_check(record: OnnxExport) -> str:
    diff = record.max_abs_logit_diff
    shown = "n/a" if diff is None else f"{diff:.1e}"
    return (f"onnxruntime's logits are within {shown} of torch's (largest absolute difference on "
            f"{record.checked_examples} examples; an export above {record.tolerance:.0e} is refused)")


def int8_method(check: Int8Check) -> str:
    template = INT8_METHODS.get(check.method, f"{markdown_escape(check.method)} quantization")
    return template.format(n=(check.settings or {}).get("calibration_examples", "n/a"))


def int8_result(check: Int8Check) -> str:
    """Accuracy next to fp32's with the difference in points; or the refusal and why (the drop it measured)."""
    int8, fp32 = format_value(check.int8_accuracy), format_value(check.fp32_accuracy)
    samples = f"on the same {check.eval_samples} examples"
    accuracies = f"validation accuracy {int8} against {fp32} for the float32 graph {samples}"
    limit = f"limit {check.max_accuracy_drop_points:g} point{'s' if check.max_accuracy_drop_points != 1 else ''}"
    drop = check.accuracy_drop_points
    if not check.file:
        if drop is None:
            why = markdown_escape(check.refused or "its validation accuracy fell too far")
            return f"refused, not published ({int8_method(check)}): {why}. Use the float32 graph."
        return (f"refused, not published: {int8_method(check)} lost {drop:.2f} points of validation accuracy "
                f"({int8} against {fp32} for the float32 graph {samples}; {limit}). "
                "Use the float32 graph.")
    change = "n/a" if drop is None else f"{-drop:+.2f} points"
    agreement = "" if check.agreement is None else f"; same label as float32 on {check.agreement * 100:.1f}% of them"
    return f"{markdown_escape(check.method)} quantization, {accuracies} ({change}, {limit}){agreement}."


def usage(repo_id: str, record: OnnxExport, has_int8: bool) -> list[str]:
    """hftransfer's onnxruntime backend on a download of the repo; plain onnxruntime points to the README."""
    name = repo_id.split("/")[-1] or "model"
    example = "image.jpg" if record.input_names == ["pixel_values"] else "texts.txt"
    quantized = "  # --quantized: the int8 graph" if has_int8 else ""
    plain = (f"Without hftransfer, onnxruntime and numpy with PIL (images) or the tokenizer (texts) suffice: read "
             f"`{ONNX_PREPROCESSING_NAME}` and `{NATIVE_CONFIG_NAME}` from the ONNX folder; {README_SECTION}, has "
             "the ten lines for each.")
    return ["With hftransfer (the same preprocessing as torch, on the CPU):", "", "```bash",
            f"hf download {repo_id} --local-dir {name}  # onnx/ included",
            f"hftransfer predict {name} {example} --backend onnxruntime{quantized}", "```", "", plain]
