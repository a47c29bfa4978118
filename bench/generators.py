"""How big and how fast the built-in prompt generators are.

    python bench/generators.py [--draws 40000] [--n 40000] [--seed 0]

For each generator and each compositional category: `draws` raw draws (before dedup), how many
distinct dedup keys they gave, the effective space that repeat rate implies (birthday estimate
N ~ draws^2 / (2 * repeats), which counts the skew of the sampling; ">" when nothing repeated), and
the combinatorial upper bound (distinct template fills). Then the throughput of `generate` for
`n` prompts per generator, wall-clock and CPU. Runs in well under a minute with the defaults.
"""

from __future__ import annotations

import argparse
import random
import time

from core.records import dedup_key
from curate.sources.generators import GENERATORS, generate


def _space(draws: int, unique: int) -> str:
    repeats = draws - unique
    if repeats == 0:
        return f"> {draws * draws / 2:.2g}"
    return f"~ {draws * draws / (2 * repeats):.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=40_000, help="raw draws per category")
    parser.add_argument("--n", type=int, default=40_000, help="prompts per generator for the throughput run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()

    print(
        f"{'generator/category':30} {'draws':>8} {'unique':>8} {'unique%':>8} {'birthday est.':>13} {'upper bound':>12}"
    )
    for name, gen in GENERATORS.items():
        for category in gen.categories:
            rng = random.Random(args.seed)
            keys = {dedup_key(gen.draw(category, rng)) for _ in range(args.draws)}
            label = name if len(gen.categories) == 1 else f"{name}/{category}"
            print(
                f"{label:30} {args.draws:8,} {len(keys):8,} {100 * len(keys) / args.draws:7.2f}% "
                f"{_space(args.draws, len(keys)):>13} {gen.capacity(category):12.3g}"
            )

    print(f"\n{'generate(n)':30} {'n':>8} {'wall s':>8} {'cpu s':>8} {'prompts/s':>11}")
    for name in GENERATORS:
        wall, cpu = time.perf_counter(), time.process_time()
        prompts = generate(name, args.n, seed=args.seed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert len(prompts) == args.n
        print(f"{name:30} {args.n:8,} {wall:8.2f} {cpu:8.2f} {args.n / wall:11,.0f}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
