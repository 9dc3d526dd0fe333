"""A stand-in for llama.cpp's convert-hf-to-gguf.py, for tests of the `convert_bin` export route.

Same command line as the upstream script (`MODEL_DIR --outfile PATH --outtype f32|f16`); it reads
the Hugging Face directory with ml-playground's importer and writes GGUF with its in-process writer,
so the route (arguments, atomic placement, quantization of its output) runs in tests without any
llama.cpp code in this repository. With CONVERTER_STANDIN_FAIL=1 in the environment it writes part
of a file and exits 3, as a converter that breaks mid-way would.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ml_playground.interop.gguf import write_gguf
from ml_playground.interop.hf import TOKENIZER_FILE, import_hf_weights, meta_from_tokenizer_json


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--outfile", type=Path, required=True)
    parser.add_argument("--outtype", choices=["f32", "f16"], required=True)
    args = parser.parse_args(argv)
    if os.environ.get("CONVERTER_STANDIN_FAIL") == "1":
        args.outfile.write_bytes(b"GGUF-truncated")
        print("converter: unsupported tensor layout", file=sys.stderr)
        return 3
    state_dict, config = import_hf_weights(args.model_dir)
    meta = meta_from_tokenizer_json(args.model_dir / TOKENIZER_FILE)
    write_gguf(args.outfile, state_dict, config, meta, ftype=args.outtype, name="standin")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
