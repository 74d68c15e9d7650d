#!/usr/bin/env python3
"""Rebuild the whole corpus: the qemu-made cases, then the draft cases on top of qemu images.

    python3 tests/corpus/rebuild.py
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("build_corpus.py", "build_drafts.py"):
    subprocess.run([sys.executable, str(HERE / script), *sys.argv[1:]], check=True)
