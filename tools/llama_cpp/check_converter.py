"""`make gguf-help`: run the vendored llama.cpp converter with --help, or say that it is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONVERTER = Path(__file__).resolve().parent / "convert-hf-to-gguf.py"
MISSING_EXIT_CODE = 8  # the CLI's exit code for a missing optional tool


def main() -> int:
    if not CONVERTER.is_file():
        print(
            f"llama.cpp converter not installed: {CONVERTER} does not exist.\n"
            "Copy https://raw.githubusercontent.com/ggerganov/llama.cpp/master/convert-hf-to-gguf.py "
            "there (see tools/llama_cpp/Readme.md), or leave [export.ollama].convert_bin unset to "
            "write GGUF in-process.",
            file=sys.stderr,
        )
        return MISSING_EXIT_CODE
    return subprocess.run([sys.executable, str(CONVERTER), "--help"], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
