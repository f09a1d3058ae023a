#!/usr/bin/env python3
"""Zero-shot classification with a model exported by `clip export`, in Python only: ONNX Runtime
runs the two encoders, Hugging Face `tokenizers` reads the exported tokenizer.json, and the
preprocessing comes from the ONNX files' metadata. Checks the result against what the `clip`
binary computed with the same weights (an index from `clip embed`, a `clip zero-shot --json`
file) and reports images/s.

    pip install onnxruntime tokenizers numpy pillow
    clip export --checkpoint runs/fashion-mnist-minilm --out exported
    python3 bench/onnx/zero_shot_ort.py --export exported --index runs/fashion-mnist-minilm/test.index \
        --zero-shot runs/fashion-mnist-minilm/zero-shot-test.json --threads 2

Images are read from the index's entries; its embeddings are the reference for the image tower.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer


def session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def metadata(sess):
    return sess.get_modelmeta().custom_metadata_map


def preprocess(paths, meta):
    size = int(meta["image_size"])
    mean = np.array(json.loads(meta["mean"]), dtype=np.float32).reshape(3, 1, 1)
    std = np.array(json.loads(meta["std"]), dtype=np.float32).reshape(3, 1, 1)
    batch = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        if meta.get("resize") == "center-crop":
            side = min(img.size)
            left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
            img = img.crop((left, top, left + side, top + side))
        if img.size != (size, size):
            # Pillow's bilinear filter is the "antialias" one; "bilinear" (OpenCV's INTER_LINEAR,
            # no antialiasing) differs slightly when shrinking: embeddings are then close, not equal.
            img = img.resize((size, size), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        batch.append((x - mean) / std)
    return np.stack(batch)


def normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True, type=Path)
    ap.add_argument("--index", required=True, type=Path)
    ap.add_argument("--zero-shot", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    image_sess = session(args.export / "image_encoder.onnx", args.threads)
    text_sess = session(args.export / "text_encoder.onnx", args.threads)
    meta = metadata(image_sess)
    index = json.loads((args.index / "index.json").read_text())
    reference = np.load(args.index / index["embeddings"])
    paths = [e["path"] for e in index["entries"]]

    # Image tower: every indexed image, in batches.
    start = time.perf_counter()
    images = []
    for i in range(0, len(paths), args.batch):
        pixels = preprocess(paths[i : i + args.batch], meta)
        images.append(image_sess.run(["image_embeds"], {"pixel_values": pixels})[0])
    seconds = time.perf_counter() - start
    images = normalize(np.concatenate(images))
    cosine = (images * reference).sum(axis=1)
    print(f"image tower: {len(paths)} images in {seconds:.1f} s ({len(paths) / seconds:.0f} images/s, "
          f"{args.threads} threads, decoding included); cosine to the clip index: min {cosine.min():.6f}, mean {cosine.mean():.6f}")

    # Text tower: the zero-shot prompts, averaged per label as `clip zero-shot` does.
    zs = json.loads(args.zero_shot.read_text())
    tokenizer = Tokenizer.from_file(str(args.export / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    labels, templates = zs["labels"], zs["templates"]
    prompts = [t.replace("{}", label) for label in labels for t in templates]
    encodings = tokenizer.encode_batch(prompts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    texts = text_sess.run(["text_embeds"], {"input_ids": ids, "attention_mask": mask})[0]
    texts = normalize(texts).reshape(len(labels), len(templates), -1).mean(axis=1)
    classifier = normalize(texts)

    predicted = (images @ classifier.T).argmax(axis=1)
    by_path = {Path(p).name: i for i, p in enumerate(paths)}
    theirs = {Path(p).name: top[0][0] for p, top in zs["predictions"]}
    truth_file = Path(paths[0]).parents[2] / "labels.csv"
    truth = {}
    if truth_file.is_file():
        for line in truth_file.read_text().splitlines()[1:]:
            image, _, cls, _ = line.split(",")
            truth[image] = cls
    agree = sum(labels[predicted[by_path[name]]] == label for name, label in theirs.items() if name in by_path)
    print(f"zero-shot: predictions equal to clip zero-shot's for {agree} of {len(theirs)} images")
    if truth:
        correct = sum(labels[predicted[i]] == truth.get(Path(p).name) for i, p in enumerate(paths))
        print(f"zero-shot accuracy with ONNX Runtime: {100 * correct / len(paths):.2f}% (clip zero-shot: {100 * zs['accuracy']:.2f}%)")


if __name__ == "__main__":
    main()
