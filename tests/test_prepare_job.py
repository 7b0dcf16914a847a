"End to end: the prepare job notebook through the real `workbench` command and a real papermill kernel."
import json
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT, workbench_cmd

from workbench.data import find_pii, load_dataset
from workbench.sample import make_dirty


def _manifest(home, dataset):
    return json.loads((home / "datasets" / dataset / "manifest.json").read_text())


@pytest.mark.parametrize("name", ["tickets", "tickets_drift", "tickets_dirty"])
def test_prepare_job_on_sample_files(home, name):
    src = ROOT / "sample_data" / f"{name}.csv"
    r = workbench_cmd("job", "prepare", "-p", f"source={src}", "-p", f"dataset={name}", "-p", f"contract={ROOT / 'sample_data' / 'contract.yaml'}")
    assert r.returncode == 0, r.stderr
    assert "(balanced)" in r.stdout and "executed notebook:" in r.stdout
    executed = Path(r.stdout.split("executed notebook:")[1].strip())
    assert executed.is_file() and executed.is_relative_to(home / "runs")
    outputs = json.loads((executed.parent / "outputs.json").read_text())
    assert outputs["summary"].strip() in r.stdout and outputs["data_fingerprint"] == _manifest(home, name)["fingerprint"]
    m = _manifest(home, name)
    rows = m["rows"]
    assert rows["in"] == rows["curated"] + rows["quarantined"] + rows["duplicates"]
    assert rows["in"] == pl.read_csv(src, infer_schema=False, encoding="utf8-lossy", truncate_ragged_lines=True).height
    assert sum(m["quarantine_reasons"].values()) == rows["quarantined"]
    assert m["fingerprint"].startswith("sha256:") and len(m["fingerprint"]) == 71
    cur = load_dataset(home / "datasets" / name).collect()
    assert cur.height == rows["curated"] and cur["id"].n_unique() == cur.height
    assert all(find_pii(t) == [] for t in cur["text"])
    assert set(cur["split"]) == {"train", "validation", "test"}
    if name == "tickets_dirty":
        _, expected = make_dirty()
        conflicts = m["quarantine_reasons"].get("label_conflict", 0)  # decided across rows: the generator does not count them
        assert {k: v for k, v in m["quarantine_reasons"].items() if k != "label_conflict"} == \
            {k: v for k, v in expected.items() if k not in ("valid", "rows")}
        assert rows["curated"] + rows["duplicates"] + conflicts == expected["valid"]
        q = load_dataset(home / "datasets" / name, "quarantine").collect()
        assert q.height == rows["quarantined"] and q["reason"].null_count() == 0
        # a quarantined row keeps its original values: its body is byte-for-byte what the file held (lossy-decoded)
        raw = pl.read_csv(src, infer_schema=False, encoding="utf8-lossy", truncate_ragged_lines=True).with_row_index("source_row", 1)
        q = q.filter(pl.col("reason") != "label_conflict")  # valid rows whose text has two labels: kept redacted, as curated
        joined = q.join(raw.with_columns(pl.col("source_row").cast(pl.Int64)), on="source_row", suffix="_raw")
        assert joined.height == q.height
        assert (joined["body"].fill_null("\0") == joined["body_raw"].fill_null("\0")).all()
    else:
        # the only rows of the clean files set aside: re-sent tickets whose label was flipped (identical texts, two labels)
        assert set(m["quarantine_reasons"]) == {"label_conflict"} and rows["quarantined"] == m["quarantine_reasons"]["label_conflict"]
        assert rows["duplicates"] > 0 and sum(m["pii_redacted"].values()) > 0


def test_prepare_job_infers_a_contract_for_other_columns(home, tmp_path):
    "No contract and no dataset name: the dataset is named after the file, the contract inferred, saved and reused."
    src = tmp_path / "glosses.csv"
    pl.DataFrame({"key": [f"k{i}" for i in range(90)], "gloss": [f"a kind of thing number {i} that lives in the sea" for i in range(90)],
                  "lexname": ["animal", "plant", "food"] * 30}).write_csv(src)
    r = workbench_cmd("job", "prepare", "-p", f"source={src}")
    assert r.returncode == 0, r.stderr
    assert "contract     inferred from the data" in r.stdout and "lexname" in r.stdout, r.stdout
    saved = home / "datasets" / "glosses" / "contract.yaml"
    assert saved.is_file() and _manifest(home, "glosses")["rows"]["curated"] == 90
    assert _manifest(home, "glosses")["contract"]["label_col"] == "lexname"
    pl.DataFrame({"key": ["k100"], "gloss": ["a plant that grows by the sea shore"], "lexname": ["plant"]}).write_csv(tmp_path / "more.csv")
    r = workbench_cmd("job", "prepare", "-p", f"source={tmp_path / 'more.csv'}", "-p", "dataset=glosses")
    assert r.returncode == 0 and "inferred" not in r.stdout, r.stdout  # a later batch: the dataset's own contract
    assert _manifest(home, "glosses")["rows"]["curated"] == 91


def test_prepare_job_failure_keeps_the_notebook(home):
    r = workbench_cmd("job", "prepare", "-p", "source=sample_data/does_not_exist.csv")
    assert r.returncode == 1
    assert "failed in cell" in r.stderr and "no such file or folder: sample_data/does_not_exist.csv" in r.stderr
    executed = Path(r.stderr.split("executed notebook:")[1].strip())
    nb = json.loads(executed.read_text())
    assert any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))


def test_unknown_job(home):
    r = workbench_cmd("job", "nope")
    assert r.returncode == 2 and "no job 'nope'" in r.stderr and "prepare" in r.stderr


@pytest.mark.parametrize("content,name,message", [
    (None, "missing.csv", "no such file or folder"),
    (b"", "empty.csv", "the file is empty"),
    (b"not parquet at all", "junk.parquet", "cannot read as parquet"),
    (b"id,body\n1,hello\n", "nolabel.csv", "missing required column(s) ['created_at', 'channel'"),
    (b"a\tb\n", "table.xlsx", "unsupported format '.xlsx'"),
])
def test_prepare_bad_files_give_clear_errors(home, tmp_path, content, name, message):
    src = tmp_path / name
    if content is not None: src.write_bytes(content)
    r = workbench_cmd("prepare", src, "--contract", ROOT / "sample_data" / "contract.yaml")
    assert r.returncode == 2, r.stdout
    assert message in r.stderr and name in r.stderr
    assert "Traceback" not in r.stderr


def test_landing_folder_incremental(home, tmp_path):
    land = tmp_path / "landing"; land.mkdir()
    df = pl.read_csv(ROOT / "sample_data" / "tickets.csv", infer_schema=False)
    df[:1000].write_csv(land / "a.csv")
    args = ["prepare", land, "--contract", ROOT / "sample_data" / "contract.yaml", "--skip-bad-files", "--json"]
    first = json.loads(workbench_cmd(*args).stdout)
    df[1000:1500].write_parquet(land / "b.parquet")
    (land / "broken.csv").write_bytes(b"")
    header = ",".join(df.columns).encode()
    (land / "unclosed.csv").write_bytes(header + b'\nX1,2025-01-01T00:00:00Z,email,p,EU,free,en,1,"no closing quote,billing\n')
    second = json.loads(workbench_cmd(*args).stdout)
    third = json.loads(workbench_cmd(*args).stdout)
    assert first["rows"]["in"] == 1000 and second["rows"]["in"] == 1500
    assert third["rows"] == second["rows"] and third["fingerprint"] == second["fingerprint"] and len(third["batches"]) == 2
    assert sorted(Path(f["path"]).name for f in second["rejected_files"]) == ["broken.csv", "unclosed.csv"]
    assert any("cannot read to the end" in f["error"] for f in second["rejected_files"])


def test_sample_data_regenerates_identically(tmp_path):
    from workbench.sample import write_sample_data
    written = write_sample_data(tmp_path)
    for path in written.values():
        assert path.read_bytes() == (ROOT / "sample_data" / path.name).read_bytes(), path.name


def test_job_notebooks_have_a_parameters_cell():
    for nb in (ROOT / "nbs" / "jobs").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        assert any("parameters" in c["metadata"].get("tags", []) for c in cells), nb
