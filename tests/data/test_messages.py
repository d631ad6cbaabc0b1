"""Messages and message transforms: structure, masking and row errors."""

from __future__ import annotations

import json

import pytest

from tunesmith.data import (
    AlpacaToMessages,
    ChosenRejectedToMessages,
    DataRowError,
    InputOutputToMessages,
    Message,
    OpenAIToMessages,
    ShareGPTToMessages,
    validate_messages,
)


def test_message_content_parts_and_text() -> None:
    m = Message("user", [{"type": "image", "content": "img"}, {"type": "text", "content": "hi"}])
    assert m.text_content == "hi"
    assert m.contains_media and m.get_media() == ["img"]
    m2 = Message.from_dict({"role": "assistant", "content": "ok", "masked": True})
    assert m2.content == [{"type": "text", "content": "ok"}]
    assert m2.masked and not m2.ipython and m2.eot
    with pytest.raises(ValueError, match="role"):
        Message("robot", "x")


def test_validate_messages_order() -> None:
    validate_messages([Message("system", "s"), Message("user", "u"), Message("assistant", "a")])
    with pytest.raises(ValueError, match="index 2"):
        validate_messages([Message("user", "u"), Message("assistant", "a"), Message("system", "s")])
    with pytest.raises(ValueError, match="consecutive"):
        validate_messages([Message("user", "u"), Message("user", "a")])


def test_input_output_masks_and_system_prompt() -> None:
    t = InputOutputToMessages(column_map={"input": "q", "output": "a"}, new_system_prompt="be nice")
    msgs = t({"q": "what?", "a": "that."})["messages"]
    assert [(m.role, m.text_content, m.masked) for m in msgs] == [
        ("system", "be nice", True),
        ("user", "what?", True),
        ("assistant", "that.", False),
    ]
    msgs = InputOutputToMessages(train_on_input=True)({"input": "x", "output": "y"})["messages"]
    assert [m.masked for m in msgs] == [False, False]


@pytest.mark.parametrize(
    "row, column, match",
    [
        ({"input": "x"}, "output", "missing column"),
        ({"input": None, "output": "y"}, "input", "null"),
        ({"input": 3, "output": "y"}, "input", "string"),
    ],
)
def test_input_output_row_errors(row: dict, column: str, match: str) -> None:
    with pytest.raises(DataRowError, match=match) as info:
        InputOutputToMessages()(row)
    assert info.value.column == column
    err = info.value.with_row_index(7)
    assert "row 7" in str(err) and f"column '{column}'" in str(err)
    assert isinstance(err, ValueError)


def test_unknown_column_map_key() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        InputOutputToMessages(column_map={"prompt": "q"})


def test_alpaca_prompt_matches_torchtune(assets) -> None:
    rows = json.loads((assets / "torchtune_tests" / "alpaca_tiny.json").read_text())
    msgs = AlpacaToMessages(train_on_input=False)(rows[0])["messages"]
    assert msgs[0].text_content.startswith("Below is an instruction that describes a task")
    assert msgs[0].text_content.endswith("### Response:\n")
    assert msgs[1].text_content == rows[0]["output"]
    assert [m.masked for m in msgs] == [True, False]
    no_input = AlpacaToMessages()({"instruction": "Say hi.", "output": "hi"})["messages"]
    assert no_input[0].text_content == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )
    assert not no_input[0].masked  # torchtune's default trains on the input


def test_sharegpt_chat_tiny(assets) -> None:
    rows = json.loads((assets / "torchtune_tests" / "chat_tiny.json").read_text())
    msgs = ShareGPTToMessages()(rows[0])["messages"]
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert [m.masked for m in msgs] == [True, True, False, True, False]
    assert msgs[1].text_content == "What is the meaning of life?"
    msgs = ShareGPTToMessages(new_system_prompt="new")(rows[0])["messages"]
    assert msgs[0].text_content == "new" and sum(m.role == "system" for m in msgs) == 1
    bad = {"conversations": [{"from": "human", "value": ["x"]}]}
    with pytest.raises(DataRowError, match="message 0") as info:
        ShareGPTToMessages()(bad)
    assert info.value.column == "conversations"
    with pytest.raises(DataRowError, match="'from'"):
        ShareGPTToMessages()({"conversations": [{"from": "bot", "value": "x"}]})


def test_sharegpt_image(assets) -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "<image>What is it?"},
            {"from": "gpt", "value": "A dog."},
        ],
        "image": "dog_on_skateboard.jpg",
    }
    msgs = ShareGPTToMessages(image_dir=assets / "torchtune_tests")(row)["messages"]
    assert msgs[0].contains_media and msgs[0].text_content == "What is it?"
    assert msgs[0].get_media()[0].size[0] > 0


def test_openai_and_chosen_rejected(assets) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "q1"}]},
            {"role": "assistant", "content": "a1"},
        ]
    }
    msgs = OpenAIToMessages()(row)["messages"]
    assert [(m.role, m.text_content, m.masked) for m in msgs] == [
        ("system", "s", True),
        ("user", "q1", True),
        ("assistant", "a1", False),
    ]
    with pytest.raises(DataRowError, match="null") as info:
        OpenAIToMessages()({"messages": [{"role": "user", "content": None}]})
    assert info.value.column == "messages"
    rows = json.loads((assets / "torchtune_tests" / "hh_rlhf_tiny.json").read_text())
    out = ChosenRejectedToMessages()(rows[0])
    assert out["chosen"][-1].text_content == "Fix the hole."
    assert out["rejected"][-1].text_content == "Take them off."
    assert [m.masked for m in out["chosen"]] == [True, False]
    with pytest.raises(DataRowError) as info:
        ChosenRejectedToMessages()({"chosen": [{"role": "user", "content": 5}], "rejected": []})
    assert info.value.column == "chosen"


def test_input_output_image(assets) -> None:
    row = {"input": "What is it?", "output": "A dog.", "image": "dog_on_skateboard.jpg"}
    text_only = InputOutputToMessages()(row)["messages"]
    assert not text_only[0].contains_media
    msgs = InputOutputToMessages(image_dir=assets / "torchtune_tests")(row)["messages"]
    assert msgs[0].contains_media and msgs[0].text_content == "What is it?"
    with pytest.raises(DataRowError, match="does not exist") as info:
        InputOutputToMessages(image_dir=assets)(row)
    assert info.value.column == "image"
    pil = msgs[0].get_media()[0]
    msgs = InputOutputToMessages()({**row, "image": pil})["messages"]  # an image object
    assert msgs[0].get_media() == [pil]


def test_image_dir_needs_an_image_column_in_column_map(tmp_path) -> None:
    with pytest.raises(ValueError, match="Please specify an 'image' key in column_map"):
        InputOutputToMessages(column_map={"input": "q", "output": "a"}, image_dir=tmp_path)
    InputOutputToMessages(
        column_map={"input": "q", "output": "a", "image": "i"}, image_dir=tmp_path
    )


def test_message_repr_is_torchtune_s() -> None:
    assert repr(Message(role="user", content="hi")) == "Message(role='user', content=['hi'])"
    assert repr(Message(role="assistant", content="x", masked=True, eot=False)) == (
        "Message(role='assistant', content=['x'], masked=True, eot=False)"
    )
