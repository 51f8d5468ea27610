"""The Data tab's preview (issue 25, item 11): the tokens-per-example histogram drawn as text bins in numeric order
(also before any dataset), and the sample paged through the rows."""

import json


def test_histogram_bins_are_text_in_numeric_order(tmp_path, tiny_llama):
    import gradio as gr

    from ui import data_tab

    path = tmp_path / "lengths.jsonl"
    rows = [{"instruction": "Say it.", "output": " ".join(["word"] * n)} for n in (1, 5, 20, 60, 150, 300)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, _, _, hist = data_tab.inspect(str(path), str(tiny_llama), "", "auto", 4096)
    labels = list(hist["tokens"])
    starts = [int(label.split("-")[0]) for label in labels]
    assert len(starts) == 10 and starts == sorted(starts) and labels == sorted(labels)  # as numbers and as text
    assert hist["rows"].sum() == 6
    plot = gr.BarPlot(data_tab.EMPTY_HIST, x="tokens", y="rows")
    assert plot.postprocess(data_tab.EMPTY_HIST).datatypes["tokens"] == "nominal"  # as the filled plot's


def test_preview_pages_through_rows(tiny_llama, identity_file):
    from conftest import IDENTITY_QUESTIONS

    from ui import data_tab

    for row in (1, 3, len(IDENTITY_QUESTIONS)):
        _, summary, sample, _ = data_tab.inspect(
            str(identity_file), str(tiny_llama), "", "auto", 1024, "", "train", row
        )
        assert f"showing example {row} of {len(IDENTITY_QUESTIONS)}" in summary
        assert IDENTITY_QUESTIONS[row - 1] in "".join(text for text, _ in sample)
    _, summary, sample, _ = data_tab.inspect(str(identity_file), "", "", "auto", 1024, "", "train", 99)
    assert "showing example 6 of 6" in summary and IDENTITY_QUESTIONS[-1] in sample[0][0]


def test_a_blank_or_impossible_max_length_is_a_sentence(tiny_llama, identity_file):
    """Clearing the Max sequence length box (to type another number) raised a TypeError in the preview: four red
    "Error" badges over the Data tab. 0 or -5 previewed every row as "longer than -5 tokens". Each is now the Train
    tab's sentence, with the dataset kept in use."""
    from ui import data_tab

    for typed, said in (
        (None, "Max sequence length is empty; enter a number."),
        (0, "Max sequence length must be a whole number from 1 to 1,048,576; you entered 0."),
        (-5, "Max sequence length must be a whole number from 1 to 1,048,576; you entered -5."),
    ):
        used, summary, sample, hist = data_tab.inspect(str(identity_file), str(tiny_llama), "", "auto", typed)
        assert used == str(identity_file) and summary == f"**Not previewed:** {said}" and sample == []
        assert hist.empty


def test_a_dataset_that_is_not_chat_does_not_ask_for_the_model_already_picked(tiny_llama, tmp_path):
    """Raw text (or preference pairs, or prompts) with a model picked said "Pick a model in the Model tab to see the
    sample as the model sees it": the model was picked; token counts are drawn for chat examples only."""
    from ui import data_tab

    path = tmp_path / "notes.txt"
    path.write_text("Just some raw text.\nAnother line of text.\n")
    _, summary, sample, _ = data_tab.inspect(str(path), str(tiny_llama), "", "auto", 256)
    assert summary.startswith("**Format:** raw") and "Pick a model" not in summary, summary
    assert "shown as stored: the model's view and token counts are drawn for chat examples" in summary
    assert "Just some raw text." in sample[0][0]
    _, summary, _, _ = data_tab.inspect(str(path), "", "", "auto", 256)
    assert "Pick a model in the Model tab to see the sample" in summary  # none picked: that is the way


def test_the_preview_pages_by_example_in_a_jsonl_with_blank_lines(tmp_path):
    """Example N was the row on line N of a JSONL: with a blank line after each row, "showing example 2 of 3" showed
    the first and "example 3 of 3" the second, and the third showed only at example 5."""
    from engine.data import inspection

    path = tmp_path / "spaced.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n\n" for i in (1, 2, 3)))
    for row in (1, 2, 3):
        info = inspection.inspect(str(path), sample_row=row)
        assert (info["sample_row"], info["rows"]) == (row, 3)
        assert info["sample_messages"][0]["content"] == f"q{row}"


def test_a_jsonl_whose_first_row_is_not_on_line_1_previews(tmp_path):
    """A blank line before the first row made the preview say "row 2 is alpaca but earlier rows are auto; a file
    holds one format"; after 2,000 blank lines, with a format named, drawing the token lengths raised ValueError."""
    from tiny import make_tokenizer

    from engine.data import inspection

    path = tmp_path / "d.jsonl"
    row = json.dumps({"instruction": "Who are you?", "output": "I am Nova."}) + "\n"
    path.write_text("\n" + row)
    assert inspection.inspect(str(path))["format"] == "alpaca"
    path.write_text("\n" * 2500 + row)
    info = inspection.inspect(str(path), "alpaca", make_tokenizer())
    assert (info["rows"], info["columns"], info["token_lengths"]["rows_counted"]) == (1, ["instruction", "output"], 1)


def test_a_cleared_split_box_previews_the_split_training_uses(tmp_path):
    """Training reads split 'train' when the Split box is empty; the preview said "has no split ''"."""
    from ui import data_tab

    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"instruction": "Who are you?", "output": "I am Nova."}) + "\n")
    used, summary, _, _ = data_tab.inspect(str(folder), "", "", "auto", 256, "", "", 1)
    assert used == str(folder) and summary.startswith("**Format:** alpaca"), summary
