"""The PyTorch peer of `clip bench step`: the seed's model (timm resnet50 + DistilBERT + the seed's
projection heads, random init), symmetric InfoNCE at temperature 1, Adam(lr 1e-4, wd 5e-4).

    python3 crates/clip-model/benches/model_peer.py [--device cpu|cuda] [--batch 8] [--image 224]
        [--seq 32] [--warmup 2] [--steps 5] [--precision fp32|bf16-mixed|fp16-mixed] [--mode both]

Prints one JSON line per measurement, in the same shape as `clip bench step`.
"""
import argparse, json, time
import torch, torch.nn as nn, torch.nn.functional as F
import timm
from transformers import DistilBertConfig, DistilBertModel


class ProjectionHead(nn.Module):
    def __init__(self, d_in, d_out=256, p=0.1):
        super().__init__()
        self.projection = nn.Linear(d_in, d_out)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(p)
        self.layer_norm = nn.LayerNorm(d_out)

    def forward(self, x):
        p = self.projection(x)
        return self.layer_norm(self.dropout(self.fc(self.gelu(p))) + p)


class SeedClip(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = timm.create_model("resnet50", pretrained=False, num_classes=0, global_pool="avg")
        self.text = DistilBertModel(DistilBertConfig())
        self.image_head, self.text_head = ProjectionHead(2048), ProjectionHead(768)

    def forward(self, images, ids, mask):
        t = self.text_head(self.text(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])
        return t, self.image_head(self.image(images))


def loss_fn(t, i):
    logits = t @ i.T
    y = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--mode", default="both")
    a = ap.parse_args()
    dev = a.device
    sync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = SeedClip().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(a.precision)
    scaler = torch.amp.GradScaler(dev, enabled=a.precision == "fp16-mixed")
    images = torch.randn(a.batch, 3, a.image, a.image, device=dev)
    ids = torch.randint(1000, 30000, (a.batch, a.seq), device=dev)
    mask = torch.ones(a.batch, a.seq, dtype=torch.long, device=dev)
    common = {"stack": f"pytorch {torch.__version__}", "backend": dev, "threads": torch.get_num_threads(),
              "precision": a.precision, "batch": a.batch, "image": a.image, "seq": a.seq}

    phases = [0.0, 0.0, 0.0]  # forward, backward, optimizer: seconds over the timed steps

    def step():
        t0 = time.perf_counter()
        with torch.autocast(dev, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(*model(images, ids, mask))
        sync(); t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        sync(); t2 = time.perf_counter()
        scaler.step(opt)
        scaler.update()
        sync(); t3 = time.perf_counter()
        for k, d in enumerate((t1 - t0, t2 - t1, t3 - t2)):
            phases[k] += d

    if a.mode in ("train", "both"):
        model.train()
        t0 = time.perf_counter(); step(); first = time.perf_counter() - t0
        for _ in range(a.warmup - 1):
            step()
        phases[:] = [0.0, 0.0, 0.0]
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        dt = (time.perf_counter() - t0) / a.steps
        forward_ms, backward_ms, optimizer_ms = (round(p / a.steps * 1e3, 1) for p in phases)
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None
        print(json.dumps({"what": "train_step", **common, "ms_per_step": round(dt * 1e3, 1),
                          "samples_per_s": round(a.batch / dt, 2), "first_step_s": round(first, 2),
                          "forward_ms": forward_ms, "backward_ms": backward_ms, "optimizer_ms": optimizer_ms,
                          "peak_gib": peak and round(peak, 2)}), flush=True)
    if a.mode in ("forward", "both"):
        model.eval()
        with torch.no_grad(), torch.autocast(dev, dtype=dtype or torch.float32, enabled=dtype is not None):
            for _ in range(a.warmup):
                loss_fn(*model(images, ids, mask)).item()
            t0 = time.perf_counter()
            for _ in range(a.steps):
                loss_fn(*model(images, ids, mask)).item()
            dt = (time.perf_counter() - t0) / a.steps
        print(json.dumps({"what": "forward", **common, "ms_per_step": round(dt * 1e3, 1),
                          "samples_per_s": round(a.batch / dt, 2)}), flush=True)


if __name__ == "__main__":
    main()
