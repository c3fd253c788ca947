"""Independent Python model of the reference data tools, used as the expectation for the C++
converters. Written from shared/reference/mgm-model.md section 11 and the documented behaviour of
data-juicer's dj_to_llava.py / llava_to_dj.py and the toolkit's check_sample_number.py.
Needs only the standard library (jsonlines' writer is json.dumps(ensure_ascii=False) + "\n").

usage: ref_data_tools.py COMMAND OPTIONS.json
  dj_to_llava   {"input", "output", ...options}
  llava_to_dj   {"input", "output", "seed", ...options}
  sample        {"input", "output", "max", "seed"}
  random        {"seed", "ops": [["bits", k] | ["random"] | ["sample", n, k]]}  -> JSON on stdout
  dumps         {"value", "ensure_ascii"}                                     -> text on stdout
"""
import json
import random
import re
import sys

EOC = "<|__dj__eoc|>"
ROLE = re.compile(r"\[\[([a-zA-Z]*?)\]\]: ")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().split("\n") if line != ""]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def cut_end(s, tok):
    return s[: -len(tok)].strip() if s.endswith(tok) else s


def cut_start(s, tok):
    return s[len(tok):].strip() if s.startswith(tok) else s


def clean(sent, idx, o):
    s = sent.strip()
    s = cut_end(s, o["sep"])
    s = cut_end(s, o["eoc"])
    if idx > 0 and o["keep_first"]:
        if s.startswith(o["img"]):
            s = cut_start(s, o["img"])
            s = cut_start(s, o["sep"])
        if s.endswith(o["img"]):
            s = cut_end(s, o["img"])
            s = cut_end(s, o["sep"])
    return s


def dj_to_llava(a):
    o = {"keep_first": a.get("keep_only_first_image", True), "eoc": a.get("eoc_special_token", EOC),
         "img": a.get("image_special_token", "<image>"), "sep": a.get("sent_seperator", "\n")}
    orig = None
    if a.get("restore_questions", False):
        with open(a["original_llava_ds_path"], encoding="utf-8") as f:
            orig_ds = json.load(f)
        orig = {str(s["id"]): s for s in orig_ds}
    out = []
    for s in read_jsonl(a["input"]):
        imgs = list(set(s.get("images", [])))
        assert len(imgs) <= 1
        if orig is not None:
            o_s = orig[str(s["id"])]
            sid = o_s["id"]
            convs = [o_s["conversations"][0],
                     {"from": o_s["conversations"][1]["from"], "value": clean(s["text"], 1, o)}]
        else:
            sid = s["id"]
            parts = ROLE.split(s["text"])
            if parts and parts[0] == "":
                parts = parts[1:]
            assert len(parts) % 4 == 0
            convs = [{"from": parts[2 * i], "value": clean(parts[2 * i + 1], i, o)}
                     for i in range(len(parts) // 2)]
        new = {"id": sid, "conversations": convs}
        if len(imgs) == 1:
            new["image"] = imgs[0]
        out.append(new)
    with open(a["output"], "w", encoding="utf-8") as f:
        json.dump(out, f)


def llava_to_dj(a):
    random.seed(a.get("seed", 0))
    img = a.get("image_special_token", "<image>")
    sep = a.get("sent_seperator", "\n")
    eoc = a.get("eoc_special_token", EOC)
    pos_opt = a.get("image_broadcast_pos", "random")
    with open(a["input"], encoding="utf-8") as f:
        ds = json.load(f)
    rows = []
    for s in ds:
        sid = str(s["id"]) if a.get("str_id", True) else s["id"]
        image = s.get("image", "")
        conv = s["conversations"]
        images, first, chunks = [], "", []
        for i in range(len(conv) // 2):
            h, g = conv[2 * i], conv[2 * i + 1]
            q = h["value"]
            if image == "":
                pass
            elif i == 0:
                first = "before" if q.startswith(img) else "after"
                images.append(image)
            elif a.get("image_broadcast", False):
                pos = pos_opt
                if pos == "random":
                    pos = "before" if random.random() < 0.5 else "after"
                elif pos == "follow":
                    pos = "before" if first == "before" else "after"
                q = img + sep + q if pos == "before" else q + sep + img
                images.append(image)
            if a.get("only_keep_caption", False):
                chunks.append(img + sep + g["value"])
            else:
                chunks.append("[[%s]]: %s%s[[%s]]: %s" % (h["from"], q, sep, g["from"], g["value"]))
        joiner = (" " + eoc + sep) if a.get("split_chunk", False) else sep
        text = joiner.join(chunks)
        if a.get("add_eoc_at_last", True):
            text += " " + eoc
        rows.append({"id": sid, "text": text, "images": images})
    write_jsonl(a["output"], rows)


def sample(a):
    random.seed(a["seed"])
    path = a["input"]
    with open(path, encoding="utf-8") as f:
        is_array = f.read().lstrip().startswith("[")
    if is_array:
        with open(path, encoding="utf-8") as f:
            ds = json.load(f)
    else:
        ds = read_jsonl(path)
    kept = random.sample(ds, a["max"]) if a["max"] < len(ds) else ds
    if is_array:
        with open(a["output"], "w", encoding="utf-8") as f:
            json.dump(kept, f)
    else:
        write_jsonl(a["output"], kept)


def rand(a):
    random.seed(a["seed"])
    res = []
    for op in a["ops"]:
        if op[0] == "bits":
            res.append(random.getrandbits(op[1]))
        elif op[0] == "random":
            res.append(repr(random.random()))
        else:
            res.append(random.sample(range(op[1]), op[2]))
    print(json.dumps(res))


def main():
    cmd = sys.argv[1]
    with open(sys.argv[2], encoding="utf-8") as f:
        a = json.load(f)
    if cmd == "dumps":
        sys.stdout.write(json.dumps(a["value"], ensure_ascii=a["ensure_ascii"]))
        return
    {"dj_to_llava": dj_to_llava, "llava_to_dj": llava_to_dj, "sample": sample, "random": rand}[cmd](a)


if __name__ == "__main__":
    main()
