#!/usr/bin/env python3
"""Real labelled text from outside the project, built reproducibly, to check that defaults fit more than the sample tickets.

`wordnet`: WordNet 3.0 noun glosses (Debian package `wordnet-base`, `/usr/share/wordnet/data.noun`), labelled by
their lexicographer file (act, animal, artifact, ...). The text is the gloss after `|` up to its first `;`. The 16
largest classes, 300 glosses each, drawn with seed 0: 4,800 rows with columns id, text, label.

    python benchmarks/corpora.py wordnet OUT.csv     # apt-get install -y wordnet-base first
"""
import csv, random, sys
from collections import defaultdict
from pathlib import Path

WORDNET = Path("/usr/share/wordnet/data.noun")
LEXNAMES = {3: "tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition", 10: "communication",
            11: "event", 12: "feeling", 13: "food", 14: "group", 15: "location", 16: "motive", 17: "object", 18: "person",
            19: "phenomenon", 20: "plant", 21: "possession", 22: "process", 23: "quantity", 24: "relation", 25: "shape",
            26: "state", 27: "substance", 28: "time"}


def wordnet_glosses(path: Path = WORDNET) -> list[tuple[str, str, str]]:
    "(synset offset, lexicographer class, first sentence of the gloss) of every noun synset."
    if not path.exists(): sys.exit(f"{path} is missing: `apt-get install -y wordnet-base` (Debian) gives it")
    out = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("  ") or "|" not in line: continue  # the licence header
        fields = line.split()
        gloss = line.split("|", 1)[1].split(";")[0].strip()
        if gloss: out.append((fields[0], LEXNAMES.get(int(fields[1]), fields[1]), gloss))
    return out


def wordnet(classes: int = 16, per_class: int = 300, seed: int = 0) -> list[dict]:
    "The WordNet corpus: the `classes` largest lexicographer classes, `per_class` glosses each, drawn with `seed`."
    by = defaultdict(list)
    for offset, label, gloss in wordnet_glosses(): by[label].append((offset, gloss))
    top = sorted(by, key=lambda k: (-len(by[k]), k))[:classes]
    rnd = random.Random(seed)
    rows = [{"id": f"wn{o}", "text": g, "label": k} for k in sorted(top) for o, g in rnd.sample(by[k], per_class)]
    rnd.shuffle(rows)
    return rows


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "wordnet": sys.exit(__doc__)
    rows = wordnet()
    with open(sys.argv[2], "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "text", "label"])
        w.writeheader(); w.writerows(rows)
    print(f"{len(rows)} rows, {len({r['label'] for r in rows})} classes -> {sys.argv[2]}")
