"""caption_qa on real-looking bad answers, with the real all-MiniLM-L6-v2 for faithfulness."""

import os

import pytest

from vidsift.pipeline.stages.caption_qa import (
    CaptionQa,
    CaptionQaConfig,
    json_flags,
    repetition,
    strip_boilerplate,
    text_flags,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VLM = (
    "A golden retriever runs along a sandy beach at sunset, splashing through shallow waves. The dog "
    "carries a red ball in its mouth and turns back toward the camera. The camera tracks the dog from a "
    "low angle, handheld, with warm orange backlight and long shadows on the wet sand. Realistic live "
    "action footage with shallow depth of field."
)
FAITHFUL = (
    "At sunset a golden retriever bounds along the wet sand of a beach, kicking up spray as it splashes "
    "through the shallow waves with a bright red ball held in its mouth. It wheels around and trots back "
    "toward the camera. Filmed handheld from a low angle, the camera tracks the running dog while warm "
    "orange backlight rims its fur and stretches long shadows across the glistening sand. Realistic live "
    "action footage with a shallow depth of field."
)
OTHER_SUBJECT = (
    "A crowded night market in Bangkok glows with neon signs as vendors fry noodles in huge woks. Tourists "
    "squeeze between stalls selling silk scarves and grilled skewers. The camera floats above the crowd on "
    "a drone, revealing the maze of tin roofs and a river crowded with long-tail boats under a full moon."
)
INVENTED_SENTENCE = FAITHFUL + " Suddenly a red sports car explodes in a fireball on the city street behind."
FIELDS = {
    "caption_subject": "a golden retriever with a red ball",
    "caption_action": "running through shallow waves, turning back",
    "caption_scene": "a sandy beach at sunset",
    "caption_camera": "low angle, handheld tracking shot",
    "caption_style": "realistic live action",
    "caption_lighting": "warm orange backlight",
}
SHORT = "A golden retriever runs on a beach at sunset with a red ball."


@pytest.fixture(scope="module")
def qa():
    return CaptionQa(CaptionQaConfig(on_vlm_fail="reject", on_expand_fail="fallback"))


def row(**kw):
    return {"caption_vlm": VLM, "caption": FAITHFUL, "caption_short": SHORT, **FIELDS, **kw}


def test_boilerplate_openings_are_stripped():
    for text in (
        "The video shows a dog running on a beach.",
        "In this video, a dog running on a beach.",
        "Sure! Here is a detailed description of the video: The clip depicts a dog running on a beach.",
        "This clip features a dog running on a beach.",
    ):
        out, stripped = strip_boilerplate(text)
        assert stripped, text
        assert out.startswith("A dog running on a beach"), out
    assert strip_boilerplate("A dog runs on a beach.") == ("A dog runs on a beach.", False)


@pytest.mark.parametrize(
    "text, flag",
    [
        ("", "vlm_empty"),
        ("   \n", "vlm_empty"),
        ("I'm sorry, but I can't describe this video because no video was provided.", "vlm_refusal"),
        (
            "As an AI language model, I am unable to view videos. Please describe the clip to me instead.",
            "vlm_refusal",
        ),
        (
            "A dog runs on the beach. " + "The dog runs on the beach and the dog runs on the beach " * 12,
            "vlm_repetitive",
        ),
        ("A dog.", "vlm_too_short"),
        (
            "A golden retriever runs along a sandy beach at sunset, splashing through shallow waves while",
            "vlm_truncated",
        ),
    ],
)
def test_bad_vlm_answers_are_flagged(text, flag):
    assert flag in text_flags("vlm", text, 8, 400, 0.3)


def test_a_good_answer_has_no_flags():
    assert text_flags("vlm", VLM, 8, 400, 0.3) == []
    assert text_flags("expand", FAITHFUL, 20, 500, 0.3) == []
    assert repetition(VLM) < 0.1 < 0.5 < repetition("go go go go go go go go go go go go")


def test_json_fields_must_all_be_present_and_real():
    assert json_flags({f[len("caption_") :]: v for f, v in FIELDS.items()}) == []
    assert json_flags({}) == ["json_invalid"]
    broken = {f[len("caption_") :]: v for f, v in FIELDS.items()} | {"camera": ""}
    assert json_flags(broken) == ["json_invalid"]


def test_faithful_expansion_passes(qa):
    out = qa.check(row(caption="The video shows " + FAITHFUL[0].lower() + FAITHFUL[1:]))
    assert not out.get("reject_reason")
    assert out["caption_source"] == "expand"
    assert out["caption"].startswith("At sunset a golden retriever")
    assert out["caption_faithfulness"] > 0.8
    assert "expand_boilerplate_stripped" in out["caption_qa_flags"]
    assert not [f for f in out["caption_qa_flags"] if f.startswith(("expand_un", "caption_fallback"))]


def test_expansion_with_another_subject_falls_back_to_the_vlm_caption(qa):
    out = qa.check(row(caption=OTHER_SUBJECT))
    assert out["caption_faithfulness"] < 0.45  # MiniLM: 0.34 for this pair
    assert "expand_unfaithful" in out["caption_qa_flags"]
    assert "caption_fallback_vlm" in out["caption_qa_flags"]
    assert out["caption"] == VLM and out["caption_source"] == "vlm"


def test_one_invented_sentence_is_caught(qa):
    out = qa.check(row(caption=INVENTED_SENTENCE))
    assert out["caption_faithfulness"] > 0.6  # the whole still reads close to the VLM caption ...
    assert "expand_unsupported" in out["caption_qa_flags"]  # ... but one sentence matches nothing
    assert out["caption_source"] == "vlm"


def test_expansion_can_reject_instead_of_falling_back():
    strict = CaptionQa(CaptionQaConfig(on_expand_fail="reject"))
    out = strict.check(row(caption="I'm sorry, I cannot help with that request."))
    assert out["reject_stage"] == "caption_qa"
    assert out["reject_reason"] == "caption_expand_failed_qa"
    assert "expand_refusal" in out["reject_detail"]


def test_bad_vlm_caption_or_json_rejects_or_is_kept_by_recipe(qa):
    loop = "A red car. " + "The red car drives the red car drives " * 20
    out = qa.check(row(caption_vlm=loop))
    assert out["reject_reason"] == "caption_vlm_failed_qa" and "vlm_repetitive" in out["reject_detail"]
    out = qa.check(row(caption_subject=None, caption_json="{not json"))
    assert out["reject_reason"] == "caption_vlm_failed_qa" and "json_invalid" in out["reject_detail"]
    keep = CaptionQa(CaptionQaConfig(on_vlm_fail="keep"))
    out = keep.check(row(caption_vlm=loop, caption="", caption_short="I'm sorry, I can't help with that."))
    assert not out.get("reject_reason")
    assert {
        "vlm_repetitive",
        "expand_empty",
        "caption_fallback_vlm",
        "short_refusal",
        "short_fallback_vlm",
    } <= set(out["caption_qa_flags"])
    assert out["caption"] == out["caption_short"] == "A red car."  # the loop was cut off mid-sentence


def test_truncated_expansion_is_cut_back_to_its_last_sentence(qa):
    out = qa.check(row(caption=FAITHFUL + " The dog then leaps over a"))
    assert out["caption"].endswith("shallow depth of field.")
    assert "expand_truncated" in out["caption_qa_flags"]
    assert out["caption_source"] == "expand"


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="caption_qa.on_expand_fail"):
        CaptionQaConfig(on_expand_fail="drop")
    with pytest.raises(ValueError, match="caption_qa.max_repetition"):
        CaptionQaConfig(max_repetition=0)
