"""What this CPU can do at best, and what a model asks of it: the yardsticks of ``bench/predict.py``.

* ``measure_ceiling(threads)``: achievable GFLOP/s of kernels timed on this machine with the benchmark's
  thread count: a large square fp32 matmul in torch and in onnxruntime (the better of the two is *the*
  fp32 ceiling every inference path is reported against), layers shaped like the default models'
  (EfficientNet-Lite0's 1x1 pointwise and 3x3 depthwise convolutions, channels_last, batch 8; MiniLM's
  feed-forward linear, 32 texts x 32 tokens), and onnxruntime's int8 GEMM (``MatMulInteger``, uint8 x
  int8 -> int32: the kernel the int8 graphs run), in GOP/s. ``Ceiling.measure_fp32()`` times the fp32
  ceiling's kernel again, so that a benchmark can measure it beside its sides in every round.
* ``count_flops(model, inputs)``: FLOPs of one forward (``torch.utils.flop_counter``: a multiply-add is
  2 FLOPs; matmuls and convolutions only, elementwise work is not counted), with the share in depthwise
  convolutions, which do few FLOPs per byte and so run far below the matmul ceiling.
* ``fold_batchnorm(model)``: a copy with every BatchNorm folded into the convolution before it (timm's
  ``BatchNormAct2d`` keeps its activation): the "BN folding" inference path.
"""
from __future__ import annotations

import copy
import itertools
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

MATMUL_SIZE = 2048


@dataclass
class Ceiling:
    """GFLOP/s (median over trials) of each microbenchmark; ``fp32`` is the ceiling the paths are measured against."""

    rates: dict[str, float] = field(default_factory=dict)
    int8: float | None = None  # GOP/s of onnxruntime's int8 GEMM, None when it could not be measured
    int8_note: str = ""
    kernels: dict[str, tuple] = field(default_factory=dict, repr=False)  # name -> (function, FLOPs per call)

    @property
    def fp32_kernel(self) -> str:
        """The fp32 matmul that ran fastest: the one ``fp32`` re-measures."""
        return max((k for k in self.rates if k.startswith("fp32 matmul")), key=self.rates.__getitem__)

    @property
    def fp32(self) -> float:
        return self.rates[self.fp32_kernel]

    def measure_fp32(self, trials: int = 3) -> float:
        """The fp32 ceiling again, now (``bench/predict.py`` measures it in every round, beside the sides)."""
        fn, flops = self.kernels[self.fp32_kernel]
        return kernel_rate(fn, flops, trials=trials)

    def describe(self) -> str:
        kernels = "; ".join(f"{name} {rate:.0f}" for name, rate in self.rates.items())
        int8 = (f"; int8 GEMM {MATMUL_SIZE}^3 (onnxruntime MatMulInteger) {self.int8:.0f} GOP/s" if self.int8
                else f"; int8 ceiling not measured ({self.int8_note})")
        return (f"Microbenchmarks, GFLOP/s (median of trials): {kernels}{int8}. The fp32 ceiling is the "
                f"{self.fp32_kernel}, re-measured in every round below.")


def kernel_rate(fn, flops: float, *, trials: int, seconds: float = 0.25) -> float:
    """Median GFLOP/s over ``trials`` timings of as many ``fn()`` calls as fill ``seconds``, after a warm-up."""
    fn(), fn()
    rates = []
    for _ in range(trials):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or calls == 0:
            fn()
            calls += 1
        rates.append(calls * flops / elapsed / 1e9)
    return statistics.median(rates)


def torch_kernels() -> dict[str, tuple]:
    """name -> (function, FLOPs per call) of the torch fp32 microbenchmarks."""
    n = MATMUL_SIZE
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    x_pw = torch.randn(8, 40, 28, 28).contiguous(memory_format=torch.channels_last)
    pointwise = nn.Conv2d(40, 240, 1, bias=False).eval().to(memory_format=torch.channels_last)
    x_dw = torch.randn(8, 240, 28, 28).contiguous(memory_format=torch.channels_last)
    depthwise = nn.Conv2d(240, 240, 3, padding=1, groups=240, bias=False).eval().to(memory_format=torch.channels_last)
    x_ffn, ffn = torch.randn(32 * 32, 384), nn.Linear(384, 1536).eval()
    return {
        f"fp32 matmul {n}^3 (torch)": (lambda: torch.mm(a, b, out=c), 2 * n ** 3),
        "conv 1x1 40->240 @28x28 b8 (torch)": (lambda: pointwise(x_pw), 2 * 8 * 240 * 28 * 28 * 40),
        "conv 3x3 depthwise 240 @28x28 b8 (torch)": (lambda: depthwise(x_dw), 2 * 8 * 240 * 28 * 28 * 9),
        "linear 1024x384->1536 (torch)": (lambda: ffn(x_ffn), 2 * 1024 * 384 * 1536),
    }


def ort_matmul(threads: int, int8: bool):
    """A one-node onnxruntime session multiplying a [n, n] input by an [n, n] constant; its ``run`` as a function."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n, rng = MATMUL_SIZE, np.random.default_rng(0)
    if int8:
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        weight = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        types = (TensorProto.UINT8, TensorProto.INT32)
    else:
        a = rng.standard_normal((n, n), dtype=np.float32)
        weight = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        types = (TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", types[0], [n, n])],
                              [helper.make_tensor_value_info("Y", types[1], [n, n])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(onnx.ModelProto.SerializeToString(model), options,
                                   providers=["CPUExecutionProvider"])
    return lambda: session.run(["Y"], {"A": a})


def measure_ceiling(threads: int, trials: int = 5) -> Ceiling:
    """The microbenchmarks, with torch at ``torch.get_num_threads()`` and onnxruntime at ``threads``."""
    ceiling = Ceiling(kernels=torch_kernels())
    flops = 2 * MATMUL_SIZE ** 3
    try:
        ceiling.kernels[f"fp32 matmul {MATMUL_SIZE}^3 (onnxruntime)"] = (ort_matmul(threads, False), flops)
        ceiling.int8 = kernel_rate(ort_matmul(threads, True), flops, trials=trials)
    except Exception as e:  # noqa: BLE001 - onnxruntime missing or lacking the kernel: the fp32 torch ceiling stands
        ceiling.int8_note = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    for name, (fn, flops) in ceiling.kernels.items():
        ceiling.rates[name] = kernel_rate(fn, flops, trials=trials)
    return ceiling


def count_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[int, float]:
    """(FLOPs of ``model(**inputs)``, the fraction of them in depthwise convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    depthwise = []

    def hook(conv, args, out):
        depthwise.append(2 * out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1])

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    total = counter.get_total_flops()
    return total, sum(depthwise) / total if total else 0.0


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with each BatchNorm2d that directly follows a Conv2d among its parent's
    children folded into that convolution (weights and bias rescaled), and the number folded. timm's
    ``BatchNormAct2d`` is replaced by its dropout + activation. Registration order is taken as call order
    (true of timm's CNNs); callers check the logits against the original's."""
    model = copy.deepcopy(model).eval()
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(children):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.num_features == conv.out_channels and bn.track_running_stats):
                continue
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(parent, bn_name, nn.Sequential(*rest) if rest else nn.Identity())
            folded += 1
    return model, folded
