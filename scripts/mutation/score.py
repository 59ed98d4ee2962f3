"""Mutation score of one folder from a Stryker JSON report, and the mutants that survived there.

    score.py REPORT NAME THRESHOLD GLOB...   exit 1 when the score is below THRESHOLD (percent)
"""

import fnmatch
import json
import sys

DETECTED = ("Killed", "Timeout")
UNDETECTED = ("Survived", "NoCoverage")


def main(report, name, threshold, globs):
    with open(report, encoding="utf-8") as f:
        files = json.load(f)["files"]
    counts = {s: 0 for s in DETECTED + UNDETECTED}
    survivors = []
    for path, entry in sorted(files.items()):
        if not any(fnmatch.fnmatch(path, g) for g in globs):
            continue
        lines = entry["source"].splitlines()
        for m in entry["mutants"]:
            status = m["status"]
            if status in counts:
                counts[status] += 1
            if status in UNDETECTED:
                line = m["location"]["start"]["line"]
                survivors.append("  %s %s:%d %s: %s   | %s" % (
                    status, path.rsplit("/", 1)[-1], line, m["mutatorName"], m.get("replacement", "").replace("\n", " ")[:80],
                    lines[line - 1].strip()[:100]))
    valid = sum(counts.values())
    score = 100.0 * (counts["Killed"] + counts["Timeout"]) / valid if valid else 100.0
    print("%-12s %5.1f%%  (killed %d, timeout %d, survived %d, no coverage %d; threshold %s%%)" % (
        name, score, counts["Killed"], counts["Timeout"], counts["Survived"], counts["NoCoverage"], threshold))
    for s in survivors:
        print(s)
    return 0 if score >= float(threshold) else 1


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
