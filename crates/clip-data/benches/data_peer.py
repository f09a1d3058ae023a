"""The Python peer of benches/pipeline.rs: the seed's data work on the same files.

Usage: python3 crates/clip-data/benches/data_peer.py DIR
Writes 200 JPEGs (500x375, quality 90, Flickr30k's typical size) into DIR if absent, then prints:
- decode_resize_normalize: cv2.imread + BGR->RGB + albumentations Resize(224) + Normalize on one core;
- loader (if torch is installed): the seed's Dataset (cv2 + albumentations per item, captions
  tokenized up front) under torch's DataLoader, batch 32, 4 workers.
"""
import json, os, sys, time
import numpy as np
import cv2, albumentations as A
from PIL import Image, ImageFilter

cv2.setNumThreads(1)
d = sys.argv[1] if len(sys.argv) > 1 else "/tmp/data_ref_imgs"
os.makedirs(d, exist_ok=True)
rng = np.random.default_rng(0)
files = []
for i in range(200):
    p = os.path.join(d, f"{i:04d}.jpg")
    files.append(p)
    if not os.path.exists(p):
        a = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)
        Image.fromarray(a).resize((500, 375), Image.BICUBIC).filter(ImageFilter.DETAIL).save(p, quality=90)

tf = A.Compose([A.Resize(224, 224), A.Normalize(max_pixel_value=255.0)])

def one(p):
    return tf(image=cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB))["image"]

for p in files[:20]:
    one(p)
t = time.perf_counter()
for _ in range(3):
    for p in files:
        one(p)
dt = time.perf_counter() - t
print(json.dumps({"what": "decode_resize_normalize", "stack": "cv2+albumentations", "threads": 1,
                  "images_per_s": round(600 / dt, 1), "image": "500x375 jpeg q90 -> 224x224"}), flush=True)

try:
    import torch
    from tokenizers import BertWordPieceTokenizer
except ImportError:
    sys.exit(0)

vocab = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "bert-base-uncased-vocab.txt")
tok = BertWordPieceTokenizer(vocab, lowercase=True)
words = ["a", "man", "in", "blue", "shirt", "is", "standing", "on", "the", "street", "while", "two", "dogs",
         "run", "across", "green", "grass", "near", "an", "old", "wooden", "fence", "with", "children"]
pairs = [(f, " ".join(words[(i * 7 + k * 3 + w * 5) % len(words)] for w in range(10 + (i * 5 + k) % 8)))
         for i, f in enumerate(files) for k in range(5)]

class SeedDataset(torch.utils.data.Dataset):
    """As the seed: tokenize every caption once (padded to the longest), read the image per item."""
    def __init__(self, pairs):
        self.files = [p for p, _ in pairs]
        tok.enable_truncation(200)
        tok.enable_padding()
        enc = tok.encode_batch([c for _, c in pairs])
        self.ids = torch.tensor([e.ids for e in enc])
        self.mask = torch.tensor([e.attention_mask for e in enc])
    def __len__(self):
        return len(self.files)
    def __getitem__(self, i):
        img = torch.tensor(one(self.files[i])).permute(2, 0, 1).float()
        return {"image": img, "input_ids": self.ids[i], "attention_mask": self.mask[i]}

loader = torch.utils.data.DataLoader(SeedDataset(pairs), batch_size=32, num_workers=4, shuffle=True)
it = iter(loader); next(it); next(it)
t = time.perf_counter(); n = 0; imgs = 0
for _ in range(2):
    for b in loader:
        n += 1; imgs += b["image"].shape[0]
dt = time.perf_counter() - t
print(json.dumps({"what": "loader", "stack": "torch DataLoader + cv2 + albumentations (seed Dataset)", "batch": 32,
                  "workers": 4, "image": 224, "cores": os.cpu_count(), "batches_per_s": round(n / dt, 2),
                  "images_per_s": round(imgs / dt, 1), "torch": torch.__version__}), flush=True)
