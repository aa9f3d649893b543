"""Memory of a 3-D training step, measured on the CPU and extrapolated to a 16 GB GPU.

For each 3-D architecture (MONAI SegResNet and residual UNet) and width (``init_filters``
8/16/32 for SegResNet; UNet ``channels`` (f, 2f, 4f, 8f) for f = 8/16/32):

* the fp32 state, counted exactly from the model: parameters, gradients, AdamW's two
  moments and the EMA copy (5 x the parameter bytes, plus the buffers twice);
* the activations of one forward + backward of ONE sample (``bce_dice`` loss on the fp32
  logits, as ``train_one_epoch``) at small patches, under ``torch.autocast("cpu")`` in a
  2-byte dtype (fp16 where the CPU computes it natively, else bf16: the same size; a
  parity check at a tiny patch compares the two). Two figures: the bytes of the tensors
  autograd saves for backward (``saved_tensors_hooks``, deduplicated by storage), and the
  peak of all tensors alive during the step (a dispatch mode that follows every storage
  from its creation to its release: saved tensors + backward's transients + the loss).
  CUDA's autocast runs ``group_norm`` (SegResNet's norm) in fp32 while the CPU's keeps it
  in 2 bytes, so the CUDA rule is imposed here (a torch-function mode casts its input);
* the ratio of the bytes at three patch sizes to the ratio of their voxels (1.0: linear
  in depth x H x W; below 1 only by a fixed part, the 2-byte copies of the weights), the
  line ``fixed + per-voxel x voxels`` through the smallest and the largest patch (checked on
  the middle one), then the extrapolation to candidate patches, batch sizes and widths:
  ``(state + batch + activations) x fragmentation + allowance`` (CUDA context and cuDNN
  workspace), fit within ``--gpu-gb x --headroom``;
* validation (sliding windows over a whole scan, no gradients): the peak of one window's
  forward (the tracked live peak, and the largest single tensor x 3 for comparison) plus the
  scan's buffers kept on the GPU (input, masks, MONAI's sum and count maps, loss), measured
  with a 1x1x1 convolution standing in for the network. Estimates, not measurements on a GPU.

Then a recommendation per architecture for a 16 GB GPU and for an 80 GB one: batch >= 2,
the largest in-plane size first (320 = the 2.5D models'), then the widest model, the
deepest patch, the larger batch; with the validation's estimate per ``sw_batch_size``.
The full run takes about 2 minutes on 2 CPU cores; ``--smoke`` seconds.

Run: ``.venv/bin/python benchmarks/memory_3d.py [--smoke] [--gpu-gb 16] [--headroom 0.85]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import peak_rss_mb  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from gi_utils.inference.sliding_window import SlidingWindow, sliding_logits  # noqa: E402
from gi_utils.losses import build_loss  # noqa: E402
from gi_utils.models import build_model  # noqa: E402

GB = 1e9
ARCHS = ("segresnet3d", "unet3d")
#: Ops CUDA's autocast runs in fp32 (the ones that can occur in these models and the loss);
#: the CPU's autocast leaves them in the input's dtype.
CUDA_FP32_OPS = frozenset({"group_norm", "layer_norm", "softmax", "log_softmax", "softplus"})


def model_kwargs(arch: str, width: int) -> dict:
    """The ``model_kwargs`` of ``arch`` at ``width`` (SegResNet init_filters, UNet first channels)."""
    if arch == "segresnet3d":
        return {"init_filters": width}
    return {"channels": [width, 2 * width, 4 * width, 8 * width]}


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created inside the mode that are still alive; their peak and the
    largest one. Storages alive before (``ignore``: weights, gradients, the batch) are left out."""

    def __init__(self, ignore: set[int]) -> None:
        super().__init__()
        self.ignore = set(ignore)
        self.live: dict[int, int] = {}
        self.now = self.peak = self.largest = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                st = t.untyped_storage()
                key = st.data_ptr()
                if key == 0 or key in self.ignore or key in self.live:
                    continue  # empty, pre-existing, a view or an in-place result
                n = st.nbytes()
                self.live[key] = n
                self.now += n
                self.peak = max(self.peak, self.now)
                self.largest = max(self.largest, n)
                weakref.finalize(st, self._free, key)
        return out


class CudaAutocastRule(TorchFunctionMode):
    """Under the CPU's autocast, run :data:`CUDA_FP32_OPS` in fp32 as CUDA's autocast does."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in CUDA_FP32_OPS and torch.is_autocast_enabled("cpu"):

            def up(a):
                return a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a

            args = tuple(up(a) for a in args)
            kwargs = {k: up(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pick_dtype(choice: str) -> tuple[torch.dtype, str]:
    """fp16 where the CPU computes it natively (AVX512-FP16 / AMX-FP16), else bf16."""
    if choice == "fp16":
        return torch.float16, "fp16 (asked)"
    if choice == "bf16":
        return torch.bfloat16, "bf16 (asked)"
    native = cpu_flags() & {"avx512_fp16", "amx_fp16"}
    if native:
        return torch.float16, f"fp16 (native on this CPU: {', '.join(sorted(native))})"
    return torch.bfloat16, ("bf16: this CPU runs fp16 convolutions only through slow reference kernels "
                            "(no avx512_fp16/amx_fp16); bf16 has the same 2-byte size as fp16")  # fmt: skip


class Net:
    """One model with its fixed-size figures."""

    def __init__(self, arch: str, width: int) -> None:
        torch.manual_seed(0)
        self.arch, self.width, self.kwargs = arch, width, model_kwargs(arch, width)
        self.model = build_model(arch, in_channels=1, classes=3, **self.kwargs)
        params = list(self.model.parameters())
        self.n_params = sum(p.numel() for p in params)
        self.param_bytes = sum(p.numel() * p.element_size() for p in params)  # fp32
        self.buffer_bytes = sum(b.numel() * b.element_size() for b in self.model.buffers())
        # weights + gradients + AdamW exp_avg, exp_avg_sq + EMA copy; buffers in the model and the EMA
        self.state_bytes = 5 * self.param_bytes + 2 * self.buffer_bytes
        for p in params:  # gradients exist before the step: counted in the state, not the activations
            p.grad = torch.zeros_like(p)
        self.fixed = {storage_key(t) for t in [*params, *(p.grad for p in params), *self.model.buffers()]}


def train_step(net: Net, loss_fn, depth: int, size: int, dtype: torch.dtype) -> dict:
    """Saved and peak live bytes of one forward + backward of one (1, 1, depth, size, size) sample."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, depth, size, size, generator=gen)
    y = (torch.rand(1, 3, depth, size, size, generator=gen) > 0.8).float()
    net.model.train()
    saved: dict[int, int] = {}
    by_dtype: dict[str, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in net.fixed and key not in saved:
            saved[key] = t.untyped_storage().nbytes()
            name = str(t.dtype).replace("torch.", "")
            by_dtype[name] = by_dtype.get(name, 0) + saved[key]
        return t

    tracker = LiveBytes(net.fixed | {storage_key(x), storage_key(y)})
    with tracker, CudaAutocastRule(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=dtype):
            logits = net.model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
    assert torch.isfinite(loss)
    return {"saved": sum(saved.values()), "largest_saved": max(saved.values()), "peak": tracker.peak,
            "by_dtype": by_dtype, "voxels": depth * size * size}  # fmt: skip


def infer_window(net: Net, depth: int, size: int, dtype: torch.dtype) -> dict:
    """Peak live bytes and the largest tensor of a no-grad forward of one window."""
    x = torch.randn(1, 1, depth, size, size)
    net.model.eval()
    tracker = LiveBytes(net.fixed | {storage_key(x)})
    with torch.no_grad(), tracker, CudaAutocastRule(), torch.autocast("cpu", dtype=dtype):
        net.model(x)
    return {"peak": tracker.peak, "largest": tracker.largest, "voxels": depth * size * size}


def scan_buffers(loss_fn, scan_depth: int, size: int, patch_depth: int, dtype: torch.dtype) -> dict:
    """Peak live bytes of validating one scan (as ``validate``: windows' sum on the device, fp32
    logits, loss, uint8 probabilities) with a 1x1x1 convolution standing in for the network;
    the scan's input and float masks are counted apart (they arrive from the loader)."""
    stub = torch.nn.Conv3d(1, 3, 1).eval()
    x = torch.randn(1, 1, scan_depth, size, size)
    masks = (torch.rand(1, 3, scan_depth, size, size) > 0.8).float()
    ignore = {storage_key(t) for t in (x, masks, *stub.parameters())}
    tracker = LiveBytes(ignore)
    with torch.no_grad(), tracker, CudaAutocastRule():
        with torch.autocast("cpu", dtype=dtype):
            seg = sliding_logits(stub, x, patch_depth, SlidingWindow(0.5, device=None))
        seg = seg.float()
        loss_fn(seg, masks)
        (seg.sigmoid() * 255).round().to(torch.uint8)
    voxels = scan_depth * size * size
    return {"peak": tracker.peak, "loader": x.nbytes + masks.nbytes, "voxels": voxels}


def fmt_gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny patches, one width, few candidates (seconds)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32],
                        help="SegResNet init_filters / UNet first channels")  # fmt: skip
    parser.add_argument("--sizes", nargs="+", default=["16x64x64", "16x96x96", "32x96x96"],
                        help="measured patches DxHxW (sides multiples of 8), smallest first")  # fmt: skip
    parser.add_argument("--dtype", choices=("auto", "fp16", "bf16"), default="auto",
                        help="2-byte autocast dtype of the measurement (auto: fp16 if native)")  # fmt: skip
    parser.add_argument("--gpu-gb", type=float, default=16.0, help="GPU memory, GB (1e9 bytes)")
    parser.add_argument("--headroom", type=float, default=0.85, help="usable share of the GPU memory")
    parser.add_argument("--allowance-gb", type=float, default=1.5, help="CUDA context + cuDNN workspace, GB")
    parser.add_argument("--frag", type=float, default=1.2, help="fragmentation factor of the caching allocator")
    parser.add_argument("--sw-batch", type=int, default=1, help="sliding windows per forward in validation")
    parser.add_argument("--scan-depth", type=int, default=144, help="slices of the longest validation scan")
    parser.add_argument("--big-gpu-gb", type=float, default=80.0, help="GPU of the 'gpu' preset, GB")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t_start = time.perf_counter()
    dtype, why = pick_dtype(args.dtype)
    widths = [8] if args.smoke else args.widths
    sizes = [tuple(int(v) for v in z.split("x")) for z in args.sizes]
    if args.smoke:
        sizes = [(8, 32, 32), (16, 32, 32)]
    depths = [32] if args.smoke else [32, 48, 64]
    imgs = [160, 320] if args.smoke else [160, 192, 224, 256, 288, 320]
    batches = [1, 2, 4, 8]
    budget = args.gpu_gb * GB * args.headroom
    loss_fn = build_loss("bce_dice")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; autocast dtype {why}", flush=True)
    print(f"model: (state + batch + activations) x {args.frag} fragmentation + {args.allowance_gb} GB "
          f"CUDA context/cuDNN workspace; fits: <= {args.gpu_gb:g} GB x {args.headroom} = {fmt_gb(budget)}; "
          f"batch tensors: fp32 image + fp32 masks = 16 bytes/voxel/sample; GB = 1e9 bytes", flush=True)  # fmt: skip

    # fp16 vs bf16: same bytes (a tiny patch: fp16 is slow on a CPU without native fp16)
    if not args.smoke:
        for arch in args.archs:
            net = Net(arch, 8)
            a = train_step(net, loss_fn, 8, 32, torch.float16)
            b = train_step(net, loss_fn, 8, 32, torch.bfloat16)
            print(f"{arch} parity 8x32x32 init 8: fp16 saved {a['saved']} B peak {a['peak']} B, bf16 saved "
                  f"{b['saved']} B peak {b['peak']} B (equal: {a['saved'] == b['saved'] and a['peak'] == b['peak']})",
                  flush=True)  # fmt: skip

    per_voxel: dict[tuple[str, int], dict] = {}
    for arch in args.archs:
        for width in widths:
            net = Net(arch, width)
            print(f"{arch} width {width} model_kwargs {net.kwargs}: {net.n_params:,} params, fp32 state "
                  f"(weights+grads+AdamW 2x+EMA, buffers x2) {fmt_gb(net.state_bytes)}", flush=True)  # fmt: skip
            runs = []
            for d, h, w in sizes:
                t0 = time.perf_counter()
                r = train_step(net, loss_fn, d, h, dtype)
                runs.append(r)
                dt = ", ".join(f"{k} {v / r['saved']:.0%}" for k, v in sorted(r["by_dtype"].items()))
                print(f"{arch} width {width} train 1x{d}x{h}x{w}: saved {r['saved'] / 2**20:.1f} MiB "
                      f"({r['saved'] / r['voxels']:.0f} B/voxel; {dt}), live peak {r['peak'] / 2**20:.1f} MiB "
                      f"({r['peak'] / r['voxels']:.0f} B/voxel), largest saved {r['largest_saved'] / 2**20:.1f} MiB "
                      f"[{time.perf_counter() - t0:.1f} s]", flush=True)  # fmt: skip
            for r in runs[1:]:
                vr = r["voxels"] / runs[0]["voxels"]
                print(f"{arch} width {width} linearity: voxels x{vr:.2f} -> saved x{r['saved'] / runs[0]['saved']:.2f} "
                      f"(ratio {r['saved'] / runs[0]['saved'] / vr:.3f}), live peak x{r['peak'] / runs[0]['peak']:.2f} "
                      f"(ratio {r['peak'] / runs[0]['peak'] / vr:.3f})", flush=True)  # fmt: skip
            # bytes = fixed + per_voxel x voxels through the smallest and the largest patch (the fixed
            # part: the 2-byte weight copies, per-channel statistics); the middle one checks the line
            lo, hi = runs[0], runs[-1]
            fit = {}
            for k in ("saved", "peak"):
                slope = (hi[k] - lo[k]) / (hi["voxels"] - lo["voxels"])
                fit[k] = (hi[k] - slope * hi["voxels"], slope)
            check = ""
            if len(runs) > 2:
                mid = runs[len(runs) // 2]
                pred = fit["peak"][0] + fit["peak"][1] * mid["voxels"]
                check = f"; predicts the middle patch's live peak to {pred / mid['peak'] - 1:+.1%}"
            print(f"{arch} width {width} line: live peak {fit['peak'][0] / 2**20:.1f} MiB + {fit['peak'][1]:.0f} B/voxel, "
                  f"saved {fit['saved'][0] / 2**20:.1f} MiB + {fit['saved'][1]:.0f} B/voxel{check}", flush=True)  # fmt: skip
            # inference of one window: the same line through the smallest and the largest patch
            i_lo, i_hi = (infer_window(net, d, h, dtype) for d, h, _ in (sizes[0], sizes[-1]))
            inf = {}
            for k, f in (("peak", 1), ("largest", 3)):
                slope = f * (i_hi[k] - i_lo[k]) / (i_hi["voxels"] - i_lo["voxels"])
                inf[k] = (f * i_hi[k] - slope * i_hi["voxels"], slope)
            print(f"{arch} width {width} window forward (no grad): live peak {inf['peak'][0] / 2**20:.1f} MiB + "
                  f"{inf['peak'][1]:.0f} B/voxel; largest tensor x 3 (the rule of thumb) {inf['largest'][1]:.0f} B/voxel"
                  f" (estimate)", flush=True)  # fmt: skip
            per_voxel[(arch, width)] = {
                "act": max(fit["peak"], fit["saved"], key=lambda f: f[1]), "saved": fit["saved"],
                "infer": max(inf["peak"], inf["largest"], key=lambda f: f[1]), "state": net.state_bytes,
                "state_no_grad": net.state_bytes - net.param_bytes, "kwargs": net.kwargs, "params": net.n_params,
            }  # fmt: skip

    sd, ss = (16, 32) if args.smoke else (args.scan_depth, 64)
    scan = scan_buffers(loss_fn, sd, ss, 16, dtype)
    scan_pv = (scan["peak"] + scan["loader"]) / scan["voxels"]
    print(f"validation scan buffers ({sd}x{ss}x{ss}, windows of 16, sum on the device, 1x1x1 conv stand-in): "
          f"{scan_pv:.0f} B per scan voxel (input+masks {scan['loader'] / scan['voxels']:.0f}, "
          f"sum/count/loss/probabilities {scan['peak'] / scan['voxels']:.0f})", flush=True)  # fmt: skip

    def train_total(key, n, d, s):
        pv = per_voxel[key]
        act = max(0.0, pv["act"][0]) + pv["act"][1] * d * s * s  # one sample
        return (pv["state"] + n * (act + 16 * d * s * s)) * args.frag + args.allowance_gb * GB

    def val_total(key, d, s, sw_batch=args.sw_batch):
        pv = per_voxel[key]
        window = max(0.0, pv["infer"][0]) + sw_batch * d * s * s * pv["infer"][1]
        return (pv["state_no_grad"] + window + scan_pv * args.scan_depth * s * s) * args.frag + args.allowance_gb * GB

    print(f"extrapolation (train peak per batch size; validation: {args.sw_batch} window(s), "
          f"{args.scan_depth}-slice scan); '*' = over {fmt_gb(budget)}", flush=True)  # fmt: skip
    for key in per_voxel:
        for d in depths:
            for s in imgs:
                cells = []
                for n in batches:
                    t = train_total(key, n, d, s)
                    cells.append(f"b{n} {t / GB:5.1f}{'*' if t > budget else ' '}")
                v = val_total(key, d, s)
                print(f"{key[0]} width {key[1]} patch {d}x{s}x{s}: train GB {' '.join(cells)} | "
                      f"val {v / GB:4.1f}{'*' if v > budget else ''}", flush=True)  # fmt: skip

    # recommendation: batch >= 2, patches of at least 32 slices; prefer the largest in-plane
    # size (320 = the 2.5D models'), then the widest model, the deepest patch, the larger batch
    for gpu_gb in (args.gpu_gb, args.big_gpu_gb):
        cap = gpu_gb * GB * args.headroom
        for arch in args.archs:
            best = None
            for width in widths:
                for s in imgs:
                    for d in depths:
                        for n in batches:
                            t, v = train_total((arch, width), n, d, s), val_total((arch, width), d, s)
                            if n >= 2 and max(t, v) <= cap:
                                best = max(best or (), (s, width, d, n, t, v))
            if best is None:
                print(f"recommend {gpu_gb:g} GB {arch}: nothing fits", flush=True)
                continue
            s, width, d, n, t, v = best
            print(f"recommend {gpu_gb:g} GB {arch}: batch_size {n}, patch_depth {d}, img_size {s}, model_kwargs "
                  f"{per_voxel[(arch, width)]['kwargs']} -> train {fmt_gb(t)}, validation {fmt_gb(v)} "
                  f"(of {fmt_gb(cap)})", flush=True)  # fmt: skip
            sw = []
            for k in (1, 2, 4, 8):
                v = val_total((arch, width), d, s, k)
                sw.append(f"sw_batch {k} {v / GB:.1f}{'*' if v > cap else ''}")
            print(f"recommend {gpu_gb:g} GB {arch}: validation GB at that patch: {', '.join(sw)}", flush=True)
    print(f"run time {time.perf_counter() - t_start:.0f} s, peak RSS {peak_rss_mb():.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
