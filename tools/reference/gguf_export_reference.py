#!/usr/bin/env python3
"""What llama.cpp's own converter (`convert_hf_to_gguf.py`, and with `--mmproj` the vision
projector file) writes for the bundled tiny Gemma 3 VLM: for each file, every metadata key with
its GGUF type and value (long arrays as their length, first and last items), and every tensor's
name, shape (row-major) and type -> tests/fixtures/gguf-export/listing.json. `lapidary
export-gguf` is tested against it. Small; the converted files are not committed.

The checkpoint is given to the converter under the hub's tensor names (the vision tower under
`vision_tower.vision_model.`). The tiny model ships only tokenizer.json; real Gemma 3 checkpoints ship a SentencePiece
tokenizer.model, which the converter reads. So a tokenizer.model is built here from
tokenizer.json the way `lapidary export-gguf` reads a tokenizer.json: pieces in id order, score
-id for normal pieces, 0 for byte pieces, -1000 for special ones; types NORMAL, BYTE (<0xNN>),
UNKNOWN (<unk>), CONTROL (special added tokens).

llama.cpp's converter comes from the llama-cpp-python source distribution on PyPI (it vendors
llama.cpp whole):

    .venv/bin/pip install -r tools/reference/requirements.txt sentencepiece protobuf
    curl -sL $(sdist url of llama-cpp-python 0.3.36) | tar xz -C /tmp
    .venv/bin/python tools/reference/gguf_export_reference.py /tmp/llama_cpp_python-0.3.36/vendor/llama.cpp
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODEL = os.path.join(ROOT, "assets", "tiny-vlm")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf-export", "listing.json")


def spm_from_tokenizer_json(tok_json, dst):
    from sentencepiece import sentencepiece_model_pb2 as pb
    t = json.load(open(tok_json, encoding="utf-8"))
    vocab = t["model"]["vocab"]
    special = {a["content"] for a in t["added_tokens"] if a.get("special")}
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    assert [i for _, i in by_id] == list(range(len(by_id))), "ids must be dense"
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(by_id)
    m.trainer_spec.byte_fallback = True
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.name = "identity"
    for piece, i in by_id:
        p = m.pieces.add()
        p.piece = piece
        if piece == "<unk>":
            p.type, p.score = pb.ModelProto.SentencePiece.UNKNOWN, -1000.0
        elif piece in special:
            p.type, p.score = pb.ModelProto.SentencePiece.CONTROL, -1000.0
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            p.type, p.score = pb.ModelProto.SentencePiece.BYTE, 0.0
        else:
            p.type, p.score = pb.ModelProto.SentencePiece.NORMAL, -float(i)
    open(dst, "wb").write(m.SerializeToString())


def to_hub_names(path):
    """The vision tower under the hub checkpoints' names (`vision_tower.vision_model.`), which the
    converter maps; same tensors."""
    from safetensors.numpy import load_file, save_file
    t = load_file(path)
    save_file({("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
               for k, v in t.items()}, path)


def listing(path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        types = [t.name for t in f.types]
        v = f.contents()
        if isinstance(v, list) and len(v) > 16:
            v = {"len": len(v), "head": v[:8], "tail": v[-4:]}
        meta[k] = {"type": types, "value": v}
    tensors = {t.name: {"shape": [int(d) for d in reversed(t.shape)], "type": t.tensor_type.name} for t in r.tensors}
    return {"metadata": meta, "tensors": tensors}


def main():
    llama = sys.argv[1]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "tiny-vlm")
        shutil.copytree(MODEL, model)
        to_hub_names(os.path.join(model, "model.safetensors"))
        spm_from_tokenizer_json(os.path.join(model, "tokenizer.json"), os.path.join(model, "tokenizer.model"))
        for kind, extra in [("text", []), ("mmproj", ["--mmproj"])]:
            for outtype in ["f16", "q8_0"]:
                dst = os.path.join(tmp, f"{kind}-{outtype}.gguf")
                subprocess.run([sys.executable, os.path.join(llama, "convert_hf_to_gguf.py"), model, "--outfile", dst,
                                "--outtype", outtype, *extra], check=True)
                out[f"{kind}-{outtype}"] = listing(dst)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False, sort_keys=True)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
