"""Parquet datasets written by HF `datasets`, for lapidary-data's parquet reader tests.

Writes `tests/fixtures/parquet/` from the processor fixture's rows (`tests/fixtures/processor/
data.jsonl` and its images: a PNG with alpha, a grey JPEG, a WebP, a PNG; rows without an image,
with one and with two), as users find them on the Hub:

- `messages-images.parquet`: `images` (a list of `Image()`, bytes embedded) and `messages` in
  TRL's conversational form, each image part a `{"type": "image"}` placeholder; row groups of 2
  rows.
- `messages-images-snappy.parquet`, `messages-images-zstd.parquet`: the same file written again
  by pyarrow with snappy and zstd compression (`datasets` writes its image files uncompressed).
- `prompt-completion.parquet`: `images`, and `prompt` / `completion` conversations (the
  completion is the last assistant turn).
- `image-column.parquet`: one `image` column (`Image()`, null for a row without one) and
  `messages`; the rows with at most one image.
- `by-path.parquet`: `images` given by a path relative to the parquet file (no bytes).
- `strings.parquet`: plain-string `prompt` / `completion` with `images`.
- `shards/`: `train-00000-of-00002.parquet`, `train-00001-of-00002.parquet` (the rows split in
  two) and `test-00000-of-00001.parquet` (the first row), as `push_to_hub` names shards.
- `bad-rows.parquet`: a good row; an image that cannot be decoded; two placeholders for one image;
  a good row; a row with no `messages`; two user turns in a row.
- `captions.parquet`: `image` and `caption` columns, no conversation (refused, its columns named).

    .venv/bin/pip install datasets pillow
    .venv/bin/python tools/reference/make_parquet_fixtures.py
"""

import json
import os
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from datasets import Dataset, Features, Image, List, Value

datasets.disable_progress_bars()

root = Path(__file__).resolve().parents[2]
src = root / "tests/fixtures/processor"
out = root / "tests/fixtures/parquet"
(out / "shards").mkdir(parents=True, exist_ok=True)

rows = [json.loads(line) for line in (src / "data.jsonl").read_text().splitlines() if line.strip()]

part = {"type": Value("string"), "text": Value("string")}
message = {"role": Value("string"), "content": List(part)}
images_feature = List(Image())


def placeholders(messages):
    """The messages with every image part a `{"type": "image"}` placeholder; the image paths."""
    paths, out_messages = [], []
    for m in messages:
        content = []
        for p in m["content"]:
            if p["type"] == "image":
                paths.append(p["path"])
                content.append({"type": "image", "text": None})
            else:
                content.append({"type": "text", "text": p["text"]})
        out_messages.append({"role": m["role"], "content": content})
    return out_messages, paths


def embedded(path):
    return {"bytes": (src / path).read_bytes(), "path": Path(path).name}


table = []
for r in rows:
    messages, paths = placeholders(r["messages"])
    table.append({"images": [embedded(p) for p in paths], "messages": messages})

features = Features({"images": images_feature, "messages": List(message)})
ds = Dataset.from_list(table, features=features)
ds.to_parquet(out / "messages-images.parquet", batch_size=2)
for codec in ["snappy", "zstd"]:
    written = pq.read_table(out / "messages-images.parquet")
    pq.write_table(written, out / f"messages-images-{codec}.parquet", compression=codec, row_group_size=2)

# Prompt / completion: the completion is the last assistant turn.
pc = [{"images": t["images"], "prompt": t["messages"][:-1], "completion": t["messages"][-1:]} for t in table]
pc_features = Features({"images": images_feature, "prompt": List(message), "completion": List(message)})
Dataset.from_list(pc, features=pc_features).to_parquet(out / "prompt-completion.parquet")

# One image column: the rows with at most one image.
single = [{"image": t["images"][0] if t["images"] else None, "messages": t["messages"]} for t in table if len(t["images"]) <= 1]
single_features = Features({"image": Image(), "messages": List(message)})
Dataset.from_list(single, features=single_features).to_parquet(out / "image-column.parquet")

# Images by a path relative to the parquet file, no bytes (resolved from there while written).
os.chdir(out)
by_path = []
for r in rows:
    messages, paths = placeholders(r["messages"])
    by_path.append({"images": [{"bytes": None, "path": f"../processor/{p}"} for p in paths], "messages": messages})
Dataset.from_list(by_path, features=features).to_parquet(out / "by-path.parquet")

# Plain strings: the first user turn's text and the last answer.
strings = []
for t, r in zip(table, rows):
    user = next(m for m in r["messages"] if m["role"] == "user")
    prompt = " ".join(p["text"] for p in user["content"] if p["type"] == "text")
    strings.append({"images": t["images"], "prompt": prompt, "completion": r["messages"][-1]["content"][0]["text"]})
Dataset.from_list(
    strings, features=Features({"images": images_feature, "prompt": Value("string"), "completion": Value("string")})
).to_parquet(out / "strings.parquet")

# Shards as push_to_hub names them.
ds.select(range(3)).to_parquet(out / "shards/train-00000-of-00002.parquet")
ds.select(range(3, len(ds))).to_parquet(out / "shards/train-00001-of-00002.parquet")
ds.select(range(1)).to_parquet(out / "shards/test-00000-of-00001.parquet")

# Bad rows.
bad = [
    table[0],
    {"images": [{"bytes": b"not an image at all", "path": "broken.png"}], "messages": table[0]["messages"]},
    {"images": [table[2]["images"][0]], "messages": table[2]["messages"]},
    table[3],
    {"images": [], "messages": None},
    {"images": [], "messages": [table[1]["messages"][1], table[1]["messages"][1], table[1]["messages"][2]]},
]
Dataset.from_list(bad, features=features).to_parquet(out / "bad-rows.parquet")

# No conversation.
Dataset.from_list(
    [{"image": table[0]["images"][0], "caption": "A red circle."}],
    features=Features({"image": Image(), "caption": Value("string")}),
).to_parquet(out / "captions.parquet")

print(f"wrote {out} (datasets {datasets.__version__})")
