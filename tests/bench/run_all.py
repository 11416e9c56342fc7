"""``make bench``: every benchmark against one real Kafka and one isolated libvirtd, then the table.

Starts an isolated libvirtd (:class:`devenv.LibvirtHost`, test driver over ``test+unix``) and,
on first use, a single-node Kafka (:class:`devenv.KafkaCluster`), so the libvirt-only benchmark
runs first without a broker JVM warming up beside it. Runs each ``bench_*`` module on them, prints the
table and what each number measures, and writes ``bench-results/<name>.json`` and
``bench-results/summary.json``, prints issue 10's targets (agent vs peer vs raw limits of this run)
and draws ``bench-results/*.png`` (:mod:`tests.bench.report`). Everything it started is stopped, even on
failure or SIGTERM; a
failed benchmark is reported (and the exit status is 1) while the others still run.

``python -m tests.bench.run_all [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.bench import (
    RESULTS_DIR,
    BenchEnv,
    BenchResult,
    bench_agent_throughput,
    bench_codec,
    bench_fleet_log,
    bench_latency,
    bench_libvirt_raw,
    bench_outage,
    bench_rebuild,
    bench_scale,
    bench_steady,
    exit_on_sigterm,
    print_table,
    progress,
    run_one,
    write_results,
)

BENCHMARKS = (bench_codec, bench_libvirt_raw, bench_agent_throughput, bench_latency, bench_rebuild, bench_scale,
              bench_fleet_log, bench_outage, bench_steady)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=[m.NAME for m in BENCHMARKS],
                   help="run only this benchmark (repeatable)")
    args = p.parse_args(argv)
    exit_on_sigterm()
    chosen = [m for m in BENCHMARKS if not args.only or m.NAME in args.only]
    needs = {n for m in chosen for n in m.NEEDS}
    started = time.time()
    t = time.monotonic()
    results: list[BenchResult] = []
    with BenchEnv(kafka="kafka" in needs, libvirt="libvirt" in needs) as env:
        for module in chosen:
            results.append(run_one(module, env))
    seconds = time.monotonic() - t
    print_table(results)
    path = write_results(results, started, seconds)
    from tests.bench import report  # noqa: PLC0415

    docs = [r.to_json() for r in results]
    report.print_targets(docs)
    for png in report.plot(docs):
        progress(f"wrote {png.relative_to(RESULTS_DIR.parent)}")
    progress(f"wrote {len(results)} result file(s) and {path.relative_to(RESULTS_DIR.parent)} in {seconds:.0f}s total")
    failed = [r.name for r in results if r.error]
    if failed:
        progress(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
