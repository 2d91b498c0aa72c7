"""PyTorch CPU peer for plateflow's nucleus U-Net inference (learn/src/frozen.rs).

Builds the network of learn/src/unet.rs in PyTorch, loads plateflow's shipped weights
(learn/models/nuclei-unet.safetensors), and either checks that it computes plateflow's maps
or times it, so the two can be compared side by side on one machine:

- network (width W and depth D read from the weights; shipped: 12 and 3): per level two
  Conv2d 3x3 (zero padding 1, with bias) -> BatchNorm2d (eps 1e-5, running statistics) ->
  ReLU, with W, 2W, 4W channels, MaxPool2d(2) between levels; on the way up nearest 2x
  upsampling, concatenated with that level's skip as [upsampled, skip] along the channels,
  then two more conv blocks; a 1x1 head to 3 classes (background, interior, boundary);
- outputs, as plateflow's `FrozenUNet::probabilities`: softmax over the classes, then
  interior = p[1] and foreground = p[1] + p[2], per pixel;
- timing: one 1x1xSIDExSIDE image (the same pattern as plateflow's `nuclei net`:
  0.5 + 0.5 sin(0.37 u) cos(0.23 v)), model.eval() under torch.inference_mode(), one warm-up
  pass, then --rounds timed passes, each printed as model MP/s (SIDE^2 / 1e6 / seconds), as
  plateflow prints them. The softmax and both output maps are inside the timed region, as
  in plateflow's.

Layouts, to find PyTorch's fastest CPU form (they combine):

- default: NCHW contiguous, separate Conv2d, BatchNorm2d and ReLU modules;
- --fold-bn: BatchNorm folded into the conv weights and bias, as plateflow does;
- --channels-last: model and input in torch.channels_last (NHWC) memory format;
- --jit: torch.jit.trace + torch.jit.freeze (folds BatchNorm and lets oneDNN fuse
  conv + ReLU); --jit-opt: torch.jit.trace + torch.jit.optimize_for_inference (freezes,
  then converts the convs to oneDNN's blocked layout and fuses them);
- --compile: torch.compile (Inductor; needs a C++ compiler, and its first pass compiles);
  with --freezing, Inductor's freezing too (weights as constants: BatchNorm folded, convs
  prepacked for oneDNN).

The check compares with the maps plateflow wrote (little-endian f32, SIDExSIDE, row-major):

    target/release/examples/nuclei net 1024 3 /tmp/unet1024   # writes .in, .interior, .fg
    python3 bench/torch_unet.py --check /tmp/unet1024         # prints max abs differences

Timing (plateflow's peer: `target/release/examples/nuclei net 1024 5`):

    python3 bench/torch_unet.py --side 1024 --rounds 5 --threads 2                       # NCHW
    python3 bench/torch_unet.py --side 1024 --rounds 5 --threads 2 --jit --channels-last
    python3 bench/torch_unet.py --side 1024 --rounds 5 --threads 2 --compile --freezing

On a 2-core machine (torch 2.15.0) the fastest forms were --compile --freezing (about 2.5
model MP/s), then --compile --channels-last and --jit --channels-last (about 2.1); plain NCHW
ran at about 0.9. torch.jit's profiling executor may take two passes past the warm-up to
optimise (slow first rounds). --check takes the side from PREFIX.in (--side is ignored).

Needs torch, safetensors and numpy (a CPU wheel of torch is enough).
"""

import argparse
import math
import os
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "..", "learn", "models", "nuclei-unet.safetensors")
CLASSES, EPS = 3, 1e-5


class ConvBnRelu(nn.Module):
    """conv 3x3 (zero padding 1) -> BatchNorm -> ReLU; `fold` folds BatchNorm into the conv."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(c_out, eps=EPS)

    def fold(self):
        bn, conv = self.bn, self.conv
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.copy_(conv.weight * s[:, None, None, None])
        conv.bias.copy_((conv.bias - bn.running_mean) * s + bn.bias)
        self.bn = nn.Identity()

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class DoubleConv(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.c0 = ConvBnRelu(c_in, c_out)
        self.c1 = ConvBnRelu(c_out, c_out)

    def forward(self, x):
        return self.c1(self.c0(x))


class UNet(nn.Module):
    """learn/src/unet.rs; forward returns plateflow's two maps, (interior, foreground)."""

    def __init__(self, width, depth):
        super().__init__()
        self.depth = depth
        c_in = 1
        for level in range(depth):
            setattr(self, f"down{level}", DoubleConv(c_in, width << level))
            c_in = width << level
        for level in reversed(range(depth - 1)):
            c = (width << (level + 1)) + (width << level)
            setattr(self, f"up{level}", DoubleConv(c, width << level))
        self.head = nn.Conv2d(width, CLASSES, 1, bias=True)

    def forward(self, x):
        skips = []
        for level in range(self.depth):
            if level > 0:
                x = F.max_pool2d(x, 2)
            x = getattr(self, f"down{level}")(x)
            skips.append(x)
        skips.pop()  # the bottleneck is `x` itself
        for level in reversed(range(self.depth - 1)):
            up = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = getattr(self, f"up{level}")(torch.cat([up, skips.pop()], dim=1))
        p = torch.softmax(self.head(x), dim=1)
        return p[:, 1], p[:, 1] + p[:, 2]


def load(path):
    """The network of the safetensors file at `path` (`meta.*` tensors ignored)."""
    tensors = {k: v for k, v in load_file(path).items() if not k.startswith("meta.")}
    width = tensors["down0.c0.conv.weight"].shape[0]
    depth = sum(1 for k in tensors if k.startswith("down") and k.endswith(".c0.conv.weight"))
    model = UNet(width, depth)
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    state.update({k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")})
    model.load_state_dict(state, strict=True)
    return model.eval(), width, depth


def pattern(side):
    """plateflow's `nuclei net` input: 0.5 + 0.5 sin(0.37 u) cos(0.23 v), row-major."""
    u = np.arange(side, dtype=np.float32)
    img = 0.5 + 0.5 * np.sin(u * np.float32(0.37))[None, :] * np.cos(u * np.float32(0.23))[:, None]
    return torch.from_numpy(img.astype(np.float32)).reshape(1, 1, side, side)


def prepare(model, example, args):
    """The model in the layout the flags ask for, and the input in its memory format."""
    with torch.no_grad():
        if args.fold_bn:
            for m in model.modules():
                if isinstance(m, ConvBnRelu):
                    m.fold()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        example = example.contiguous(memory_format=torch.channels_last)
    if args.jit or args.jit_opt:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
            traced = torch.jit.trace(model, example)
            model = (torch.jit.optimize_for_inference(traced) if args.jit_opt
                     else torch.jit.freeze(traced))
    if args.compile:
        if args.freezing:
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True
        model = torch.compile(model)
    return model, example


def run(model, x):
    interior, fg = model(x)
    return interior, fg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=WEIGHTS, help="safetensors (default: shipped)")
    parser.add_argument("--check", metavar="PREFIX",
                        help="compare with PREFIX.interior and PREFIX.fg for input PREFIX.in")
    parser.add_argument("--side", type=int, default=1024, help="image side (default 1024)")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes (default 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads(N) (default: torch's own choice)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the convs")
    parser.add_argument("--jit", action="store_true", help="torch.jit.trace + torch.jit.freeze")
    parser.add_argument("--jit-opt", action="store_true",
                        help="torch.jit.trace + torch.jit.optimize_for_inference")
    parser.add_argument("--compile", action="store_true", help="torch.compile")
    parser.add_argument("--freezing", action="store_true",
                        help="with --compile: torch._inductor.config.freezing = True")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, width, depth = load(args.weights)
    form = [f for f, on in [("fold-bn", args.fold_bn), ("channels-last", args.channels_last),
                            ("jit", args.jit), ("jit-opt", args.jit_opt),
                            ("compile", args.compile),
                            ("freezing", args.compile and args.freezing)] if on] or ["nchw"]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"width {width}, depth {depth}, form {'+'.join(form)}")

    if args.check:
        raw = np.fromfile(args.check + ".in", dtype="<f4")
        side = math.isqrt(raw.size)
        assert side * side == raw.size, f"{args.check}.in is not a square image"
        x = torch.from_numpy(raw.copy()).reshape(1, 1, side, side)
        model, x = prepare(model, x, args)
        with torch.inference_mode():
            interior, fg = run(model, x)
        worst = 0.0
        for name, ours in [("interior", interior), ("fg", fg)]:
            ref = np.fromfile(f"{args.check}.{name}", dtype="<f4").reshape(side, side)
            d = float(np.abs(ours.reshape(side, side).numpy() - ref).max())
            worst = max(worst, d)
            print(f"{name}: max abs difference {d:.3e} ({side}x{side})")
        print("OK" if worst < 1e-3 else "DIFFERS", f"(worst {worst:.3e}, target < 1e-3)")
        return

    side = args.side
    x = pattern(side)
    model, x = prepare(model, x, args)
    mps = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        run(model, x)  # warm-up (allocations, thread pool, oneDNN primitives, compilation)
        print(f"warm-up: {time.perf_counter() - t0:.3f} s")
        for r in range(args.rounds):
            t = time.perf_counter()
            run(model, x)
            s = time.perf_counter() - t
            mps.append(side * side / 1e6 / s)
            print(f"round {r}: {side}x{side} in {s:.3f} s: {mps[-1]:.2f} model MP/s "
                  f"on {torch.get_num_threads()} threads")
    print(f"median {sorted(mps)[len(mps) // 2]:.2f} model MP/s ({'+'.join(form)})")


if __name__ == "__main__":
    main()
