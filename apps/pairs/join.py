"""The sample grouped pipeline's application: joins a group's members into one file and counts their lines.

Usage: join.py <output dir> <group> <input> [<input> ...]  (batchdrop passes {output_dir} {group} {inputs})
"""

import json
import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: join.py <output dir> <group> <input> [<input> ...]\n")
        return 2
    out, group, inputs = argv[0], argv[1], argv[2:]
    os.makedirs(out, exist_ok=True)
    lines = {}
    with open(os.path.join(out, "joined.txt"), "wb") as joined:
        for path in inputs:
            with open(path, "rb") as member:
                data = member.read()
            joined.write(data if data.endswith(b"\n") or not data else data + b"\n")
            lines[os.path.basename(path)] = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    with open(os.path.join(out, "summary.json"), "w") as summary:
        json.dump({"group": group, "members": len(inputs), "lines": lines}, summary, indent=2, sort_keys=True)
    print(f"group {group}: joined {len(inputs)} members, {sum(lines.values())} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
