from __future__ import annotations

from ml_playground.experiments.shakespeare.corpus import bundled_text, play_to_text

PLAY = "\n".join(
    [
        "# Macbeth",
        "",
        "## ACT I",
        "",
        "## SCENE I. A desert place.",
        "",
        "_Thunder and lightning. Enter three Witches_",
        "",
        "**First Witch**  ",
        "When shall we three meet again  ",
        "In thunder, lightning, or in rain?",
        "",
        "_Alarum within. Enter DUNCAN, MALCOLM, with Attendants,",
        "meeting a bleeding Sergeant_",
        "",
        "**Second Witch**  ",
        "__\\[Aside]_  ",
        "When the hurlyburly's done, \\--so  ",
        "When the battle's lost and won.",
        "",
        "*Exeunt lords.*",
        "",
        "And more from the second witch.",
        "",
    ]
)


def test_play_markdown_becomes_speaker_text() -> None:
    assert play_to_text(PLAY) == (
        "First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n\n"
        "Second Witch:\nWhen the hurlyburly's done, --so\nWhen the battle's lost and won.\n\n"
        "Second Witch:\nAnd more from the second witch.\n\n"
    )


def test_bundled_corpus_is_all_plays_as_plain_text() -> None:
    text = bundled_text()
    assert len(text) > 4_000_000
    assert "HAMLET:\nTo be, or not to be" in text
    for markup in ("**", "##", "_[", "\\["):
        assert markup not in text
