"""Peak memory of a 405-volume participant run at several --batch-size values, 3D and 2D.

    python benchmarks/bench_memory.py [--batch-sizes 4 16] [--volumes 405] [--results benchmarks/RESULTS.md]

Target (issue 8): peak RSS <= 3 GiB for a 405-volume run at any batch size the CLI
allows, 2D included.  On CPU the participant level reads, decodes, explains and writes
``--batch-size`` volumes per step but passes at most
``deeplight_bids.models.decode.CPU_NETWORK_BATCH`` volumes through the network per call,
so memory should not grow with the batch size.  Each run is the real CLI in a child
process (LRP on, all outputs); its peak RSS is the child's ``ru_maxrss``.  3D uses random
weights (as ``bench_3d.py``), 2D the published weights (as ``bench_2d.py``).  Memory does
not depend on the machine's load, so this can run beside other work; the wall times can.
"""

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_2d  # noqa: E402
import bench_3d  # noqa: E402
from _results import RSS_LIMIT_MIB, machine_description, update_section  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--volumes", type=int, default=405)
    parser.add_argument("--architectures", nargs="+", default=["3D", "2D"], choices=["3D", "2D"])
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file to update ('' for none)")
    args = parser.parse_args(argv)
    from deeplight_bids.models.decode import CPU_NETWORK_BATCH

    rows = []
    print(f"{'arch':>4} {'batch':>5} {'wall s':>7} {'peak RSS MiB':>12}  verdict", flush=True)
    for arch in args.architectures:
        for batch in args.batch_sizes:
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                if arch == "3D":
                    dataset, _ = bench_3d.make_dataset(tmp, args.volumes)
                    flow = bench_3d.run_flow(dataset, tmp, batch)
                else:
                    flow = bench_2d.run_flow(args.volumes, bench_2d.find_weights(), tmp, batch_size=batch)
            verdict = "within" if flow["peak_rss_mib"] <= RSS_LIMIT_MIB else "OVER"
            rows.append((arch, batch, flow["run_s"], flow["peak_rss_mib"], verdict))
            print(
                f"{arch:>4} {batch:>5} {flow['run_s']:>7.0f} {flow['peak_rss_mib']:>12.0f}  {verdict} 3 GiB", flush=True
            )
    if args.results:
        machine = machine_description()
        lines = [
            "## Memory",
            "",
            f"Date: {datetime.date.today().isoformat()}. Machine: {machine}.",
            f"Command: `python benchmarks/bench_memory.py --batch-sizes {' '.join(map(str, args.batch_sizes))}`. "
            f"One {args.volumes}-volume synthetic run (TR 0.72 s), `deeplight-bids BIDS OUT participant` with LRP "
            "and all outputs, in a child process; peak RSS = the child's ru_maxrss. On CPU the network takes at "
            f"most {CPU_NETWORK_BATCH} volumes per call whatever `--batch-size` is. Wall times are from a shared "
            "machine (not comparable).",
            "",
            "| architecture | --batch-size | wall s | peak RSS MiB | 3 GiB target |",
            "|---|---:|---:|---:|---|",
        ]
        lines += [f"| {a} | {b} | {w:.0f} | {r:.0f} | {v} |" for a, b, w, r, v in rows]
        update_section(args.results, "## Memory", "\n".join(lines) + "\n")
    return 0 if all(r[4] == "within" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
