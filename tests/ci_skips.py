"""CI's skip summary: list every skipped test of a pytest JUnit XML report, and fail on any skip
whose reason CI must not have (everything the README documents as working runs in CI).

Usage: python3 tests/ci_skips.py REPORT.xml
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

# Reasons a test may skip in CI: hardware CI does not have. Anything else is a CI failure.
ALLOWED_SKIP_REASONS = ("CUDA", "GPU", "AVX512-BF16", "VNNI")


def skipped_tests(report: str) -> list[tuple[str, str]]:
    skips = []
    for case in ET.parse(report).getroot().iter("testcase"):
        for skip in case.findall("skipped"):
            name = f"{case.get('classname')}::{case.get('name')}"
            skips.append((name, skip.get("message", "")))
    return skips


def main(report: str) -> int:
    skips = skipped_tests(report)
    print(f"skip summary: {len(skips)} skipped")
    unexpected = []
    for name, reason in skips:
        allowed = any(word in reason for word in ALLOWED_SKIP_REASONS)
        print(f"  {'allowed' if allowed else 'NOT ALLOWED'}: {name}: {reason}")
        if not allowed:
            unexpected.append(name)
    if unexpected:
        print(f"CI fails: {len(unexpected)} test(s) skipped that CI must run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
