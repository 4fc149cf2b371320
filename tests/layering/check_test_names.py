#!/usr/bin/env python3
"""Fails when a Catch2 test name cannot survive ctest registration (catch_discover_tests).

CMake splits a discovered name at ';' (its list separator): each half is registered as a test of
its own, matches no test case and "passes" with nothing run. A name starting with "-" is read as
a command-line option by the test binary. Both have happened here; this check keeps them out.
"""
import pathlib
import re
import sys

NAME = re.compile(r'TEST_CASE\s*\(\s*((?:"(?:[^"\\]|\\.)*"\s*)+)')
LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')


def main() -> int:
    root = pathlib.Path(sys.argv[1])
    bad = []
    count = 0
    for path in sorted(root.glob("tests/**/*.cpp")) + sorted(root.glob("fuzz/**/*.cpp")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in NAME.finditer(text):
            name = "".join(LITERAL.findall(match.group(1)))
            count += 1
            line = text.count("\n", 0, match.start()) + 1
            where = f"{path.relative_to(root)}:{line}"
            if ";" in name:
                bad.append(f"{where}: ';' in test name {name!r} (ctest splits it; nothing runs)")
            if name.startswith("-"):
                bad.append(f"{where}: test name {name!r} starts with '-' (read as an option)")
            if name != name.strip():
                bad.append(f"{where}: test name {name!r} has leading or trailing spaces")
    for line in bad:
        print(line)
    if count == 0:
        print("no TEST_CASE found: wrong source dir?")
        return 1
    print(f"[test_names] {count} test names checked, {len(bad)} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
