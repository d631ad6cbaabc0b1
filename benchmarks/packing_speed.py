#!/usr/bin/env python
"""Data preparation speed: tokenize + pack N alpaca-format rows (issue 8: >= 5x torchtune).

Builds ``alpaca_dataset(tokenizer, source="json", data_files=..., packed=True)`` and
reads every pack once, timed from tokenizer construction to the last pack, in a fresh
process each time:

* tunesmith, cold: no tokenization cache (``datasets``' own JSON->Arrow cache is fresh too);
* tunesmith, warm: a second run reading the tokenization cache;
* per-sample reference: the same tunesmith tokenizer and message transform, driven the
  way torchtune's ``SFTDataset`` + ``PackedDataset`` do it (``ds[i]`` row by row, labels
  with ``np.where`` per sample, list-based packing with ``torch`` tensors per pack);
* torchtune 0.6.1 itself, when a Python with torchtune is given (``--torchtune-python``,
  ``$TUNESMITH_TORCHTUNE_PYTHON``, or the peer venv the issue-8 harness builds at
  ``~/.cache/tunesmith-bench/peer-venv``), with its own Llama 3 tokenizer.

The packed token streams of all runs are compared (digest of the non-padding part of every
pack): same work, not a different problem.

Usage:
    .venv/bin/python benchmarks/packing_speed.py [--rows 50000] [--max-seq-len 2048]
        [--tokenizer-path ../shared/assets/tokenizers/llama3/tokenizer.model]
        [--torchtune-python PATH | --torchtune-python none]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = REPO.parent / "shared" / "assets" / "tokenizers" / "llama3" / "tokenizer.model"
PEER_PYTHON = Path("~/.cache/tunesmith-bench/peer-venv/bin/python").expanduser()

WORDS = (
    "the of and to in is was for on that with as by at from his her they this have are be or "
    "one had not but what all were when we there can an your which their said if do will each "
    "about how up out them then she many some so these would other into has more two like him "
    "see time could no make than first been its who now people my made over did down only way "
    "find use may water long little very after words called just where most know get through "
    "back much before go good new write our used me man too any day same right look think also "
    "around another came come work three word must because does part even place well such here "
    "take why things help put years different away again off went old number great tell men "
    "say small every found still between name should home big give air line set own under read "
    "model training data gradient tensor layer memory token batch optimizer loss python function "
    "value result system process network energy science music history city river mountain"
).split()
VERBS = "Explain Describe Summarize List Write Compare Translate Classify Rewrite Suggest".split()


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", ".", "?", "!"])


def _paragraph(rng: random.Random, n_words: int) -> str:
    out, total = [], 0
    while total < n_words:
        s = _sentence(rng, 5, 18)
        out.append(s)
        total += s.count(" ") + 1
    return " ".join(out)


def make_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca-format rows with alpaca-like lengths (same recipe as ../shared/bench)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        instruction = f"{rng.choice(VERBS)} " + _sentence(rng, 6, 20)
        extra = _paragraph(rng, rng.randint(10, 60)) if rng.random() < 0.5 else ""
        n_out = int(min(420, max(15, rng.lognormvariate(4.4, 0.6))))
        rows.append({"instruction": instruction, "input": extra, "output": _paragraph(rng, n_out)})
    return rows


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (workers)."""
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _digest_update(h: hashlib._Hash, tokens, labels) -> int:
    import numpy as np

    tokens, labels = np.asarray(tokens, np.int64), np.asarray(labels, np.int64)
    trained = np.flatnonzero(labels != -100)
    used = int(trained[-1]) + 1 if len(trained) else 0  # alpaca trains on every real token
    h.update(tokens[:used].tobytes())
    h.update(labels[:used].tobytes())
    return used


def stage_tunesmith(args: argparse.Namespace) -> dict:
    os.environ["TUNESMITH_DATA_CACHE_DIR"] = args.cache_dir
    if args.stage == "tunesmith-nocache":
        os.environ["TUNESMITH_DATA_CACHE"] = "0"
    import datasets

    datasets.disable_progress_bars()
    from tunesmith.datasets import alpaca_dataset
    from tunesmith.models.llama3 import llama3_tokenizer

    start, cpu = time.perf_counter(), _cpu_seconds()
    tokenizer = llama3_tokenizer(args.tokenizer_path, max_seq_len=args.max_seq_len)
    ds = alpaca_dataset(
        tokenizer, source="json", data_files=args.data, packed=True, cache_dir=args.hf_cache
    )
    built = time.perf_counter()
    h, real = hashlib.sha256(), 0
    for i in range(len(ds)):
        pack = ds[i]
        real += _digest_update(h, pack["tokens"].numpy(), pack["labels"].numpy())
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "cpu_s": _cpu_seconds() - cpu,
        "build_s": built - start,
        "packs": len(ds),
        "tokens": real,
        "digest": h.hexdigest()[:16],
    }


def stage_reference(args: argparse.Namespace) -> dict:
    """torchtune's algorithm, per sample, with tunesmith's tokenizer and message transform."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import datasets

    datasets.disable_progress_bars()
    from tunesmith.data import AlpacaToMessages
    from tunesmith.models.llama3 import llama3_tokenizer

    start, cpu = time.perf_counter(), _cpu_seconds()
    tokenizer = llama3_tokenizer(args.tokenizer_path, max_seq_len=args.max_seq_len)
    data = datasets.load_dataset(
        "json", data_files=args.data, split="train", cache_dir=args.hf_cache
    )
    transform, max_len = AlpacaToMessages(train_on_input=True), args.max_seq_len
    packs: list[dict] = []
    cur: dict[str, list] = {"tokens": [], "labels": [], "input_pos": [], "seq_lens": []}

    def add_pack(pack: dict) -> None:
        n_pad = max_len - len(pack["tokens"])
        last = pack["input_pos"][-1]
        packs.append(
            {
                "tokens": F.pad(torch.tensor(pack["tokens"]), (0, n_pad), value=0),
                "labels": F.pad(torch.tensor(pack["labels"]), (0, n_pad), value=-100),
                "input_pos": torch.cat(
                    [
                        torch.tensor(pack["input_pos"]),
                        torch.arange(last + 1, last + n_pad + 1).clamp(0, max_len - 1),
                    ]
                ),
                "seq_lens": torch.tensor(pack["seq_lens"] + ([n_pad] if n_pad else [])),
            }
        )

    for i in range(len(data)):
        out = tokenizer(transform(data[i]))
        tokens, labels = out["tokens"], list(np.where(out["mask"], -100, out["tokens"]))
        n = len(tokens)
        if len(cur["tokens"]) + n > max_len:
            add_pack(cur)
            cur = {"tokens": [], "labels": [], "input_pos": [], "seq_lens": []}
        cur["tokens"] += tokens
        cur["labels"] += labels
        cur["input_pos"] += [x % max_len for x in range(n)]
        cur["seq_lens"] += [n]
    if cur["tokens"]:
        add_pack(cur)
    h, real = hashlib.sha256(), 0
    for pack in packs:
        real += _digest_update(h, pack["tokens"].numpy(), pack["labels"].numpy())
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "cpu_s": _cpu_seconds() - cpu,
        "packs": len(packs),
        "tokens": real,
        "digest": h.hexdigest()[:16],
    }


_TORCHTUNE_SCRIPT = r"""
import hashlib, json, resource, sys, time
import numpy as np
def cpu_s():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
import datasets
datasets.disable_progress_bars()
from torchtune.datasets import alpaca_dataset
from torchtune.models.llama3 import llama3_tokenizer
data, tok_path, max_len, hf_cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
start, cpu = time.perf_counter(), cpu_s()
tokenizer = llama3_tokenizer(tok_path, max_seq_len=max_len)
ds = alpaca_dataset(tokenizer, source="json", data_files=data, packed=True, cache_dir=hf_cache)
built = time.perf_counter()
h, real = hashlib.sha256(), 0
for i in range(len(ds)):
    pack = ds[i]
    tokens, labels = pack["tokens"].numpy().astype(np.int64), pack["labels"].numpy().astype(np.int64)
    trained = np.flatnonzero(labels != -100)
    used = int(trained[-1]) + 1 if len(trained) else 0
    h.update(tokens[:used].tobytes()); h.update(labels[:used].tobytes()); real += used
end = time.perf_counter()
print(json.dumps({"seconds": end - start, "cpu_s": cpu_s() - cpu, "build_s": built - start,
                  "packs": len(ds), "tokens": real,
                  "digest": h.hexdigest()[:16]}))
"""


def _run(cmd: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _torchtune_python(choice: str | None) -> str | None:
    if choice == "none":
        return None
    candidates = [choice, os.environ.get("TUNESMITH_TORCHTUNE_PYTHON"), str(PEER_PYTHON)]
    for python in candidates:
        if python and Path(python).exists():
            ok = subprocess.run([python, "-c", "import torchtune"], capture_output=True)
            if ok.returncode == 0:
                return python
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--tokenizer-path", default=str(DEFAULT_TOKENIZER))
    p.add_argument("--torchtune-python", default=None, help="python with torchtune, or 'none'")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--hf-cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.stage:  # a child process: one timed preparation, one JSON line out
        fn = stage_reference if args.stage == "reference" else stage_tunesmith
        print(json.dumps(fn(args)))
        return

    if not Path(args.tokenizer_path).is_file():
        sys.exit(f"tokenizer file {args.tokenizer_path} not found; pass --tokenizer-path")
    work = Path(tempfile.mkdtemp(prefix="tunesmith-packing-bench-"))
    data = work / "alpaca.json"
    data.write_text(json.dumps(make_rows(args.rows)))
    base = [
        sys.executable,
        __file__,
        "--data",
        str(data),
        "--max-seq-len",
        str(args.max_seq_len),
        "--tokenizer-path",
        args.tokenizer_path,
        "--cache-dir",
        str(work / "tokenized"),
    ]

    def hf(name: str) -> list[str]:  # a fresh datasets cache per system: JSON->Arrow included
        return ["--hf-cache", str(work / f"hf-{name}")]

    results: dict[str, dict] = {}
    results["tunesmith cold (tokenize + pack)"] = _run(base + hf("ts") + ["--stage", "tunesmith"])
    results["tunesmith warm (cached tokens)"] = _run(base + hf("ts") + ["--stage", "tunesmith"])
    if not args.skip_reference:
        results["per-sample reference (torchtune-style)"] = _run(
            base + hf("ref") + ["--stage", "reference"]
        )
    python = _torchtune_python(args.torchtune_python)
    if python:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        results["torchtune 0.6.1"] = _run(
            [
                python,
                "-c",
                _TORCHTUNE_SCRIPT,
                str(data),
                args.tokenizer_path,
                str(args.max_seq_len),
                str(work / "hf-tt"),
            ],
            env=env,
        )

    print(f"\nrows={args.rows} max_seq_len={args.max_seq_len} tokenizer={args.tokenizer_path}")
    print(
        f"cpus available={len(os.sched_getaffinity(0))} load average={os.getloadavg()[0]:.1f} "
        f"work dir={work}\n"
    )
    print("| run | wall s | CPU s | rows/s | packs | tokens in packs | digest |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['seconds']:.2f} | {r['cpu_s']:.2f} | {args.rows / r['seconds']:,.0f} | "
            f"{r['packs']} | {r['tokens']:,} | {r['digest']} |"
        )
    digests = {r["digest"] for r in results.values()}
    print("\nsame packed tokens in every run:", "yes" if len(digests) == 1 else "no (see tokens)")
    peer = results.get("torchtune 0.6.1") or results.get("per-sample reference (torchtune-style)")
    if peer is None:
        return
    peer_name = "torchtune 0.6.1" if "torchtune 0.6.1" in results else "per-sample reference"
    for label, key in (
        ("cold", "tunesmith cold (tokenize + pack)"),
        ("warm", "tunesmith warm (cached tokens)"),
    ):
        r = results[key]
        print(
            f"{peer_name} / tunesmith {label}: wall {peer['seconds'] / r['seconds']:.1f}x, "
            f"CPU {peer['cpu_s'] / r['cpu_s']:.1f}x"
        )
    ours = results["tunesmith cold (tokenize + pack)"]
    if peer["tokens"] != ours["tokens"]:
        print(
            f"token count differs by {peer['tokens'] - ours['tokens']:+,} "
            f"({(peer['tokens'] - ours['tokens']) / args.rows:+.2f} per row): torchtune's Llama 3 "
            "tokenizer ends every sample with <|end_of_text|> after the last <|eot_id|>"
        )


if __name__ == "__main__":
    main()
