"""PyTorch peer of configs/fashion-mnist-minilm.toml: the same CLIP (timm ResNet with basic blocks
[1,1,1,1], widths 32/64/128/256, ImageNet stem; the seed's projection heads to 128-d; normalized
embeddings, learnable temperature from 0.07) trained the same way (AdamW 2e-3, weight decay 1e-4,
warmup 100 steps + cosine, global-norm clip 5, batch 128, 28 px, horizontal flips, one caption per
image per epoch) with the same frozen all-MiniLM-L6-v2 text tower whose features are computed once
per distinct caption, on the same files. After each epoch: zero-shot top-1 on the 10,000 test
images with the same unseen prompts. Prints one JSON line per epoch.

usage: python3 fashion_mnist_peer.py [REPO_ROOT] [EPOCHS]   (needs torch, timm, transformers, pillow)
"""
import csv, json, math, os, random, sys, time

import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image
from timm.models.resnet import ResNet, BasicBlock
from transformers import AutoTokenizer, BertModel

root = sys.argv[1] if len(sys.argv) > 1 else "."
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
data = os.path.join(root, "datasets/fashion-mnist")
minilm = os.path.join(root, "datasets/assets/all-minilm-l6-v2")
CLASSES = ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
torch.manual_seed(42); random.seed(42)

captions = {}
with open(os.path.join(data, "results.csv")) as f:
    next(f)
    for line in f:
        img, _, cap = line.rstrip("\n").split("| ", 2)
        captions.setdefault(img, []).append(cap)
split = json.load(open(os.path.join(data, "split.json")))
labels = {r["image"]: r["class"] for r in csv.DictReader(open(os.path.join(data, "labels.csv")))}
templates = [l.strip() for l in open(os.path.join(data, "zero-shot-templates.txt")) if l.strip() and not l.startswith("#")]

# Frozen text tower: mean-pooled MiniLM features of every distinct caption and prompt, once.
tok = AutoTokenizer.from_pretrained(minilm)
bert = BertModel.from_pretrained(minilm).eval()
@torch.no_grad()
def text_features(texts):
    out = []
    for i in range(0, len(texts), 256):
        b = tok(texts[i:i + 256], padding=True, truncation=True, max_length=32, return_tensors="pt")
        h = bert(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        out.append((h * m).sum(1) / m.sum(1).clamp_min(1e-9))
    return torch.cat(out)
t0 = time.perf_counter()
distinct = sorted({c for caps in captions.values() for c in caps})
feat_of = dict(zip(distinct, text_features(distinct)))
prompt_feats = text_features([t.replace("{}", c) for c in CLASSES for t in templates])
text_s = time.perf_counter() - t0

MEAN, STD = 0.286, 0.353
def load(name, flip=False):
    a = np.asarray(Image.open(os.path.join(data, "images", name)).convert("RGB"), dtype=np.float32) / 255.0
    if flip:
        a = a[:, ::-1]
    return torch.from_numpy(((a - MEAN) / STD).transpose(2, 0, 1).copy())

class Train(torch.utils.data.Dataset):
    def __init__(self, names): self.names, self.epoch = names, 0
    def __len__(self): return len(self.names)
    def __getitem__(self, i):
        rng = random.Random(hash((self.epoch, i)))
        name = self.names[i]
        return load(name, rng.random() < 0.5), feat_of[rng.choice(captions[name])]

class Test(torch.utils.data.Dataset):
    def __init__(self, names): self.names = names
    def __len__(self): return len(self.names)
    def __getitem__(self, i): return load(self.names[i]), CLASSES.index(labels[os.path.basename(self.names[i])])

class Head(nn.Module):  # the seed's projection head
    def __init__(self, d_in, d_out=128):
        super().__init__()
        self.projection, self.fc, self.ln = nn.Linear(d_in, d_out), nn.Linear(d_out, d_out), nn.LayerNorm(d_out)
    def forward(self, x):
        p = self.projection(x)
        return self.ln(self.fc(F.gelu(p)) + p)

class Clip(nn.Module):
    def __init__(self):
        super().__init__()
        self.img = ResNet(BasicBlock, [1, 1, 1, 1], channels=(32, 64, 128, 256), stem_width=32, num_classes=0, zero_init_last=False)
        self.ip, self.tp = Head(256), Head(384)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    def image(self, x): return F.normalize(self.ip(self.img(x)), dim=-1)
    def text(self, f): return F.normalize(self.tp(f), dim=-1)

model = Clip()
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
train = Train(split["train"])
loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)
test = torch.utils.data.DataLoader(Test(split["val"]), batch_size=256, num_workers=2)
total = epochs * len(loader)
def lr_at(step):
    if step < 100: return 2e-3 * (step + 1) / 100
    return 2e-3 * 0.5 * (1 + math.cos(math.pi * (step - 100) / max(1, total - 100)))

print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "text_features_s": round(text_s, 1)}), flush=True)
step, start = 0, time.perf_counter()
for epoch in range(epochs):
    train.epoch = epoch
    model.train()
    e0, seen = time.perf_counter(), 0
    for images, feats in loader:
        for g in opt.param_groups: g["lr"] = lr_at(step)
        i, t = model.image(images), model.text(feats)
        logits = model.logit_scale.exp() * t @ i.T
        y = torch.arange(len(logits))
        loss = (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        with torch.no_grad(): model.logit_scale.clamp_(0, math.log(100))
        step += 1; seen += len(images)
    train_s = time.perf_counter() - e0
    model.eval()
    with torch.no_grad():
        cls = model.text(prompt_feats).view(len(CLASSES), len(templates), -1).mean(1)
        cls = F.normalize(cls, dim=-1)
        hits = n = 0
        for images, y in test:
            hits += (model.image(images) @ cls.T).argmax(1).eq(y).sum().item(); n += len(y)
    print(json.dumps({"epoch": epoch + 1, "loss": round(loss.item(), 4), "samples_per_s": round(seen / train_s, 1),
                      "elapsed_s": round(time.perf_counter() - start, 1), "zero_shot_top1": round(hits / n, 4)}), flush=True)
