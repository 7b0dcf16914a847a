"Property-based: for arbitrary messy rows, every row is accounted for and no curated text still holds PII."
import datetime as dt, random, string
import polars as pl
from hypothesis import HealthCheck, given, settings, strategies as st

from workbench.data import Contract, PII_KINDS, find_pii, load_dataset, luhn_ok, prepare


def _card(draw):
    digits = [draw(st.integers(0, 9)) for _ in range(draw(st.sampled_from([12, 14, 15, 18])))]
    check = next(d for d in range(10) if luhn_ok("".join(map(str, digits + [d]))))
    s = "".join(map(str, digits + [check]))
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(s[i:i + 4] for i in range(0, len(s), 4))


def _iban(draw):
    country = draw(st.sampled_from(["DE", "GB", "FR", "NL", "ES"]))
    bban = "".join(draw(st.sampled_from(string.digits + "ABCXYZ")) for _ in range(draw(st.integers(11, 26))))
    num = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    code = f"{country}{98 - num % 97:02d}{bban}"
    return " ".join(code[i:i + 4] for i in range(0, len(code), 4)) if draw(st.booleans()) else code


@st.composite
def pii(draw):
    kind = draw(st.sampled_from(["email", "phone", "card", "iban", "ip", "ip6"]))
    if kind == "email": return draw(st.from_regex(r"[a-z0-9._%+-]{1,10}@[a-z0-9-]{1,8}\.(com|de|co\.uk)", fullmatch=True))
    if kind == "phone": return draw(st.from_regex(r"(\+[1-9][0-9]{0,2} [0-9]{2,3} [0-9]{3,4} [0-9]{3,4}|\([0-9]{3}\) [0-9]{3}-[0-9]{4}|[0-9]{3}-[0-9]{3}-[0-9]{4})", fullmatch=True))
    if kind == "card": return _card(draw)
    if kind == "iban": return _iban(draw)
    if kind == "ip": return ".".join(str(draw(st.integers(0, 255))) for _ in range(4))
    return ":".join(f"{draw(st.integers(0, 0xFFFF)):x}" for _ in range(8))


messy_text = st.lists(st.one_of(st.text(max_size=30), pii(), st.sampled_from(["refund", "ｒｅｆｕｎｄ", "\x07", "\u00a0", "\n\n\n", "  ", "4111 1111 1111 1112", "ORD-58213", "v2.3.1"])),
                      max_size=8).map(lambda parts: "".join(parts))
def mostly(good, bad):
    "Valid values most of the time (so that many rows reach the curated data), bad ones sometimes."
    return st.one_of(*[good] * 4, bad)


row = st.fixed_dictionaries({
    "id": mostly(st.text(string.ascii_letters + string.digits, min_size=1, max_size=8), st.sampled_from(["1", "", " ", None])),
    "created_at": mostly(st.sampled_from(["2025-01-01T10:00:00Z", "2025-06-30", "2026-02-03 04:05:06"]),
                         st.sampled_from(["yesterday", "2099-01-01T00:00:00Z", "", None])),
    "subject": st.one_of(messy_text, st.none()),
    "body": mostly(messy_text, st.none()),
    "label": mostly(st.sampled_from(["billing", " Refunds ", "BILLING", "other"]), st.sampled_from(["billling", "", None])),
    "account_age_days": mostly(st.sampled_from(["12", " 7 ", None]), st.sampled_from(["abc", "1.5", ""])),
})
COLS = ["id", "created_at", "subject", "body", "label", "account_age_days"]
CONTRACT = Contract(labels=["billing", "refunds", "other"], required=["id", "created_at", "body", "label"], max_chars=200)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(row, max_size=25), fmt=st.sampled_from(["parquet", "ndjson", "csv"]))
def test_counts_add_up_and_no_pii_left(tmp_path_factory, rows, fmt):
    d = tmp_path_factory.mktemp("prop")
    df = pl.DataFrame(rows, schema={k: pl.String for k in COLS})
    src = d / f"in.{fmt}"
    if fmt == "parquet": df.write_parquet(src)
    elif fmt == "ndjson": df.write_ndjson(src)
    else: df.write_csv(src)
    if fmt == "ndjson" and not rows: return  # an empty NDJSON file is an empty file: a clear error, tested elsewhere
    n_in = pl.read_csv(src, infer_schema=False).height if fmt == "csv" else len(rows)
    m = prepare(src, d / "ds", CONTRACT)
    r = m["rows"]
    assert r["in"] == n_in == r["curated"] + r["quarantined"] + r["duplicates"], r
    assert sum(m["quarantine_reasons"].values()) == r["quarantined"]
    if r["curated"]:
        cur = load_dataset(d / "ds").collect()
        for col in ("subject", "body", "text"):
            for text in cur[col].drop_nulls():
                assert find_pii(text) == [], (col, text, find_pii(text))
        assert cur["id"].is_duplicated().sum() == 0


# CSV files as a hostile user writes them: any line ends (CR-only too), blank lines, quotes inside unquoted
# fields, quoted fields with separators and line breaks, ragged lines, bytes that are not UTF-8
plain_field = st.text(alphabet="ab ,'\"\r\t\u00e9x1", max_size=6).map(lambda s: s.replace(",", ""))
quoted_field = st.text(alphabet="ab ,\"\r\n\u00e9", max_size=8).map(lambda s: '"' + s.replace('"', '""') + '"')
csv_line = st.lists(st.one_of(plain_field, plain_field, quoted_field, st.just("\udcff")), min_size=0, max_size=5).map(",".join)
csv_file = st.tuples(st.lists(st.tuples(csv_line, st.sampled_from(["\n", "\r\n", "\r"])), max_size=20),
                     st.sampled_from(["\n", "\r\n", "\r"]), st.booleans())


def _bytes(lines, head_end, bom):
    body = "".join(line + end for line, end in lines)
    raw = ("\ufeff" if bom else "") + "id,body,label" + head_end + body
    return raw.encode("utf-8", "surrogateescape")  # "\udcff" is the byte 0xff: not UTF-8


def _csv_records(path):
    "What Python's csv module reads (strict quoting), or None when it refuses the file."
    import csv
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            return sum(1 for _ in csv.reader(f, strict=True)) - 1
    except csv.Error: return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=csv_file)
def test_csv_rows_match_pythons_csv_module(tmp_path_factory, spec):
    "Every record that Python's csv module reads is accounted for (curated, quarantined or duplicate); a file it refuses,\n    or one with two readings (lone CRs between LF lines), is refused by name."
    d = tmp_path_factory.mktemp("csvfuzz")
    src = d / "in.csv"
    src.write_bytes(_bytes(*spec))
    want = _csv_records(src)
    contract = Contract(labels=["a", "b"], required=["id", "body"], time_col=None, text_cols=["body"], types={})
    if want is None:
        try: prepare(src, d / "ds", contract)
        except ValueError as e: assert "in.csv" in str(e) and "cannot read" in str(e), e
        else: raise AssertionError("a file the csv module refuses was accepted")
        return
    raw = src.read_bytes()
    two_readings = b"\n" in raw and b"\r" in raw.replace(b"\r\n", b"")  # lone CRs between LF lines
    try: m = prepare(src, d / "ds", contract)
    except ValueError as e:  # only a file with two readings may be refused, by name
        assert two_readings and "in.csv" in str(e) and "lone CR" in str(e), e
        return
    r = m["rows"]
    assert r["in"] == want, (r, want)
    assert r["curated"] + r["quarantined"] + r["duplicates"] == want, r
    assert m["balanced"]
