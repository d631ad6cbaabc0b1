"""Peak host memory (RSS) of each rank while the recipes load a sharded model (issue 15).

Writes a random Hugging Face Llama checkpoint of the chosen shape (default: Llama 3.2 1B's,
1.24 B parameters in bf16, untied so every matrix is sharded), then launches ``--nproc``
gloo ranks that do exactly what ``build_model`` does in the training recipes: read the
checkpoint (``FullModelHFCheckpointer``: memory-mapped safetensors), build on the meta
device, shard with FSDP2 and copy in each rank's shards (``load_full_state_dict``). Each rank
reports its RSS before loading (after imports and the process group) and its peak
(``VmHWM``, reset through ``/proc/self/clear_refs`` just before loading), both as a fraction
of the checkpoint's bytes, and the anonymous / file-backed split of its RSS after loading
(file-backed: the libraries' code pages and any checkpoint pages still mapped). Linux only. Not a timed test::

    .venv/bin/python benchmarks/load_rss.py                      # 1B shape, 2 ranks
    .venv/bin/python benchmarks/load_rss.py --layers 4 --vocab 32000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ACCEPT = 0.6  # issue 15: each rank's peak RSS while loading below 0.6x the model's bytes


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def write_checkpoint(folder: Path, args: argparse.Namespace) -> int:
    """A random HF Llama in ``args.dtype``, one safetensors file per ~1 GiB; its bytes."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    head_dim = args.dim // args.heads
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": args.dim, "intermediate_size": args.hidden,
        "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads, "vocab_size": args.vocab,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "hidden_act": "silu",
        "torch_dtype": {"bf16": "bfloat16", "fp32": "float32"}[args.dtype],
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    shapes = {"model.embed_tokens.weight": (args.vocab, args.dim)}
    for i in range(args.layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (args.heads * head_dim, args.dim),
            p + "self_attn.k_proj.weight": (args.kv_heads * head_dim, args.dim),
            p + "self_attn.v_proj.weight": (args.kv_heads * head_dim, args.dim),
            p + "self_attn.o_proj.weight": (args.dim, args.heads * head_dim),
            p + "mlp.gate_proj.weight": (args.hidden, args.dim),
            p + "mlp.up_proj.weight": (args.hidden, args.dim),
            p + "mlp.down_proj.weight": (args.dim, args.hidden),
            p + "input_layernorm.weight": (args.dim,),
            p + "post_attention_layernorm.weight": (args.dim,),
        }
    shapes |= {"model.norm.weight": (args.dim,), "lm_head.weight": (args.vocab, args.dim)}
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    gen = torch.Generator().manual_seed(0)
    files: list[dict[str, torch.Tensor]] = [{}]
    size = total = 0
    for name, shape in shapes.items():
        t = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
        if size and size + t.nbytes > 1 << 30:
            files.append({})
            size = 0
        files[-1][name] = t
        size += t.nbytes
        total += t.nbytes
    names = []
    for i, tensors in enumerate(files, 1):
        name = f"model-{i:05d}-of-{len(files):05d}.safetensors"
        save_file(tensors, folder / name, metadata={"format": "pt"})
        names.append(name)
    (folder / "files.json").write_text(json.dumps({"files": names, "bytes": total}))
    return total


def worker(folder: Path) -> None:
    """One rank: the recipes' loading path; prints a JSON line with its RSS figures."""
    import torch
    from omegaconf import OmegaConf

    from tunesmith.recipes._finetune_setup import build_model
    from tunesmith.training.checkpointing import FullModelHFCheckpointer
    from tunesmith.training.distributed import get_world_size_and_rank, init_distributed

    init_distributed(device_type="cpu")
    world, rank = get_world_size_and_rank()
    meta = json.loads((folder / "files.json").read_text())
    cfg = OmegaConf.create({"model": {"_component_": "tunesmith.models.build_from_hf",
                                      "checkpoint_dir_or_config": str(folder)}})  # fmt: skip
    torch.distributed.barrier()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    ckpt = FullModelHFCheckpointer(
        checkpoint_dir=str(folder),
        checkpoint_files=meta["files"],
        model_type="LLAMA3",
        output_dir=str(folder / "unused_out"),
    )
    state = ckpt.load_checkpoint()
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[
        json.loads((folder / "config.json").read_text())["torch_dtype"]
    ]
    model, _ = build_model(cfg, state, torch.device("cpu"), dtype, world)
    del state
    peak = _status_kib("VmHWM")
    after = _status_kib("VmRSS")
    own = sum(p.to_local().nbytes if hasattr(p, "to_local") else p.nbytes
              for p in model.parameters())  # fmt: skip
    model_bytes = meta["bytes"]
    kib = 1024
    print(json.dumps({
        "rank": rank, "world_size": world, "model_bytes": model_bytes,
        "dynamo_imported": "torch._dynamo" in sys.modules,
        "dcp_imported": "torch.distributed.checkpoint" in sys.modules,
        "anon_mib": _status_kib("RssAnon") / kib, "file_mib": _status_kib("RssFile") / kib,
        "rss_before_mib": before / kib, "peak_mib": peak / kib, "after_mib": after / kib,
        "own_shards_mib": own / 2**20,
        "peak_over_model": peak * kib / model_bytes,
        "load_increase_over_model": (peak - before) * kib / model_bytes,
    }), flush=True)  # fmt: skip
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv_heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument(
        "--work", type=Path, default=Path.home() / ".cache/tunesmith-bench/load_rss"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return
    shape = f"d{args.dim}_h{args.hidden}_l{args.layers}_v{args.vocab}"
    if args.dtype != "bf16":
        shape += f"_{args.dtype}"
    folder = args.work / shape
    if not (folder / "files.json").is_file():
        print(f"writing a random {shape} checkpoint to {folder} ...", flush=True)
        write_checkpoint(folder, args)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
           "--master_port", "29533", str(Path(__file__).resolve()), "--worker", str(folder)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    rows = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or len(rows) != args.nproc:
        sys.exit(out.stdout[-3000:] + out.stderr[-6000:])
    for row in sorted(rows, key=lambda r: r["rank"]):
        print(f"rank {row['rank']}: model {row['model_bytes'] / 2**20:.0f} MiB, RSS before "
              f"{row['rss_before_mib']:.0f} MiB, peak {row['peak_mib']:.0f} MiB "
              f"({row['peak_over_model']:.3f}x the model), load increase "
              f"{row['load_increase_over_model']:.3f}x, own shards {row['own_shards_mib']:.0f} MiB"
              f" (after: anonymous {row['anon_mib']:.0f}, file-backed {row['file_mib']:.0f})"
              f"{', torch._dynamo imported' if row['dynamo_imported'] else ''}"
              f"{', torch.distributed.checkpoint imported' if row['dcp_imported'] else ''}")  # fmt: skip
    worst = max(row["peak_over_model"] for row in rows)
    verdict = "below" if worst < ACCEPT else "NOT below"
    print(
        f"worst rank's peak / model = {worst:.3f} ({worst / ACCEPT:.3f} of the {ACCEPT}x "
        f"acceptance: {verdict})"
    )


if __name__ == "__main__":
    main()
