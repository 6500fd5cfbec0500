"""The base model for the embedded world: a tiny Qwen2 trained from scratch, standing in for R1-Distill.

The paper starts from DeepSeek-R1-Distill-Qwen-7B, which can reason in `<think>` and, given the tool's
instructions in its prompt, write a search call and read what comes back, but was never trained to
decide when to. Our stand-in cannot follow instructions, so it learns those abilities from the world's
base text (data/build.py, base.jsonl; data/README.md): the pages of the KNOWN entities (its parametric
knowledge; unknown entities it never sees), reasoning traces that answer questions about known entities
from memory, and tool-use traces from parallel worlds (names it never meets again) that search every fact
and read it out of the result. Only copying can predict what such a trace reads, so the model learns to
read; `python probe.py --ckpt runs/base --copy 300 --split dev` measures it, relation by relation. When to
act is what SFT stage 1 then teaches.

    python pretrain.py                              # the embedded world's base model (runs/world -> runs/base)
    python pretrain.py --resume                     # continue from runs/base/latest
    torchrun --nproc_per_node 2 pretrain.py         # FSDP2 data parallel (gloo on CPU)

The tokenizer is a byte-level BPE trained here with `tokenizers` on the world's text, with the R1-Distill
special tokens and the trajectory tags as single added tokens (the real R1 tokenizer spells the tags out
in several tokens; the sampler handles both). Output: runs/base/step_N in HF layout + tokenizer.json.
"""
import argparse
import os
import random

import torch
from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

import checkpoints
import common
import env
from model import Qwen2, Qwen2Config
from tokenizer import ASSISTANT, BOS, END_THINK, EOS, THINK, USER, Tokenizer, chat_prompt

# -----------------------------------------------------------------------------
# the world's tokenizer and its training windows


def train_tokenizer(data, texts, vocab_size):
    """Byte-level BPE on the world's own text (corpus pages + base text), so every name is cheap to spell."""
    corpus = [r["contents"] for r in common.read_jsonl(os.path.join(data, "corpus.jsonl"))]
    tk = HFTokenizer(models.BPE())
    # digits two by two, the space joined to the first pair (" 18", "50"): a year is copied like a two-word name
    # (RESULTS.md, "Why the base text looks the way it does")
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r" ?\d\d| ?\d"), "isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tk.decoder = decoders.ByteLevel()
    specials = [EOS, BOS, USER, ASSISTANT]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus + texts, trainer)
    tags = env.TAGS
    tk.add_tokens([AddedToken(t, normalized=False) for t in (THINK, END_THINK, tags.search_open, tags.search_close,
                                                           tags.result_open, tags.result_close)])
    return Tokenizer(tk)


def pack(encoded, L, pad_id, seed=0):
    """encoded: [(ids, mask)] per text (mask 1 where the token is trained). Whole texts packed into windows of L tokens, first fit in decreasing length; the rest of a window is
    padding, masked out of the loss. A text that fits a window is never cut in two, so a tool-use trace's
    "The search result says that ..." line always has its search result in the same window and copying
    the value is what lowers the loss (a stream cut at fixed offsets starts windows between a result and
    its reading, where only guessing the value can). The texts of a window are then put in a seeded random
    order: in decreasing order the short texts (pages, recall traces) would never start a window, and a
    prompt that starts the context, as at run time, would look like none of them. A text longer than a
    window is cut into window-sized pieces (the default window holds every text of the embedded world).
    Returns (windows, masks), (n_windows, L) each: each text's mask where it lies, 0 over the padding."""
    pieces = [(ids[k:k + L], m[k:k + L]) for ids, m in encoded for k in range(0, len(ids), L)]
    bins, free = [], []  # the pieces in each window and the room left in it
    for piece in sorted(pieces, key=lambda p: len(p[0]), reverse=True):
        b = next((j for j, room in enumerate(free) if room >= len(piece[0])), None)
        if b is None:
            bins.append([]), free.append(L)
            b = len(bins) - 1
        bins[b].append(piece)
        free[b] -= len(piece[0])
    rng = random.Random(seed)
    windows = torch.full((len(bins), L), pad_id)
    masks = torch.zeros((len(bins), L), dtype=torch.long)
    for j, texts in enumerate(bins):
        rng.shuffle(texts)
        ids = [t for text, _ in texts for t in text]
        windows[j, :len(ids)] = torch.tensor(ids)
        masks[j, :len(ids)] = torch.tensor([t for _, m in texts for t in m])
    return windows, masks


def main():
    # -------------------------------------------------------------------------
    # arguments
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    common.add_common_args(ap, out="runs/base", lr=3e-3, steps=2000, batch_size=8)
    ap.add_argument("--vocab-size", type=int, default=4096,
                    help="BPE vocabulary size cap; large enough that every word of an entity's name is one token")
    ap.add_argument("--hidden", type=int, default=128, help="hidden size")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers")
    ap.add_argument("--heads", type=int, default=4, help="query heads")
    ap.add_argument("--kv-heads", type=int, default=2, help="key/value heads (grouped-query attention)")
    ap.add_argument("--intermediate", type=int, default=384, help="MLP hidden size")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per training window (whole texts packed into it)")
    ap.add_argument("--decay", type=float, default=0.2,
                    help="share of the steps, at the end, over which the lr decays (cosine, to 10%%); until then it "
                         "holds at the peak (1: cosine over the whole run)")
    ap.set_defaults(warmup=30, weight_decay=0.1, save_every=250)
    args = ap.parse_args()

    # -------------------------------------------------------------------------
    # device, dtype, distributed
    run = common.Run(args)
    checkpoints.claim_out(run, args)

    # -------------------------------------------------------------------------
    # data: base text, rendered as documents and as chat-format reasoning traces
    checkpoints.ensure(args.data, run)
    rows = common.read_jsonl(os.path.join(args.data, "base.jsonl"), common.BASE_ROWS)
    for i, r in enumerate(rows):
        if r.get("response") is not None and r.get("question") is None:
            raise ValueError(f"{rows.where(i)}: a reasoning trace ('response') needs its 'question'")
    # reasoning and tool-use traces: the same chat frame as at run time, with the tool's instruction where
    # the row says so (tool-use traces; data/README.md)
    texts = [chat_prompt(r["question"], env.INSTRUCTION if r.get("instruction") else "") + r["response"]
             if r.get("response") is not None else r["text"] for r in rows]


    # -------------------------------------------------------------------------
    # model + tokenizer
    state = None
    if args.resume or args.init:  # continue a run, or keep pretraining a given checkpoint
        path, state = checkpoints.resume_or_init(run, args, default_init=None)
        model, tok = common.load_model(path, run, args.grad_checkpointing)
    else:
        tok = train_tokenizer(args.data, texts, args.vocab_size)
        cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
                          num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                          rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=4096,
                          bos_token_id=tok.token_id(BOS), eos_token_id=tok.eos_id)
        os.makedirs(args.out, exist_ok=True)
        init_dir = os.path.join(args.out, "init")  # saved once so every rank (and FSDP) loads the same weights
        if run.master:
            # in the compute dtype, which becomes config.json's torch_dtype and so the dtype every checkpoint
            # of this model is exported in (the masters stay fp32 in train_state/)
            Qwen2(cfg).init_weights(seed=args.seed).to(run.dtype).save_pretrained(init_dir)
            tok.save(os.path.join(init_dir, "tokenizer.json"))
        if run.distributed:
            torch.distributed.barrier()
        model, tok = common.load_model(init_dir, run, args.grad_checkpointing)
    model.train()

    # whole texts, each ending with end-of-sentence, packed into windows of seq_len + 1 tokens
    encoded = []
    for r, text in zip(rows, texts):
        if r.get("segments"):  # a tool-use trace: the tool's text (what only the tool knows) gets no loss, as in
            ids = tok.encode(chat_prompt(r["question"], env.INSTRUCTION))  # SFT stage 2
            mask = [1] * len(ids)
            for seg in r["segments"]:
                t = tok.encode(seg["text"])
                ids += t
                mask += [0 if seg["tool"] else 1] * len(t)
        else:
            ids = tok.encode(text)
            mask = [1] * len(ids)
        encoded.append((ids + [tok.eos_id], mask + [1]))
    windows, masks = pack(encoded, args.seq_len + 1, tok.eos_id, args.seed)  # (n_windows, seq_len + 1)
    n_tok = sum(len(i) for i, _ in encoded)
    run.print(f"[data] {len(encoded)} texts, {n_tok / 1e6:.2f}M tokens, {len(windows)} windows of {args.seq_len} "
              f"({n_tok / windows.numel():.0%} filled), {args.steps * args.batch_size / len(windows):.1f} epochs")

    # -------------------------------------------------------------------------
    # loss: next-token NLL over every token of the texts (not the padding)


    def loss_fn(batch, mask):
        lp, m = common.sequence_logprobs(model, batch, mask, run.device)
        n_tok = run.all_sum(m.sum().item())
        return -lp.sum() / n_tok * run.world, -run.all_sum(lp.sum().item()) / n_tok  # (grad, logged) loss


    # -------------------------------------------------------------------------
    # optimizer + schedule
    opt = common.make_optimizer(model, args)
    start = checkpoints.restore(model, opt, state) if state else 0

    # -------------------------------------------------------------------------
    # loop
    metrics = common.Metrics(run, args.out, args.steps, start, "pretrain")
    for step in range(start, args.steps):
        idx = run.shard(common.epoch_order(len(windows), step, args.batch_size, args.seed))
        loss, logged = loss_fn(windows[idx], masks[idx])
        checkpoints.check_finite(logged, step, args.out)
        loss.backward()
        gnorm = common.clip_and_step(model, opt, step, args)
        metrics.tick()
        if step % args.log_every == 0 or step == args.steps - 1:
            metrics.log(step, loss=logged, lr=common.lr_at(step, args), grad_norm=gnorm)
        # ---------------------------------------------------------------------
        # save
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            checkpoints.save_checkpoint(run, args.out, step + 1, model, tok, opt, args)
    metrics.close()
    run.print(f"[done] {checkpoints.latest_checkpoint(args.out)}")
    run.close()


if __name__ == "__main__":
    main()
