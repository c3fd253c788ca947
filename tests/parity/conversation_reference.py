"""Reference tokenisation and label masking for the gemma, plain and vicuna_v1 templates.

Tokenisation goes through Hugging Face's GemmaTokenizer (sentencepiece + its own special-token
handling), independent of the C++ tokenizer; the template rendering, tokenizer_image_token and
preprocess_gemma / preprocess_plain masking are written from ../shared/reference/mgm-model.md
sections 7-8; vicuna_v1 follows conv_vicuna_v1.get_prompt (SeparatorStyle.TWO) and preprocess_v1
of MGM's mgm/conversation.py and mgm/train/train.py. Usage: conversation_reference.py TOKENIZER_MODEL IN.json OUT.json
IN: [{"template": "gemma"|"plain"|"vicuna_v1", "has_image": bool, "turns": [[from, value], ...]}, ...]
OUT: [{"input_ids": [...], "labels": [...], "mismatch": bool}, ...]
"""
import json
import sys

IGNORE, IMAGE = -100, -200


def load_tokenizer(path):
    from transformers import GemmaTokenizer
    # As Gemma's tokenizer_config.json: the turn markers are special added tokens.
    return GemmaTokenizer(vocab_file=path, additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])


def tok_ids(tok, text):
    return tok(text).input_ids


def tokenizer_image_token(tok, prompt):
    chunks = [tok_ids(tok, c) for c in prompt.split("<image>")]
    out, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
        offset = 1
        out.append(chunks[0][0])
    for i, c in enumerate(chunks):
        if i:
            out.append(IMAGE)
        out.extend(c[offset:])
    return out


def move_image_to_front(turns):
    out = []
    for frm, val in turns:
        if "<image>" in val:  # MGM's preprocess_multimodal, both strips
            val = ("<image>\n" + val.replace("<image>", "").strip()).strip()
        out.append((frm, val))
    return out


def gemma(tok, turns, has_image, max_len=2048):
    if turns and turns[0][0] != "human":
        turns = turns[1:]
    conv = ""
    for i, (frm, val) in enumerate(turns):
        role = "user" if frm == "human" else "model"
        conv += "<start_of_turn>" + role + "\n" + val + "<end_of_turn>\n" + ("<eos>" if i % 2 else "")
    enc = (lambda s: tokenizer_image_token(tok, s)) if has_image else (lambda s: tok_ids(tok, s))
    ids = enc(conv)
    if not has_image:
        ids = ids[:max_len]
    target = list(ids)
    total_len = sum(1 for t in target if t != tok.pad_token_id)
    sep = "<start_of_turn>model\n"
    cur = 1
    target[0] = IGNORE
    for rou in conv.split("<eos>"):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(enc(rou))
        inst_len = len(enc(parts[0])) - 1
        for k in range(cur, min(cur + inst_len, len(target))):
            target[k] = IGNORE
        cur += round_len
    for k in range(cur, len(target)):
        target[k] = IGNORE
    mismatch = False
    if cur < max_len and cur != total_len:
        target = [IGNORE] * len(target)
        mismatch = True
    return ids, target, mismatch


VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def vicuna_v1(tok, turns, has_image, max_len=2048):
    import tokenizers
    from packaging import version
    if turns and turns[0][0] != "human":
        turns = turns[1:]
    roles = ("USER", "ASSISTANT")
    seps = (" ", "</s>")
    conv = VICUNA_SYSTEM + seps[0]
    for i, (frm, val) in enumerate(turns):
        role = roles[0] if frm == "human" else roles[1]
        if val:
            conv += role + ": " + val + seps[i % 2]
        else:
            conv += role + ":"
    enc = (lambda s: tokenizer_image_token(tok, s)) if has_image else (lambda s: tok_ids(tok, s))
    ids = enc(conv)
    if not has_image:
        ids = ids[:max_len]
    target = list(ids)
    total_len = sum(1 for t in target if t != tok.pad_token_id)
    sep = seps[0] + roles[1] + ": "
    # Evaluated on the actual tokenizer, as the reference does.
    not_legacy = not getattr(tok, "legacy", False) and \
        version.parse(tokenizers.__version__) >= version.parse("0.14")
    cur = 1
    target[0] = IGNORE
    for i, rou in enumerate(conv.split(seps[1])):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(enc(rou))
        inst_len = len(enc(parts[0])) - 2
        if i != 0 and not_legacy:
            round_len -= 1
            inst_len -= 1
        for k in range(cur, min(cur + inst_len, len(target))):
            target[k] = IGNORE
        cur += round_len
    for k in range(cur, len(target)):
        target[k] = IGNORE
    mismatch = False
    if cur < max_len and cur != total_len:
        target = [IGNORE] * len(target)
        mismatch = True
    return ids, target, mismatch


def plain(tok, turns):
    first = "<image>"
    conv = first + turns[1][1] + "\n"
    ids = tokenizer_image_token(tok, conv)
    target = list(ids)
    n = len(tokenizer_image_token(tok, first))
    for k in range(min(n, len(target))):
        target[k] = IGNORE
    return ids, target, False


def main():
    tok = load_tokenizer(sys.argv[1])
    cases = json.load(open(sys.argv[2]))
    out = []
    for c in cases:
        turns = move_image_to_front([tuple(t) for t in c["turns"]])
        if c["template"] == "gemma":
            ids, labels, mm = gemma(tok, turns, c["has_image"])
        elif c["template"] == "vicuna_v1":
            ids, labels, mm = vicuna_v1(tok, turns, c["has_image"])
        else:
            ids, labels, mm = plain(tok, turns)
        out.append({"input_ids": ids, "labels": labels, "mismatch": mm,
                    "decoded": tok.decode([i for i in ids if i >= 0], skip_special_tokens=True)})
    json.dump(out, open(sys.argv[3], "w"))


if __name__ == "__main__":
    main()
