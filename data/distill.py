"""SFT data for real questions, the paper's way: sample tool-using trajectories from a teacher, keep the
ones whose answer is right, and build stage-1 pairs by error analysis.

    python -m data.distill sample --questions runs/hotpotqa/train.jsonl --search runs/hotpotqa/corpus.jsonl \\
        --teacher path/to/DeepSeek-R1-Distill-Qwen-7B --out runs/hotpotqa      # any checkpoint, our sampler
    python -m data.distill sample ... --teacher http://127.0.0.1:8001 --teacher-model NAME   # an endpoint
    python -m data.distill import chat_sft.jsonl --out runs/mydata      # common chat-format SFT files

Teachers (--teacher, repeatable; the samples of all of them are pooled):
- a checkpoint directory (or a stage's --out): sample.sample in "real" mode with the search tool, from
  the checkpoint's own chat template (tokenizer.Tokenizer.agent_prompt). A continuation cut by the token
  budget ends on the last token at which its text decodes whole (a byte-level BPE token may hold half of a
  character: its text would end in U+FFFD);
- an http(s) URL of an OpenAI-compatible server, driven one action at a time with stop = the closing action
  tag: when the text stops there, the query is sent to the search tool, the observation appended, and the
  text so far continued. Two endpoints, told apart by the URL's path:
  URL or URL/v1/chat/completions: the chat endpoint; the partial assistant message is sent back (opening
    with `<think>\\n`) and continued (`continue_final_message`, as vLLM and SGLang serve it). Serve the model
    without a reasoning parser, so that the whole text comes back in `content`;
  URL/v1/completions: raw continuation, which many servers expose where the chat one cannot continue a
    message. We render the prompt ourselves, as the stages do (Tokenizer.agent_prompt's text): the chat
    template and special tokens of --teacher-template DIR, a directory holding the teacher's
    tokenizer_config.json (its download folder, or a checkpoint of the same family), then the text so far.
    Without its leading bos token when that file says add_bos_token (R1-Distill's does): the server
    tokenizes a prompt as the model's tokenizer does, which adds it.
The tags are env.TAGS; the instruction is env.INSTRUCTION, as every stage uses.

What is written into --out (formats: data/README.md):
- stage2.jsonl: per question, up to --per-question right tool-using trajectories (kind "tool") and up to
  --cot-per-question right ones with no action (kind "cot", capped at one per --cot-ratio tool rows: the
  paper's 5k + 1k). Right = env.reward (EM of the boxed answer after a single `</think>`) is 1.
- stage1.jsonl: pairs by error analysis. A step is a line of the response, or, when an action opens on
  it, that line through the closing action tag. The decision points of a right trajectory are the starts
  of its acting steps and of its concluding line (the last line before `</think>`). From each, every
  teacher samples --branches continuations of the same prefix; a branch whose first step acts where the
  right one recalled (or recalls where it acted) and that ends wrong gives a pair: chosen = the right
  trajectory's step, rejected = the branch's. direction "search" when chosen acts, "answer" when it does
  not. At the first step, the teacher's wrong root samples are branches too. Up to --pairs-per-question of
  each direction per question: a cap on all pairs would fill up at the first step (a search, where every
  wrong root sample is a candidate) and leave no room for the "answer" pairs of later steps; a decision
  point whose direction is full samples no branches.
- distill.json: the arguments and the counts.

Import: rows {"messages": [{"role", "content"}, ...]} (optionally "answers", "kind"). The question is the
last user message (env.INSTRUCTION and a newline are stripped from its start when present); the
assistant messages after it, with any "tool" messages between them, are the response; observation spans
`<search_result> ... </search_result>` (with the blank lines around them) become tool segments, and a
"tool" message without the tags is wrapped in them as env.format_observation would. Answers: the row's,
else the boxed answer of the response. Rows with a bad shape raise ValueError naming the file and line.

Simplified: branches are sampled for right trajectories only (the pairs need a right chosen step), and
a line is the unit of a step whatever the teacher's writing style.
"""
import argparse
import json
import os
import re

import env
import jsonl
from env import TAGS
from tokenizer import THINK, Tokenizer, token_content, user_turn

THINK_OPEN = f"{TAGS.think_open}\n"

# ----------------------------------------------------------------------------- trajectories


def segment(parts):
    """[(text, tool), ...] -> stage-2 segments: adjacent runs of one kind merged; text a model run wrote after
    its closing action tag (e.g. the blank line of a `>\\n\\n` token) moved to the observation it precedes,
    so that a model segment before a tool segment ends with the tag, as data/README.md specifies."""
    out = []
    for text, tool in parts:
        if text and out and out[-1]["tool"] == tool:
            out[-1]["text"] += text
        elif text:
            out.append({"text": text, "tool": tool})
    for a, b in zip(out, out[1:]):
        end = a["text"].rfind(TAGS.search_close)
        if not a["tool"] and b["tool"] and end >= 0:
            cut = end + len(TAGS.search_close)
            a["text"], b["text"] = a["text"][:cut], a["text"][cut:] + b["text"]
    return out


def strip_think(text):
    """The response after the prompt's `<think>\\n` (a teacher that writes the opening tag itself)."""
    return text[len(TAGS.think_open):].lstrip("\n") if text.lstrip().startswith(TAGS.think_open) else text


def steps(text):
    """[(start, end, acts)] of the response's steps (module docstring): lines, an action through its closing tag."""
    out, i = [], 0
    while i < len(text):
        nl = text.find("\n", i)
        end = len(text) if nl < 0 else nl + 1
        at = text.find(TAGS.search_open, i, end)
        if at >= 0:
            close = text.find(TAGS.search_close, at)
            end = len(text) if close < 0 else close + len(TAGS.search_close)
        out.append((i, end, at >= 0))
        i = end
    return out


def first_step(text):
    start, end, acts = steps(text)[0] if text else (0, 0, False)
    return text[start:end], acts


def decision_points(segments):
    """Offsets in the joined response where a right trajectory decided: its acting steps, its concluding line."""
    text, pos, model_spans = "".join(s["text"] for s in segments), 0, []
    for s in segments:
        if not s["tool"]:
            model_spans.append((pos, pos + len(s["text"])))
        pos += len(s["text"])
    in_model = lambda i: any(a <= i < b for a, b in model_spans)  # noqa: E731
    all_steps = [st for st in steps(text) if in_model(st[0]) and text[st[0]:st[1]].strip()]
    points = [start for start, _, acts in all_steps if acts]
    close = text.find(TAGS.think_close)
    before = [start for start, _, acts in all_steps if close >= 0 and start < close and not acts
              and not text[start:close].strip().startswith(TAGS.think_close)]
    return text, sorted(set(points + before[-1:]))


# ----------------------------------------------------------------------------- teachers


def whole_chars(tok, ids):
    """`ids` without the trailing tokens that leave a character half-written: a byte-level BPE token may hold
    part of a character's UTF-8 bytes, and a text cut there decodes to U+FFFD. A character has at most 4
    bytes, so the last 8 tokens tell."""
    end = len(ids)
    while end and tok.decode(ids[max(0, end - 8):end]).endswith("\ufffd"):
        end -= 1
    return ids[:end]


def completion_prompt(config, question):
    """The agent's prompt text (tokenizer.Tokenizer.agent_prompt) from a tokenizer_config.json alone, for a
    /v1/completions server: the chat template's generation prompt, `<think>\\n` unless it wrote it, and no
    leading bos where the config says add_bos_token (the server's tokenizer adds it)."""
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one, as Tokenizer does
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    text = Tokenizer.render(config, user_turn(question, env.INSTRUCTION), template=template)
    text = text if text.endswith(f"{THINK}\n") else f"{text}{THINK}\n"
    bos = token_content(config.get("bos_token"))
    return text[len(bos):] if config.get("add_bos_token") and bos and text.startswith(bos) else text


class CheckpointTeacher:
    """Any HF-layout checkpoint through our KV-cached sampler (sample.sample, real tool)."""

    def __init__(self, path, tool, args):
        import torch

        import checkpoints
        from model import Qwen2
        from tokenizer import Tokenizer
        ckpt = checkpoints.resolve_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"--teacher {path}: no checkpoint there (config.json or a 'latest' pointer)")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = Qwen2.from_pretrained(ckpt, device=device, dtype=dtype).eval()
        self.tok, self.tool, self.args, self.name = Tokenizer.from_pretrained(ckpt), tool, args, ckpt

    def continue_(self, items, seed):
        """items: [(question, prefix text)] -> one sampled continuation each, as segments."""
        from sample import sample
        out, a = [], self.args
        for b in range(0, len(items), a.batch_size):
            chunk = items[b:b + a.batch_size]
            prompts = [self.tok.encode(self.tok.agent_prompt(q, env.INSTRUCTION)) + self.tok.encode(prefix)
                       for q, prefix in chunk]
            rolls = sample(self.model, self.tok, prompts, tool=self.tool, mode="real", max_new_tokens=a.max_new_tokens,
                           max_actions=a.max_actions, temperature=a.temperature, topk=a.topk, seed=seed + b)
            for r in rolls:
                ids, mask = r.completion, r.policy_mask
                if r.finish == "eos":
                    ids, mask = ids[:-1], mask[:-1]
                ids = whole_chars(self.tok, ids)  # a budget may cut a character in two
                mask = mask[:len(ids)]
                runs, start = [], 0
                for i in range(1, len(ids) + 1):
                    if i == len(ids) or mask[i] != mask[start]:
                        runs.append((self.tok.decode(ids[start:i]), mask[start] == 0))
                        start = i
                out.append(segment(runs))
        return out


class EndpointTeacher:
    """An OpenAI-compatible server, driven one action at a time (module docstring): its /v1/chat/completions
    endpoint, or its /v1/completions one when the URL ends so (the prompt rendered with --teacher-template)."""

    def __init__(self, url, tool, args):
        url = url.rstrip("/")
        self.chat = not url.endswith("/completions") or url.endswith("/chat/completions")
        self.url = url if url.endswith("/completions") else url + "/v1/chat/completions"
        self.tool, self.args, self.name = tool, args, url
        if not self.chat:
            config = os.path.join(args.teacher_template or "", "tokenizer_config.json")
            if not args.teacher_template or not os.path.isfile(config):
                raise SystemExit(f"--teacher {url} continues raw text, so the prompt is rendered here: pass "
                                 "--teacher-template DIR, a directory with the teacher's tokenizer_config.json (its "
                                 "chat template)" + (f"; {config} is missing" if args.teacher_template else ""))
            with open(config, encoding="utf-8") as f:
                self.config = json.load(f)

    def _complete(self, question, text, seed):
        import requests
        a = self.args
        body = {"model": a.teacher_model, "stop": [TAGS.search_close], "temperature": a.temperature,
                "max_tokens": a.max_new_tokens, "seed": seed}
        if not self.chat:  # raw continuation of the rendered prompt and the text so far
            body["prompt"] = completion_prompt(self.config, question) + text
        else:
            body["messages"] = [{"role": "user", "content": f"{env.INSTRUCTION}\n{question}"}]
            if text:  # continue the assistant's own message rather than open a new turn
                body["messages"].append({"role": "assistant", "content": THINK_OPEN + text})
                body.update(continue_final_message=True, add_generation_prompt=False)
        r = requests.post(self.url, json=body, timeout=a.timeout)
        if r.status_code != 200:
            raise RuntimeError(f"{self.url}: HTTP {r.status_code}: {r.text[:200]}")
        choice = r.json()["choices"][0]
        new = choice.get("text") if not self.chat else choice["message"].get("content")
        return new or "", choice.get("finish_reason")

    def continue_(self, items, seed):
        out = []
        for n, (question, prefix) in enumerate(items):
            parts, text, actions = [], prefix, 0
            for _ in range(self.args.max_actions + 2):  # the limit message, then one last request to answer
                new, finish = self._complete(question, text, seed + n)
                new = strip_think(new) if not text else new
                opened = new.rfind(TAGS.search_open) > new.rfind(TAGS.search_close)
                if finish != "stop" or not opened:  # an answer (eos), or cut at max_tokens
                    parts.append((new, False))
                    break
                new += TAGS.search_close
                actions += 1
                query = env.extract_query(new)
                docs = self.tool.search([query], self.args.topk)[0] if actions <= self.args.max_actions else None
                obs = env.format_observation(docs, limit_reached=actions > self.args.max_actions)
                parts += [(new, False), (obs, True)]
                text += new + obs
            out.append(segment(parts))
        return out


def make_teacher(spec, tool, args):
    if spec.startswith(("http://", "https://")):
        return EndpointTeacher(spec, tool, args)
    return CheckpointTeacher(spec, tool, args)


# ----------------------------------------------------------------------------- distillation


def stage2_row(q, segments, kind):
    return {"id": q.get("id"), "question": q["question"], "answers": q["answers"], "hops": q.get("hops"),
            "type": q.get("type"), "kind": kind, "segments": segments}


def distill(questions, teachers, args):
    """Sample, filter and pair (module docstring). Returns (stage2 rows, stage1 rows, counts)."""
    counts = dict.fromkeys(("samples", "right", "tool", "cot", "branches", "pairs_search", "pairs_answer"), 0)
    samples = [[] for _ in questions]  # per question: (segments, reward)
    for t, teacher in enumerate(teachers):
        items = [(q["question"], "") for q in questions for _ in range(args.samples)]
        for i, segs in enumerate(teacher.continue_(items, args.seed * 1_000_003 + t * 10_007)):
            text = "".join(s["text"] for s in segs)
            samples[i // args.samples].append((segs, env.reward(text, questions[i // args.samples]["answers"])))
    tool_rows, cot_rows, pairs = [], [], []
    for qi, (q, got) in enumerate(zip(questions, samples)):
        counts["samples"] += len(got)
        right, seen = [], set()
        for segs, r in got:
            text = "".join(s["text"] for s in segs)
            if r == 1.0 and text not in seen:
                seen.add(text)
                right.append(segs)
        counts["right"] += len(right)
        acting = [s for s in right if any(x["tool"] for x in s)]
        tool_rows += [stage2_row(q, s, "tool") for s in acting[:args.per_question]]
        cot_rows += [stage2_row(q, s, "cot") for s in right if s not in acting][:args.cot_per_question]
        # error analysis: from each decision point of a right trajectory, branches that decided otherwise and failed
        q_pairs, seen_pairs = [], set()
        made = dict.fromkeys(("search", "answer"), 0)  # --pairs-per-question of each direction
        for segs in right:
            text, points = decision_points(segs)
            for p in points:
                prefix, (chosen, acts) = text[:p], first_step(text[p:])
                direction = "search" if acts else "answer"
                if made[direction] >= args.pairs_per_question:
                    continue  # this direction is full: no branches sampled for it
                branches = [("".join(s["text"] for s in b), r) for b, r in got if r < 1.0] if p == 0 else []
                for t, teacher in enumerate(teachers):
                    items = [(q["question"], prefix)] * args.branches
                    for b in teacher.continue_(items, args.seed * 1_000_003 + 7919 * (qi + 1) + 131 * p + t):
                        cont = "".join(s["text"] for s in b)
                        branches.append((cont, env.reward(prefix + cont, q["answers"])))
                    counts["branches"] += args.branches
                for cont, r in branches:
                    rejected, b_acts = first_step(cont)
                    if r == 1.0 or b_acts == acts or not rejected.strip() or (prefix, rejected) in seen_pairs:
                        continue
                    if made[direction] >= args.pairs_per_question:
                        break
                    seen_pairs.add((prefix, rejected))
                    made[direction] += 1
                    q_pairs.append({"question": q["question"], "prefix": prefix, "chosen": chosen, "rejected": rejected,
                                    "direction": direction, "hops": q.get("hops")})
        pairs += q_pairs
    cot_rows = cot_rows[:max(1, len(tool_rows) // args.cot_ratio)] if args.cot_ratio else cot_rows
    counts.update(tool=len(tool_rows), cot=len(cot_rows),
                  pairs_search=sum(p["direction"] == "search" for p in pairs),
                  pairs_answer=sum(p["direction"] == "answer" for p in pairs))
    return tool_rows + cot_rows, pairs, counts


# ----------------------------------------------------------------------------- import of chat-format files

OBSERVATION = re.compile(r"\s*" + re.escape(TAGS.result_open) + r".*?" + re.escape(TAGS.result_close) + r"\s*", re.S)


def import_chat(path):
    """A common chat-format SFT file -> stage-2 rows (module docstring)."""
    rows, chats = [], jsonl.read(path)  # each line an object, or a ValueError naming it
    for i, row in enumerate(chats):
        bad = lambda msg: ValueError(f"{chats.where(i)}: {msg}")  # noqa: E731
        msgs = row.get("messages")
        if not (isinstance(msgs, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                               and isinstance(m.get("content"), str) for m in msgs)):
            raise bad('expected {"messages": [{"role": str, "content": str}, ...]}')
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        if not users or users[-1] == len(msgs) - 1:
            raise bad("needs a user message followed by the assistant's response")
        question = msgs[users[-1]]["content"]
        question = question[len(env.INSTRUCTION) + 1:] if question.startswith(env.INSTRUCTION + "\n") else question
        parts = []
        for m in msgs[users[-1] + 1:]:
            if m["role"] == "tool":
                c = m["content"]
                parts.append((c if TAGS.result_open in c else f"\n\n{TAGS.result_open} {c} {TAGS.result_close}\n\n",
                              True))
            elif m["role"] == "assistant":
                pos, c = 0, m["content"] if parts else strip_think(m["content"])
                for o in OBSERVATION.finditer(c):
                    parts += [(c[pos:o.start()], False), (o.group(), True)]
                    pos = o.end()
                parts.append((c[pos:], False))
            else:
                raise bad(f"unexpected {m['role']!r} message after the question")
        segs = segment(parts)
        text = "".join(s["text"] for s in segs)
        answers = row.get("answers") or ([a] if (a := env.extract_answer(text)) is not None else None)
        if not answers:
            raise bad("no answers given and no \\boxed{} answer after </think> in the response")
        kind = row.get("kind") or ("tool" if any(s["tool"] for s in segs) else "cot")
        rows.append({"id": row.get("id"), "question": question, "answers": answers, "hops": row.get("hops"),
                     "type": row.get("type"), "kind": kind, "segments": segs})
    return rows


# ----------------------------------------------------------------------------- command line


# What a question row needs here: data/convert.py's format (common.QUESTION_ROWS), whose id and hops are only
# carried along into stage2.jsonl, so a file without them is distilled too.
QUESTIONS = {"id?": (str, int), "question": str, "answers": [str], "hops?": int}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="sample from teachers, keep right trajectories, pair by error analysis")
    s.add_argument("--questions", required=True, help="questions JSONL ({question, answers, ...}, data/convert.py)")
    s.add_argument("--teacher", action="append", required=True,
                   help="a checkpoint directory or an OpenAI-compatible server URL (its chat endpoint; a URL "
                        "ending /v1/completions: the raw one, with --teacher-template); repeat for several")
    s.add_argument("--teacher-model", default="teacher", help="the `model` field sent to a server")
    s.add_argument("--teacher-template", default=None,
                   help="a /v1/completions teacher: directory with its tokenizer_config.json, whose chat "
                        "template renders the prompt here")
    s.add_argument("--search", required=True, help="corpus JSONL (local BM25) or a /retrieve server URL")
    s.add_argument("--out", required=True, help="directory for stage1.jsonl, stage2.jsonl, distill.json")
    s.add_argument("--limit", type=int, default=0, help="first N questions only (0 = all)")
    s.add_argument("--samples", type=int, default=4, help="trajectories per question per teacher")
    s.add_argument("--per-question", type=int, default=1, help="right tool trajectories kept per question")
    s.add_argument("--cot-per-question", type=int, default=1, help="right pure-CoT trajectories kept per question")
    s.add_argument("--cot-ratio", type=int, default=5, help="at most one cot row per N tool rows (0 = no cap)")
    s.add_argument("--branches", type=int, default=2, help="continuations per teacher at each decision point")
    s.add_argument("--pairs-per-question", type=int, default=2,
                   help="stage-1 pairs kept per question and direction (search, answer)")
    s.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (the paper's 0.6)")
    s.add_argument("--max-new-tokens", type=int, default=1024, help="budget per trajectory (per request for a server)")
    s.add_argument("--max-actions", type=int, default=10, help="searches per trajectory before the limit message")
    s.add_argument("--topk", type=int, default=3, help="documents per search")
    s.add_argument("--batch-size", type=int, default=16, help="sequences per sampler call (checkpoint teachers)")
    s.add_argument("--timeout", type=float, default=600, help="seconds per server request")
    s.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    i = sub.add_parser("import", help="chat-format SFT file -> stage2.jsonl")
    i.add_argument("input", help='JSONL of {"messages": [{"role", "content"}, ...]}')
    i.add_argument("--out", required=True, help="output directory")
    i.add_argument("--name", default="stage2.jsonl", help="output file name in --out")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.command == "import":
        rows = import_chat(args.input)
        jsonl.write(os.path.join(args.out, args.name), rows)
        print(f"{args.input}: {len(rows)} trajectories ({sum(r['kind'] == 'tool' for r in rows)} tool) -> "
              f"{os.path.join(args.out, args.name)}")
        return
    questions = jsonl.read(args.questions, QUESTIONS)[:args.limit or None]
    tool = env.make_search_tool(args.search)
    teachers = [make_teacher(t, tool, args) for t in args.teacher]
    stage2, stage1, counts = distill(questions, teachers, args)
    jsonl.write(os.path.join(args.out, "stage2.jsonl"), stage2)
    jsonl.write(os.path.join(args.out, "stage1.jsonl"), stage1)
    with open(os.path.join(args.out, "distill.json"), "w") as f:
        json.dump({"args": vars(args), "questions": len(questions), **counts}, f, indent=2)
    print(f"{len(questions)} questions, {counts['samples']} samples, {counts['right']} right -> stage2.jsonl "
          f"{counts['tool']} tool + {counts['cot']} cot; {counts['branches']} branches -> stage1.jsonl "
          f"{counts['pairs_search']} search + {counts['pairs_answer']} answer pairs")
    if not stage2 or not stage1:
        print("warning: a stage file is empty (no right trajectory, or no branch that decided otherwise and failed)")


if __name__ == "__main__":
    main()
