"""Build the csvstats application package: `python -m apps.csvstats.build [--output FILE]`.

The zip holds csvstats.py at its root and its dependency under lib/, the layout the tool expects once Batch has
unpacked it into `$AZ_BATCH_APP_PACKAGE_csvstats_<version>`. Entries carry fixed times and modes, so the same
sources always give the same bytes (and `batchdrop package add` of a rebuilt zip is a no-op).
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent
APPLICATION_ID = "csvstats"
VERSION = "1.0"
DEFAULT_OUTPUT = SOURCE.parents[1] / "build" / f"{APPLICATION_ID}-{VERSION}.zip"
FILES = ("csvstats.py", "lib/colstats.py")
FIXED_TIME = (2026, 1, 1, 0, 0, 0)


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    """Write the package zip to `output` and return it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in FILES:
            entry = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            entry.external_attr = (0o100755 if name == "csvstats.py" else 0o100644) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, (SOURCE / name).read_bytes())
    partial.replace(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.csvstats.build", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="FILE")
    arguments = parser.parse_args(argv)
    print(build(arguments.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
