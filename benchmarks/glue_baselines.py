"""Anchors for GLUE at CPU scale: TF-IDF over character n-grams + logistic regression, and a small byte CNN.

    python benchmarks/glue_baselines.py --glue-dir ../shared/data/glue --task sst2 --steps 600,2000 --seeds 0,1

The byte CNN (embedding 64, three kernel-5 convolutions of width 192, max-pool over the text, AdamW
1e-3, batch 32) sees exactly the examples a Perceiver run of the same steps sees. Pair tasks are
encoded as ``[CLS] a [SEP] b [SEP]`` for the CNN and as "a [SEP] b" for TF-IDF. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from perceiver_lm.tokenizer import VOCAB_SIZE, decode, pad_batch
from tasks.finetune.data import load_split
from tasks.finetune.metrics import compute_all
from tasks.glue.tasks import parse_tasks


class ByteCNN(nn.Module):
    """Byte embedding, three same-padded convolutions, max-pool over real bytes, linear readout."""

    def __init__(self, outputs: int, dim: int = 64, width: int = 192, kernel: int = 5) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, dim, padding_idx=0)
        self.convs = nn.ModuleList(
            nn.Conv1d(dim if i == 0 else width, width, kernel, padding=kernel // 2) for i in range(3)
        )
        self.head = nn.Linear(width, outputs)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embedding(ids).transpose(1, 2)  # [B, L, D] -> [B, D, L]
        for conv in self.convs:
            h = F.relu(conv(h))
        h = h.masked_fill(~mask.bool()[:, None, :], float("-inf")).amax(-1)  # [B, D]
        return self.head(h)


def cnn_scores(
    task, train, dev, steps: list[int], seed: int, batch_size: int = 32, lr: float = 1e-3
) -> dict[int, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ByteCNN(task.num_outputs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    labels = np.asarray(train.labels, dtype=np.float32)
    scores, order = {}, rng.permutation(len(train))
    for step in range(1, max(steps) + 1):
        if (step * batch_size) > len(order):
            order = np.concatenate([order, rng.permutation(len(train))])
        pick = order[(step - 1) * batch_size : step * batch_size]
        batch = pad_batch([train.ids[i] for i in pick])
        logits = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
        y = torch.from_numpy(labels[pick])
        loss = F.mse_loss(logits[:, 0], y) if task.is_regression else F.cross_entropy(logits, y.long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in steps:
            model.eval()
            with torch.no_grad():
                preds = []
                for start in range(0, len(dev), 128):
                    b = pad_batch(dev.ids[start : start + 128])
                    out = model(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask))
                    preds.append(out[:, 0] if task.is_regression else out.argmax(-1).float())
            scores[step] = compute_all(task.metrics, torch.cat(preds).numpy(), np.asarray(dev.labels))
            model.train()
    return scores


def tfidf_scores(task, train, dev, limits: list[int | None], seed: int) -> dict[str, dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge

    def texts(split):
        return [decode(ids).replace("\n", " ") for ids in split.ids]

    out = {}
    train_texts, dev_texts = texts(train), texts(dev)
    for limit in limits:
        pick = (
            np.arange(len(train))
            if limit is None or limit >= len(train)
            else np.random.default_rng(seed).choice(len(train), limit, replace=False)
        )
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), sublinear_tf=True, min_df=2)
        x = vectorizer.fit_transform([train_texts[i] for i in pick])
        y = np.asarray(train.labels)[pick]
        model = Ridge(alpha=1.0) if task.is_regression else LogisticRegression(max_iter=2000, C=4.0)
        model.fit(x, y)
        preds = model.predict(vectorizer.transform(dev_texts)).astype(np.float32)
        out["full" if limit is None else str(limit)] = compute_all(task.metrics, preds, np.asarray(dev.labels))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glue-dir", required=True)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--steps", default="600,2000", help="byte-CNN evaluation points (batches of 32)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", default="runs/glue_baselines.json")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    (task,) = parse_tasks(args.task)
    train = load_split(task, "train", args.glue_dir, args.max_length)
    dev = load_split(task, task.dev[0][0], args.glue_dir, args.max_length)
    steps = [int(s) for s in args.steps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {"task": task.name, "cnn": {}, "tfidf": {}}
    for seed in seeds:
        started = time.monotonic()
        results["cnn"][seed] = cnn_scores(task, train, dev, steps, seed)
        results["cnn"][seed]["minutes"] = (time.monotonic() - started) / 60
        started = time.monotonic()
        results["tfidf"][seed] = tfidf_scores(task, train, dev, [max(steps) * 32, None], seed)
        results["tfidf"][seed]["minutes"] = (time.monotonic() - started) / 60
        print(seed, json.dumps(results["cnn"][seed]), json.dumps(results["tfidf"][seed]), flush=True)
    metric = task.metrics[0]
    print(f"\n| model | examples seen | {task.name} dev {metric} (mean ± sd over seeds {args.seeds}) |\n|---|---|---|")
    for step in steps:
        values = [results["cnn"][s][step][metric] for s in seeds]
        print(f"| byte CNN | {step} x 32 | {np.mean(values):.1f} ± {np.std(values):.1f} |")
    for key in results["tfidf"][seeds[0]]:
        if key == "minutes":
            continue
        values = [results["tfidf"][s][key][metric] for s in seeds]
        print(f"| TF-IDF char 1-5-grams + linear | {key} | {np.mean(values):.1f} ± {np.std(values):.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
