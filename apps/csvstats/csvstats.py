#!/usr/bin/env python3
"""batchdrop's application-package sample: per-column statistics of one CSV file.

    python3 csvstats.py INPUT OUTDIR

writes OUTDIR/stats.json: the row count and, for every column whose non-empty cells are all numbers, their count,
mean, min and max; the other columns are listed as text columns. The first row is the header.

It runs on a Batch node from its application package (`$AZ_BATCH_APP_PACKAGE_csvstats_1_0/csvstats.py`), and
imports `colstats`, which is not on the node: the package carries it under lib/.

Exit codes: 0 done; 1 INPUT cannot be read or OUTDIR cannot be written; 2 wrong arguments or no header row.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

# colstats is vendored in lib/, found through the path above.
from colstats import RunningStats, parse_number

EXIT_UNREADABLE = 1
EXIT_USAGE = 2


def column_stats(rows: csv.DictReader[str]) -> tuple[int, dict[str, RunningStats], list[str]]:
    """Row count, the numeric columns' statistics and the text columns, in header order."""
    header = list(rows.fieldnames or [])
    stats = {name: RunningStats() for name in header}
    text_columns: set[str] = set()
    count = 0
    for row in rows:
        count += 1
        for name in header:
            cell = row.get(name) or ""
            if not cell.strip() or name in text_columns:
                continue
            value = parse_number(cell)
            if value is None:
                text_columns.add(name)
            else:
                stats[name].add(value)
    numeric = {name: stats[name] for name in header if name not in text_columns and stats[name].count}
    return count, numeric, [name for name in header if name not in numeric]


def run(input_path: str, output_dir: str) -> int:
    try:
        with open(input_path, newline="", encoding="utf-8-sig") as handle:
            rows = csv.DictReader(handle)
            if not rows.fieldnames:
                print(f"csvstats: {input_path} has no header row", file=sys.stderr)
                return EXIT_USAGE
            count, numeric, text_columns = column_stats(rows)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        print(f"csvstats: cannot read {input_path}: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    result = {
        "input": os.path.basename(input_path),
        "rows": count,
        "columns": {name: stats.as_dict() for name, stats in numeric.items()},
        "text_columns": text_columns,
    }
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "stats.json"), "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    except OSError as error:
        print(f"csvstats: cannot write {output_dir}: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(f"csvstats: {count} rows, {len(numeric)} numeric columns -> {output_dir}/stats.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="csvstats.py", description="Per-column statistics of one CSV file.")
    parser.add_argument("input", metavar="INPUT", help="the CSV file (first row: the header)")
    parser.add_argument("output_dir", metavar="OUTDIR", help="where stats.json goes")
    arguments = parser.parse_args(argv)
    return run(arguments.input, arguments.output_dir)


if __name__ == "__main__":
    sys.exit(main())
