"""Fails (exit 1) when a valgrind memcheck log has an error with a frame in this project's code:
an invalid read, write or free, or a decision on uninitialised memory. Errors wholly inside
CPython, numpy or pyarrow are not ours and are only counted.

Usage: check_log.py LOG [LOG...]
"""

import re
import sys

KINDS = re.compile(r"^==\d+== (Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param|Mismatched free|Source and destination overlap)")
OURS = re.compile(r"_native\.abi3\.so|arrow_quant_v2|arrow-quant")


def errors(log: str):
    block = None
    for line in log.splitlines():
        if KINDS.match(line):
            if block:
                yield block
            block = [line]
        elif block is not None:
            if re.match(r"^==\d+== *$", line):
                yield block
                block = None
            else:
                block.append(line)
    if block:
        yield block


def main() -> int:
    ours, others = [], 0
    for path in sys.argv[1:]:
        text = open(path, errors="replace").read()
        if "ERROR SUMMARY" not in text:
            print(f"{path}: valgrind did not finish", file=sys.stderr)
            return 1
        for block in errors(text):
            if any(OURS.search(l) for l in block):
                ours.append((path, block))
            else:
                others += 1
    for path, block in ours:
        print(f"--- {path}", *block, sep="\n")
    print(f"valgrind: {len(ours)} errors in arrow_quant_v2's frames, {others} elsewhere (not ours)")
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main())
