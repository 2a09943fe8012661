"""Evaluate a trained model with the SR benchmark protocol; see docs/evaluation.md.

Example:
  python evaluate.py --workdir runs/adaedsr_x2 --data-root ~/data/benchmark \
      --datasets Set5,Set14,B100,Urban100,Manga109 --depths 8,16,24,32 --output results/adaedsr_x2
"""

import sys

from adadsr_jax.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
