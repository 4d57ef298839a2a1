"""Thin script form of `victor bench matching` (the code lives in victor/model/matching_bench.py)."""
import sys

from victor.model.matching_bench import main

if __name__ == "__main__":
    main(sys.argv[1:])
