"""Error-table cases for correct outputs (issue 12): a config.json that does not describe
the weights beside it, GGUF files given where Hugging Face weights or an adapter belong,
and `tunesmith download` of files that do not match what the hub reports.

The download cases run against the loopback fake hub of ``tests/_fake_hub.py``, started in
this process on first use; the command runs in a subprocess (fresh huggingface_hub
settings) with ``HF_ENDPOINT`` pointing at it. Their ``watch`` folder is the training
``out`` folder, which a download never touches; what a download must not do (keep a bad
file under its final name) is checked in ``tests/test_download.py``.
"""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from tests._fake_hub import ORG, FakeHub, reset
from tests.error_cases._case import ErrorCase
from tests.error_cases._toys import finetune, tiny_model

# Bound now (so the URL is known when the cases are defined), served on first use.
_HUB = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
_HUB.daemon_threads = True
_HUB_URL = f"http://127.0.0.1:{_HUB.server_address[1]}"
_STARTED: list[threading.Thread] = []
_HUB_ENV = {
    "HF_ENDPOINT": _HUB_URL,
    "HF_HOME": "hf_home",  # relative: inside the case's folder
    "HF_TOKEN": "",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_XET": "1",
}


def _download(repo: str):
    def build(tmp: Path) -> list[str]:
        reset()  # the interrupted repos break off again
        if not _STARTED:
            thread = threading.Thread(target=_HUB.serve_forever, daemon=True)
            thread.start()
            _STARTED.append(thread)
        return ["download", f"{ORG}/{repo}", "--output-dir", str(tmp / "download")]

    return build


def _edit_config(**changes: object):
    def build(tmp: Path) -> list[str]:
        path = tiny_model(tmp) / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return finetune(tmp)

    return build


def _config_json_missing(tmp: Path) -> list[str]:
    (tiny_model(tmp) / "config.json").unlink()
    return finetune(tmp)


def _config_json_not_json(tmp: Path) -> list[str]:
    (tiny_model(tmp) / "config.json").write_text('{"hidden_size": 64,,}')
    return finetune(tmp)


def _gguf_in_hf_checkpointer(tmp: Path) -> list[str]:
    model = tiny_model(tmp)
    (model / "model.Q8_0.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\0" * 64)
    return finetune(tmp, "checkpointer.checkpoint_files=[model.Q8_0.gguf]")


def _gguf_as_adapter(tmp: Path) -> list[str]:
    model = tiny_model(tmp)
    (model / "adapter.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\0" * 64)
    return finetune(
        tmp,
        f"checkpointer.adapter_checkpoint={model / 'adapter.gguf'}",
        "model.lora_attn_modules=[q_proj,v_proj]",
    )


CASES: list[ErrorCase] = [
    ErrorCase("config.json hidden_size does not fit the weights", "checkpoint",
              _edit_config(hidden_size=32),
              r"config\.json does not describe the weights beside it: hidden_size=32 but "
              r"model\.embed_tokens\.weight has shape \[320, 64\] \(.*config\.json\): use the"),
    ErrorCase("config.json num_hidden_layers does not fit the weights", "checkpoint",
              _edit_config(num_hidden_layers=4),
              r"num_hidden_layers=4 but model\.layers\.1\..*\(layers 0-1\) has shape"),
    ErrorCase("config.json vocab_size does not fit the weights", "checkpoint",
              _edit_config(vocab_size=512),
              r"vocab_size=512 but model\.embed_tokens\.weight has shape \[320, 64\]"),
    ErrorCase("config.json of a model with other heads", "checkpoint",
              _edit_config(num_key_value_heads=4),
              r"num_key_value_heads=4 but model\.layers\.0\.self_attn\.k_proj\.weight has shape"),
    ErrorCase("config.json missing beside the weights", "checkpoint", _config_json_missing,
              r"config\.json is missing beside the weights \(checkpointer\.checkpoint_dir="),
    ErrorCase("config.json not valid JSON", "checkpoint", _config_json_not_json,
              r"config\.json is not valid JSON .*\(.*config\.json\)"),
    ErrorCase("GGUF file given to the Hugging Face checkpointer", "checkpoint",
              _gguf_in_hf_checkpointer,
              r"model\.Q8_0\.gguf is a GGUF file, which FullModelHFCheckpointer cannot read "
              r".*GGUFCheckpointer"),
    ErrorCase("GGUF file as the adapter checkpoint", "checkpoint", _gguf_as_adapter,
              r"adapter\.gguf is a GGUF file, not an adapter "
              r"\(checkpointer\.adapter_checkpoint=.*PEFT"),
    ErrorCase("download: a file's size differs from the hub's listing", "environment",
              _download("bad-size"),
              r"downloaded file does not match what the hub reports, size: expected \d+ "
              r"bytes, got \d+ \(.*model\.safetensors.*rerun the download",
              env=_HUB_ENV, subprocess=True),
    ErrorCase("download: a file's sha256 differs from the hub's", "environment",
              _download("bad-hash"),
              r"sha256: expected [0-9a-f]{64}, got [0-9a-f]{64} \(.*model\.safetensors.*"
              r"rerun the download", env=_HUB_ENV, subprocess=True),
    ErrorCase("download: a file's ETag differs from its content", "environment",
              _download("bad-etag"),
              r"ETag: the hub sent f{40}, the file hashes to [0-9a-f]{40} "
              r"\(.*tokenizer\.json.*rerun the download", env=_HUB_ENV, subprocess=True),
    ErrorCase("download: the transfer breaks off", "environment", _download("cut"),
              r"the hub answered 503 for tiny-org/cut \(http://127\.0\.0\.1:\d+\): retry "
              r"later; a rerun continues", env=_HUB_ENV, subprocess=True),
]  # fmt: skip
