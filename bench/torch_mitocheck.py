"""PyTorch reference for pipelines/mitocheck.yaml's CNN: the same leave-plate-out folds, the
same network and recipe, so plateflow's cross-plate weighted F1 can be compared with a plain
PyTorch training on identical splits.

Folds: plates dealt largest first to the fold with the fewest cells so far (ties by plate
name), exactly as plateflow's learn::split::group_kfold. Network: bench/torch_cnn.py's Cnn
(4 blocks Conv3x3-BN-ReLU-MaxPool, width 16, GAP, dropout 0.3, linear). Recipe: AdamW
(lr 3e-3 peak, wd 1e-4) one-cycle, batch 32, class-balanced cross-entropy, random flip/rot90
and x U(0.9, 1.1) intensity; input per-crop z-score (plateflow's `normalize: crop`) or /255.

    python3 bench/torch_mitocheck.py --data ../shared/data/mitocheck-crops --epochs 30
"""
import argparse, os, re, time
from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import f1_score

import sys
sys.path.insert(0, os.path.dirname(__file__))
from torch_cnn import Cnn

PLATE = re.compile(r"PLLT(\d+)_")


def load(root):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    xs, ys, plates = [], [], []
    for ci, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            if not f.endswith(".png"):
                continue
            a = np.asarray(Image.open(os.path.join(root, c, f)).convert("L"), dtype=np.float32)
            xs.append(a[None])
            ys.append(ci)
            plates.append(PLATE.search(f).group(1))
    return np.stack(xs), np.array(ys), np.array(plates), classes


def group_kfold(plates, k):
    sizes = defaultdict(int)
    for p in plates:
        sizes[p] += 1
    order = sorted(sizes.items(), key=lambda t: (-t[1], t[0]))
    load, fold_of = [0] * k, {}
    for p, n in order:
        f = min(range(k), key=lambda f: (load[f], f))
        load[f] += n
        fold_of[p] = f
    return np.array([fold_of[p] for p in plates])


def augment(x, g):
    t = torch.randint(0, 8, (1,), generator=g).item()
    if t & 1:
        x = x.flip(-1)
    if t & 2:
        x = x.flip(-2)
    if t & 4:
        x = x.transpose(-1, -2)
    return x * (0.9 + 0.2 * torch.rand(1, generator=g).item())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/mitocheck-crops")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--norm", choices=["crop", "255"], default="crop")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--balanced", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tta", type=int, default=0, help="average softmax over the 8 flips/rot90s")
    ap.add_argument("--smoothing", type=float, default=0.0, help="label smoothing")
    ap.add_argument("--folds", default="0,1,2,3,4")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y, plates, classes = load(args.data)
    if args.norm == "crop":
        m = x.mean(axis=(1, 2, 3), keepdims=True)
        s = x.std(axis=(1, 2, 3), keepdims=True) + 1e-6
        x = (x - m) / s
    else:
        x = x / 255.0
    folds = group_kfold(plates, 5)
    k = len(classes)
    truth_all, pred_all = [], []
    t0 = time.time()
    for f in [int(v) for v in args.folds.split(",")]:
        tr, te = np.where(folds != f)[0], np.where(folds == f)[0]
        net = Cnn(in_channels=1, classes=k, width=args.width)
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
        steps = args.epochs * ((len(tr) + 31) // 32)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
        counts = np.bincount(y[tr], minlength=k)
        w = torch.tensor([len(tr) / (k * c) if c else 1.0 for c in counts], dtype=torch.float32)
        if not args.balanced:
            w = torch.ones(k)
        g = torch.Generator().manual_seed(f)
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(y)
        for ep in range(args.epochs):
            net.train()
            perm = tr[torch.randperm(len(tr), generator=g).numpy()]
            for i in range(0, len(perm), 32):
                b = perm[i:i + 32]
                xb = torch.stack([augment(xt[j], g) for j in b])
                loss = F.cross_entropy(net(xb), yt[b], weight=w, label_smoothing=args.smoothing)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.inference_mode():
            xe = xt[te]
            if args.tta:
                views = []
                for t in range(8):
                    v = xe.flip(-1) if t & 1 else xe
                    v = v.flip(-2) if t & 2 else v
                    v = v.transpose(-1, -2) if t & 4 else v
                    views.append(F.softmax(net(v), 1))
                p = torch.stack(views).mean(0).argmax(1).numpy()
            else:
                p = net(xe).argmax(1).numpy()
        wf1 = f1_score(y[te], p, average="weighted")
        print(f"fold {f}: {len(te)} cells, plates {sorted(set(plates[te]))}: weighted F1 {wf1:.3f}"
              f" ({time.time() - t0:.0f} s)", flush=True)
        truth_all += list(y[te])
        pred_all += list(p)
    print(f"overall weighted F1 {f1_score(truth_all, pred_all, average='weighted'):.3f}, "
          f"macro {f1_score(truth_all, pred_all, average='macro'):.3f}")


if __name__ == "__main__":
    main()
