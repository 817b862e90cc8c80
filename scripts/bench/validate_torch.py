#!/usr/bin/python3
"""PyTorch CPU reference for scripts/bench/validate.bench.mjs.

Scores the same probe sequences as validate does: right-padded batches
(same order and batch size), one no-grad forward each (scripts/golden/archs.py,
the golden-file reference model, random weights of the given GPT-2 shape),
then log-softmax and the target token's log-prob at the last prompt position.

Usage: /usr/bin/python3 validate_torch.py --spec FILE --threads N --iters K
FILE: {"config": {...gpt2 config...}, "batches": [[[ids...], ...], ...], "targets": [[t, ...], ...]}
Prints one JSON line: {"ms", "threads", "torch"}.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'golden'))
import archs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--spec', required=True)
    ap.add_argument('--threads', type=int, default=os.cpu_count())
    ap.add_argument('--iters', type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = json.load(open(a.spec))
    c = dict(spec['config'], model_type='gpt2')
    m = archs.random_gpt2(c, torch.Generator().manual_seed(0))
    batches = []
    for seqs in spec['batches']:
        T = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), T, dtype=torch.int64)
        mask = torch.zeros(len(seqs), T, dtype=torch.int64)
        last = torch.tensor([len(s) - 1 for s in seqs])
        for b, s in enumerate(seqs):
            ids[b, :len(s)] = torch.tensor(s)
            mask[b, :len(s)] = 1
        batches.append((ids, mask, last))
    targets = [torch.tensor(t) for t in spec['targets']]

    def run():
        out = []
        with torch.no_grad():
            for (ids, mask, last), tg in zip(batches, targets):
                logits, _ = archs.forward(m, ids, mask)
                rows = logits[torch.arange(ids.shape[0]), last]
                out.append(torch.log_softmax(rows, -1).gather(1, tg[:, None]))
        return out

    run()
    ts = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        run()
        ts.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({'ms': statistics.median(ts), 'threads': torch.get_num_threads(), 'torch': torch.__version__}))


if __name__ == '__main__':
    main()
