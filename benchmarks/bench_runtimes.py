"""The cross-runtime benchmark recorded in BENCHMARKS.md ("Deployment"): all four models at 224, batch 1 and 32,
2 threads, every backend, the reference models alongside, int8 included; writes the table and the JSON.

    .venv/bin/python benchmarks/bench_runtimes.py --rounds 30 --out benchmarks/results/deploy_bench

is the same as ``mobilenets bench --int8 --tuned-peers --rounds 30`` plus saving ``OUT.md`` and ``OUT.json``
after every model and batch.
"""
import argparse
import json
import sys
from pathlib import Path

from mobilenets.deploy.bench import MODELS, BenchOptions, format_table, run_bench


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", default="1,32")
    p.add_argument("--resolution", type=int, default=None, help="one input size for all (default: each model's own)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--large-batch-rounds", type=int, default=10)
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--out", default="benchmarks/results/deploy_bench")
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(report):  # after every model and batch, so a long run that is cut short still leaves its figures
        out.with_suffix(".md").write_text(format_table(report) + "\n")
        out.with_suffix(".json").write_text(json.dumps(report.to_json(), indent=1))

    options = BenchOptions(models=tuple(args.models.split(",")), batches=tuple(int(b) for b in args.batch.split(",")),
                           threads=args.threads, rounds=args.rounds, large_batch_rounds=args.large_batch_rounds,
                           resolution=args.resolution, tuned_peers=True, int8=not args.no_int8)
    report = run_bench(options, on_block=save, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    save(report)
    print(format_table(report))


if __name__ == "__main__":
    main()
