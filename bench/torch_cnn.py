"""PyTorch CPU reference for plateflow's CNN benchmark (learn/benches/train.rs).

Measures training and inference throughput (images/s) on the CPU of the same network that
plateflow's Candle benchmark trains, on the same input, so the two can be compared side by
side on one machine:

- input: random 2x64x64 float32 crops (uniform [0, 1), fixed seed), batch 32, 16 classes,
  labels i % 16;
- network (plateflow's `Cnn` in learn/src/model.rs, width 16, depth 4): four blocks of
  Conv2d 3x3 padding 1 (with bias) -> BatchNorm2d (eps 1e-5) -> ReLU -> MaxPool2d(2), with
  16, 32, 64, 128 channels; then global average pooling over H, W -> Dropout(0.3) ->
  Linear(128, 16);
- training step: cross-entropy loss, AdamW (default parameters),
  loss.backward(); opt.step(); opt.zero_grad(); one warm-up step, then --steps timed steps;
- inference: model.eval() under torch.inference_mode(), --steps forward passes of batch 32.

Speed does not depend on the data or the weights, so PyTorch's default initialisation is kept.
Note: the Rust bench times 40 steps; this script times 20 by default (pass --steps 40 to match).

Run (needs torch; a CPU wheel is enough):

    python3 bench/torch_cnn.py              # default thread count
    python3 bench/torch_cnn.py --threads 1  # one intra-op thread
    python3 bench/torch_cnn.py --steps 40   # as many steps as the Rust bench
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH, CHANNELS, SIDE, CLASSES = 32, 2, 64, 16
WIDTH, DEPTH, DROPOUT = 16, 4, 0.3


class Cnn(nn.Module):
    def __init__(self, in_channels=CHANNELS, classes=CLASSES, width=WIDTH, depth=DEPTH,
                 dropout=DROPOUT):
        super().__init__()
        blocks = []
        c_in = in_channels
        for b in range(depth):
            c_out = width << b
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=True),
                nn.BatchNorm2d(c_out, eps=1e-5),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x):
        pooled = self.features(x).mean(dim=(2, 3))
        return self.head(self.dropout(pooled))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads(N) (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    torch.manual_seed(0)
    model = Cnn()
    opt = torch.optim.AdamW(model.parameters())
    x = torch.rand(BATCH, CHANNELS, SIDE, SIDE, dtype=torch.float32)
    y = torch.arange(BATCH) % CLASSES

    def train_step():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    model.train()
    train_step()  # warm-up (allocations, thread pool)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    s = time.perf_counter() - t0
    n = BATCH * args.steps
    print(f"training: {n} images in {s:.2f} s = {n / s:.0f} images/s "
          f"(2x64x64, batch {BATCH}, width {WIDTH}, depth {DEPTH})")

    model.eval()
    with torch.inference_mode():
        model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            model(x)
        s = time.perf_counter() - t0
    print(f"inference: {n} images in {s:.2f} s = {n / s:.0f} images/s")


if __name__ == "__main__":
    main()
