"""``tunesmith verify-export <folder|file.gguf>``: the exported model is prompted as it was trained.

Renders a set of conversations (tunesmith's shipped corpus of 43 chats with tools, tool
results, parallel calls, reasoning, system prompts and many turns, or ``--conversations``
JSONL in the OpenAI layout, ``{"messages": [...], "tools"?: [...]}`` per line) and compares:

* a Hugging Face folder: tunesmith's tokenizer (``HuggingFaceModelTokenizer`` with the
  template the run trained with: ``--template``, else ``tokenizer_config.json``'s
  ``chat_template``, else ``chat_template.jinja``) against ``transformers``'
  ``AutoTokenizer.apply_chat_template`` on the folder (which reads ``chat_template.jinja``
  first), token for token; and that ``generation_config.json`` stops at the token that ends
  an assistant turn and at the tokenizer's EOS;
* a ``.gguf`` file: its embedded template rendered by ``llama-cpp-python``'s Jinja chat
  formatter (or jinja2, with a note, when it is not installed) and encoded with the GGUF's
  vocabulary, against tunesmith on ``--reference`` (the HF folder it was exported from;
  default: the GGUF's own folder when it holds a tokenizer.json); and that the GGUF's EOS /
  EOT ids are the reference's end-of-turn and EOS tokens.

Exit 0 when everything is identical, 1 with a precise diff otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "cmd_verify_export", "verify_folder", "verify_gguf"]

Render = Callable[[dict[str, Any]], list[int]]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify-export",
        help="check an exported folder / GGUF renders prompts and stops as training did",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="a saved Hugging Face folder or a .gguf file")
    p.add_argument("--conversations", help="JSONL of conversations (default: the shipped corpus)")
    p.add_argument("--template", help="the chat template the run trained with (a .jinja file)")
    p.add_argument("--reference", help="for a .gguf: the HF folder it was exported from")
    p.set_defaults(func=cmd_verify_export)


def _user_error(message: str) -> Exception:
    from tunesmith.config._errors import UserError

    return UserError(message)


def load_conversations(path: str | None) -> list[dict[str, Any]]:
    """Rows ``{"id"?, "messages", "tools"?}`` from a JSONL file (default: the corpus)."""
    import tunesmith.data

    file = Path(path) if path else Path(tunesmith.data.__file__).with_name("chat_corpus.jsonl")
    if not file.is_file():
        raise _user_error(f"--conversations {file} does not exist: give a JSONL file")
    rows = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise _user_error(f"{file} line {n} is not JSON ({e.msg}): one row per line") from None
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise _user_error(f"{file} line {n}: expected {{'messages': [...], 'tools'?: [...]}}")
        row.setdefault("id", f"line {n}")
        rows.append(row)
    return rows


def _tunesmith_ids(tok: Any) -> Render:
    from tunesmith.data import OpenAIToMessages

    def render(row: dict[str, Any]) -> list[int]:
        sample = OpenAIToMessages(train_on_input=True)(row)
        return list(tok.tokenize_messages(sample["messages"], tools=sample.get("tools"))[0])

    return render


def _describe(decode: Callable[[list[int]], str], ids: list[int], at: int) -> str:
    return repr(decode(ids[max(0, at - 8) : at + 8]))


def compare(
    rows: list[dict[str, Any]],
    a: tuple[str, Render],
    b: tuple[str, Render],
    decode: Callable[[list[int]], str],
) -> list[str]:
    """One line per conversation whose ids differ (or that only one side refuses)."""
    problems = []
    for row in rows:
        out = []
        for _, render in (a, b):
            try:
                out.append(render(row))
            except Exception as e:  # a template refusal is a result to compare too
                out.append(f"refused: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        x, y = out
        if x == y:
            continue
        if isinstance(x, str) or isinstance(y, str):
            problems.append(
                f"conversation {row['id']!r}: {a[0]} {x if isinstance(x, str) else 'renders it'}; {b[0]} {y if isinstance(y, str) else 'renders it'}"
            )
            continue
        at = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        problems.append(
            f"conversation {row['id']!r}: token {at} differs ({len(x)} vs {len(y)} tokens): "
            f"{a[0]} {_describe(decode, x, at)} vs {b[0]} {_describe(decode, y, at)}"
        )
    return problems


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _end_of_turn(tok: Any) -> int | None:
    """The first special token after an assistant answer, as the template renders it."""
    from tunesmith.data import Message

    turn = [Message("user", "Hi", masked=True), Message("assistant", "Hello there")]
    tokens, mask = tok.tokenize_messages(turn)
    specials = set(tok.special_tokens.values())
    trained = [t for t, m in zip(tokens, mask) if not m]
    return next((t for t in reversed(trained) if t in specials), None)


def _training_template(folder: Path, template: str | None) -> str:
    if template:
        file = Path(template)
        if not file.is_file():
            raise _user_error(f"--template {file} does not exist: give the .jinja file")
        return file.read_text(encoding="utf-8")
    config = _read_json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(config, str):
        return config
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    raise _user_error(f"{folder} has no chat template (chat_template.jinja / tokenizer_config)")


def _folder_tokenizer(folder: Path, template: str | None) -> Any:
    from tunesmith.data.tokenizers import HuggingFaceModelTokenizer

    if not (folder / "tokenizer.json").is_file():
        raise _user_error(f"{folder} has no tokenizer.json: give a saved Hugging Face folder")
    config = folder / "tokenizer_config.json"
    gen = folder / "generation_config.json"
    return HuggingFaceModelTokenizer(
        folder / "tokenizer.json",
        tokenizer_config_json_path=config if config.is_file() else None,
        generation_config_path=gen if gen.is_file() else None,
        chat_template=_training_template(folder, template),
    )


def verify_folder(
    folder: str | Path, rows: list[dict[str, Any]], template: str | None = None
) -> list[str]:
    """Problems (empty: identical) of a saved HF folder; see the module doc."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    ours = _folder_tokenizer(folder, template)
    hf = AutoTokenizer.from_pretrained(str(folder))

    def transformers_ids(row: dict[str, Any]) -> list[int]:
        out = hf.apply_chat_template(
            row["messages"], tools=row.get("tools"), tokenize=True, return_dict=True
        )
        return list(out["input_ids"])

    problems = compare(
        rows, ("tunesmith", _tunesmith_ids(ours)), ("transformers", transformers_ids), hf.decode
    )
    gen = _read_json(folder / "generation_config.json")
    config = _read_json(folder / "config.json")
    stops = _ids(gen.get("eos_token_id", config.get("eos_token_id")))
    where = "generation_config.json" if gen else "config.json"
    eot = _end_of_turn(ours)
    if eot is not None and eot not in stops:
        problems.append(
            f"the template ends an assistant turn with {hf.convert_ids_to_tokens(eot)!r} "
            f"(id {eot}) but {where} eos_token_id {stops} does not stop there: "
            "generation would run past the answer"
        )
    if hf.eos_token_id is not None and stops and hf.eos_token_id not in stops:
        problems.append(
            f"tokenizer eos_token {hf.eos_token!r} (id {hf.eos_token_id}) is not in "
            f"{where} eos_token_id {stops}"
        )
    return problems


def _gguf_renderer(metadata: dict[str, Any], notes: list[str]) -> Callable[..., str]:
    tokens = metadata["tokenizer.ggml.tokens"]

    def token(key: str) -> str:
        idx = metadata.get(key)
        return "" if idx is None else str(tokens[int(idx)])

    template = str(metadata["tokenizer.chat_template"])
    bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
    try:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    except ImportError:
        notes.append(
            "llama-cpp-python is not installed: the GGUF's template is rendered with jinja2 "
            "(pip install llama-cpp-python to use llama.cpp's chat formatter)"
        )
        from tunesmith.data.tokenizers import compile_chat_template

        compiled = compile_chat_template(template)
        return lambda messages, tools: compiled.render(
            messages=messages,
            tools=tools,
            add_generation_prompt=False,
            bos_token=bos,
            eos_token=eos,
        )
    formatter = Jinja2ChatFormatter(  # whole conversations: no trailing generation prompt
        template=template, eos_token=eos, bos_token=bos, add_generation_prompt=False
    )
    return lambda messages, tools: formatter(messages=messages, tools=tools).prompt


def verify_gguf(
    path: str | Path, rows: list[dict[str, Any]], reference: str | Path | None = None
) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` of a GGUF against its reference HF folder; see the module doc."""
    from tunesmith.data import OpenAIToMessages
    from tunesmith.models.gguf import gguf_tokenizer, read_gguf

    path = Path(path)
    if not path.is_file():
        raise _user_error(f"{path} does not exist")
    folder = Path(reference) if reference else path.parent
    if not (folder / "tokenizer.json").is_file():
        raise _user_error(
            f"no reference folder for {path.name}: pass --reference <the HF folder it was "
            "exported from>"
        )
    _, metadata = read_gguf(path)
    if "tokenizer.chat_template" not in metadata:
        return [f"{path.name} embeds no chat template (tokenizer.chat_template)"], []
    notes: list[str] = []
    render = _gguf_renderer(metadata, notes)
    vocab = gguf_tokenizer(metadata)

    def gguf_ids(row: dict[str, Any]) -> list[int]:
        sample = OpenAIToMessages()(row)
        messages = [m.template_dict() for m in sample["messages"]]
        text = render(messages, sample.get("tools"))
        return list(vocab.encode(text, add_special_tokens=False).ids)

    ours = _folder_tokenizer(folder, None)
    problems = compare(rows, ("tunesmith", _tunesmith_ids(ours)), ("gguf", gguf_ids), ours.decode)
    ends = _ids(metadata.get("tokenizer.ggml.eos_token_id"))
    ends += _ids(metadata.get("tokenizer.ggml.eot_token_id"))
    eot = _end_of_turn(ours)
    if eot is not None and eot not in ends:
        problems.append(
            f"the template ends an assistant turn with id {eot} but the GGUF's eos/eot ids "
            f"{ends} do not stop there: llama.cpp would run past the answer"
        )
    if ours.eos_id not in ends:
        problems.append(
            f"the GGUF's eos/eot ids {ends} do not include the tokenizer's EOS {ours.eos_id}"
        )
    return problems, notes


def cmd_verify_export(args: argparse.Namespace) -> int:
    import sys

    rows = load_conversations(args.conversations)
    path = Path(args.path)
    if path.suffix == ".gguf":
        problems, notes = verify_gguf(path, rows, args.reference)
    elif path.is_dir():
        problems, notes = verify_folder(path, rows, args.template), []
    else:
        raise _user_error(f"{path} is neither a folder nor a .gguf file")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if problems:
        print(f"{path}: {len(problems)} difference(s) over {len(rows)} conversations:")
        for line in problems:
            print(f"  {line}")
        return 1
    print(f"{path}: identical on {len(rows)} conversations (tokens, end-of-turn and EOS)")
    return 0
