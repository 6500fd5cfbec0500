"""viewer.py: every token of the page is coloured by its writer exactly as the masks GRPO trains on say
(sample.Rollout.policy_mask / sim_obs_mask), on real- and sim-mode rollouts scripted as in test_sample.py."""
import html
import re

import pytest

import viewer
from env import TAGS, format_observation
from sample import sample
from test_sample import ACTION, RecordingTool, Script, prompts_of, tiny_model, make_tokenizer


def spans(page_html):
    """[(class, token ids, text)] of every token span of the page, in order."""
    return [(c, [int(i) for i in ids.split()], html.unescape(text)) for c, ids, text in
            re.findall(r'<span class="(\w)" title="([\d ]+)">(.*?)</span>', page_html, flags=re.S)]


@pytest.mark.parametrize("mode", ["real", "sim"])
def test_colours_follow_the_training_masks(mode):
    tok = make_tokenizer()
    model = tiny_model(tok.vocab_size)
    plan = {0: [(2, ACTION.format(0)), (3, ACTION.format(1)), (2, "\u00e9\u00e9 <&>"), (0, "\n")],
            1: [(4, ACTION.format(2)), (1, "é")]}
    tool = RecordingTool(lambda q: [{"contents": f"page about {q} <b>&amp;</b> é"}])
    rolls = sample(model, tok, prompts_of([3, 6]), tool=tool, mode=mode, greedy=True, max_new_tokens=300,
                   obs_max_tokens=80, logits_processor=Script(tok, plan, sim_close={0: 5, 1: 3}))
    items = [dict(viewer.token_fields(r), question=f"q{i}?", answers=["x"], prompt_ids=r.prompt, queries=r.queries)
             for i, r in enumerate(rolls)]
    page = viewer.page(items, tok)
    got = spans(page)
    want = []
    for r in rolls:
        want += [("u", t) for t in r.prompt]
        want += [({(1, 0): "p", (0, 0): "t", (0, 1): "s"}[(p, s)], t)
                 for t, p, s in zip(r.completion, r.policy_mask, r.sim_obs_mask)]
    assert [(c, t) for c, ids, _ in got for t in ids] == want  # every token, its writer, in order
    assert all(len(ids) == 1 or ids[0] >= 128 for _, ids, _ in got)  # joined only from a non-ASCII byte
    assert all(text == tok.decode(ids) for _, ids, text in got)  # no text lost, added or left unescaped
    kinds = {c for c, _, _ in got}
    assert kinds == ({"u", "p", "t", "s"} if mode == "sim" else {"u", "p", "t"})
    for q in (f"q{i}" for i in range(3)):
        assert f"<q>{q}</q>" in page
    assert "<b>&amp;</b>" not in page  # document text is escaped, never markup
    if mode == "real":
        assert format_observation(tool.docs("q0")) in "".join(t for c, _, t in got if c == "t")
        assert ("t", [0xC3, 0xA9], "é") in got  # a two-byte character: one span


def test_writers_round_trip_and_refuse_a_token_with_two_writers():
    assert viewer.writers([1, 1, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]) == "p2 t1 s1 t1 p1"
    assert viewer.expand("p2 t1 s1 t1 p1") == ["p", "p", "t", "s", "t", "p"]
    assert viewer.writers([], []) == ""
    with pytest.raises(ValueError, match="token 1"):
        viewer.writers([1, 1], [0, 1])
    tok = make_tokenizer()
    with pytest.raises(ValueError, match="item 0: writers cover 2 tokens"):
        viewer.page([{"completion_ids": [1], "writers": "p2", "question": "q", "answers": [], "prompt_ids": []}], tok)


def test_terminal_marks_without_colour():
    tok = make_tokenizer()

    class R:
        completion = tok.encode("ab") + tok.encode(f"{TAGS.result_open} x") + tok.encode("yz")
        policy_mask = [1, 1] + [0] * 3 + [0, 0]
        sim_obs_mask = [0, 0] + [0] * 3 + [1, 1]
    assert viewer.terminal(R, tok.decode, color=False) == f"ab[[tool:{TAGS.result_open} x]][[model-written:yz]]"
